"""What a classify run records besides its results, and what a rerun into the same --output does with it.

Every line of a results file carries ``"resolved"`` (the video's key: its real absolute path) and
``"settings"``: the options that decide what the line holds, so a file is resumed only by a run that would
write the same lines.

- settings: the architecture, the weights (the checkpoint's size and the SHA-256 of its first MiB, not its
  path: a moved checkpoint is the same one; None for the seeded random weights), the views (--views and any
  clip / crop counts), --size, --crop, --train-crop, --dtype, --top and the labels file (fingerprinted like
  the checkpoint); with --features, its path (relative to --output's folder) and whether --features-only
  (which leaves --top and the labels out); a timeline's --window and --stride (cli/timeline.py; absent
  from other runs' lines). Not settings: --device, --backend, --batch-size and --workers, which change
  the time and the last float bits of a probability, not what is computed; a run moved from a CPU to a GPU
  resumes as long as its --dtype is the same.
- A rerun whose settings differ from any record in --output stops with one line naming the options that
  differ (exit 2); --overwrite starts over (the file and its part files removed), --retry-failed runs again
  the videos that have an error line, replacing those lines.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

from .corpus import ResultsFile, video_key
from .errors import UsageError

# Options that change what a record holds; the ones a parser does not have are left out.
RESULT_OPTIONS = ("views", "clips", "crops", "ensemble", "size", "crop", "train_crop", "dtype", "top", "window",
                  "stride")
# 1 MiB: the pickle and the first tensors of a checkpoint, hashed in 1.6 ms on a 2-core CPU (a whole 280 MB
# R101 file would take ~0.5 s per run).
_FINGERPRINT_BYTES = 1 << 20


def fingerprint(path: Optional[str]) -> Optional[str]:
    """``"<sha256 of the first MiB, 16 hex digits>/<size in bytes>"`` of a file, None for no file."""
    if path is None:
        return None
    with open(path, "rb") as f:
        head = f.read(_FINGERPRINT_BYTES)
    return f"{hashlib.sha256(head).hexdigest()[:16]}/{os.path.getsize(path)}"


def run_settings(args: argparse.Namespace, arch: str) -> Dict[str, object]:
    settings: Dict[str, object] = {"arch": arch, "checkpoint": fingerprint(args.checkpoint)}
    for name in RESULT_OPTIONS:
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    settings["labels"] = fingerprint(args.labels)
    from .features import setting as features_setting

    if getattr(args, "features", None) is not None:
        settings["features"] = features_setting(args)
    if getattr(args, "features_only", False):  # no class scores: the options that shape them do not matter
        settings["features_only"] = True
        for name in ("top", "labels"):
            settings.pop(name, None)
    return settings


def output_path(args: argparse.Namespace) -> Optional[str]:
    """The results file of --output, None for stdout (no --output, or ``--output -``); checked before the model
    is built: an existing directory, a missing parent folder, and --overwrite / --retry-failed without a file
    are UsageErrors."""
    path = None if args.output in (None, "-") else args.output
    for flag, given in (("--overwrite", getattr(args, "overwrite", False)),
                        ("--retry-failed", getattr(args, "retry_failed", False))):
        if given and path is None:
            raise UsageError(f"{flag}: needs --output FILE (lines written to stdout are not resumed)")
    if getattr(args, "overwrite", False) and getattr(args, "retry_failed", False):
        raise UsageError("--retry-failed: has no effect with --overwrite (every video runs again); pass one of them")
    if path is None:
        return None
    if os.path.isdir(path):
        raise UsageError(f"--output {path}: is a directory, expected a results file such as {path.rstrip('/')}"
                         "/results.jsonl")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"--output {path}: the directory {directory} does not exist")
    return path


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(name: str, value: object) -> str:
    if value is None:
        return "random weights" if name == "checkpoint" else "none"
    if name in ("checkpoint", "labels") and isinstance(value, str) and "/" in value:
        digest, size = value.split("/", 1)
        return f"(a file of {size} bytes, sha256 {digest}...)"
    return str(value)


def _differences(recorded: Optional[dict], settings: Dict[str, object]) -> str:
    if not isinstance(recorded, dict):
        return "written without settings, by an earlier version"
    names = list(settings) + [k for k in recorded if k not in settings]
    return "; ".join(f"{_option(k)} {_show(k, recorded.get(k))} there, {_show(k, settings.get(k))} now"
                     for k in names if recorded.get(k) != settings.get(k))


@dataclass
class ResumePlan:
    """What this run does with the records already in --output (every rank computes the same plan)."""

    settings: Dict[str, object]
    pending: List[str]                      # the videos to classify, in order
    done: int = 0                           # videos of this run with a record kept
    retry: Set[str] = field(default_factory=set)  # keys of the error lines to replace
    overwrite: bool = False
    kept: List[dict] = field(default_factory=list)  # the records of those `done` videos

    def message(self, total: int, output: str) -> Optional[str]:
        if self.overwrite:
            return f"--overwrite: {output} started over"
        if not self.done and not self.retry:
            return None
        retried = f", {len(self.retry)} failed ones run again" if self.retry else ""
        return f"resuming: {self.done} of {total} videos already in {output}{retried}"

    def prepare(self, results: Optional[ResultsFile]) -> None:
        """Rank 0, after every rank made its plan and before any rank writes."""
        if results is None:
            return
        if self.overwrite:
            results.start_over()
            return
        results.merge_parts()  # a killed run's part files: the part files start empty (and error lines go too)
        if self.retry:
            results.drop(self.retry)


def plan(args: argparse.Namespace, arch: str, videos: List[str], results: Optional[ResultsFile]) -> ResumePlan:
    """The plan of a run, or a UsageError when --output holds records made with other settings."""
    settings = run_settings(args, arch)
    overwrite = bool(getattr(args, "overwrite", False))
    if results is None or overwrite:
        return ResumePlan(settings, list(videos), overwrite=overwrite)
    records = results.done()
    other = [r for r in records.values() if r.get("settings") != settings]
    if other:
        raise UsageError(f"--output {results.path}: {len(other)} of its {len(records)} records were made with other "
                         f"settings ({_differences(other[0].get('settings'), settings)}); give the same options, "
                         "another --output, or --overwrite to start over")
    retry_failed = bool(getattr(args, "retry_failed", False))
    pending, kept, retry = [], [], set()
    for video in videos:
        record = records.get(video_key(video))
        if record is None:
            pending.append(video)
        elif retry_failed and "error" in record:
            pending.append(video)
            retry.add(video_key(video))
        else:
            kept.append(record)
    return ResumePlan(settings, pending, len(kept), retry, kept=kept)
