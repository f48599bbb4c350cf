"""classify's test protocol: the preset, its views and ensemble, multi-label output, class names, scoring.

Options (added to the classify parser by add_arguments): --preset NAME (default: the one the checkpoint
implies), --clips N, --crops {1,3}, --ensemble {mean,max,sum}, --sampling RULE, --threshold P,
--ground-truth FILE, --non-strict. --views 1 | 30 stay as names for (1 clip, 1 crop) and (10, 3).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from .errors import UsageError

VIEWS = {1: (1, 1), 30: (10, 3)}
SAMPLING_CHOICES = ("preset", "pyslowfast", "pyslowfast-pyav", "mmaction2", "charades", "ssv2")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from slowfast_kernels.presets import ENSEMBLES, PRESETS

    p.add_argument("--preset", default=None, choices=sorted(PRESETS), metavar="NAME",
                   help="preprocessing, head and view protocol of a checkpoint family: " + ", ".join(sorted(PRESETS))
                        + " (default: the one the checkpoint implies; pyslowfast without one)")
    p.add_argument("--clips", type=_positive, default=None, metavar="N",
                   help="temporal clips per video (default 1; --views 30: 10)")
    p.add_argument("--crops", type=int, default=None, choices=[1, 3],
                   help="spatial crops per clip: 1 (centre) or 3 (start, centre, end of the long side)")
    p.add_argument("--ensemble", default=None, choices=ENSEMBLES,
                   help="how the views' scores are combined (default: the preset's: max for charades, else mean)")
    p.add_argument("--sampling", default="preset", choices=SAMPLING_CHOICES,
                   help="temporal sampling rule (default: the preset's; pyslowfast-pyav: PySlowFast's pyav "
                        "decoder window by timestamps)")
    p.add_argument("--threshold", type=_probability, default=0.5, metavar="P",
                   help="multi-label presets: the labels scoring at least P are listed (default: 0.5)")
    p.add_argument("--ground-truth", default=None, metavar="FILE",
                   help="score the run: a CSV of video,label[,label...] (Kinetics-400's and Charades' csv "
                        "accepted); prints top-1/top-5 or mAP and writes OUTPUT.summary.json")
    p.add_argument("--non-strict", action="store_true",
                   help="load a checkpoint whose keys do not all match the model, reporting what was skipped")


def _positive(text: str) -> int:
    from .options import positive_int

    return positive_int(text)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


@dataclass
class Protocol:
    """The resolved test protocol of one classify run."""

    preset: "object"            # slowfast_kernels.presets.Preset, with the run's clips / crops / ensemble
    sampling: str               # a slowfast_kernels.sampling rule
    threshold: float
    ground_truth: Optional[Dict[str, List[int]]] = None

    @property
    def clips(self) -> int:
        return self.preset.clips

    @property
    def crop_indices(self) -> List[int]:
        return self.preset.crop_indices()

    @property
    def views(self) -> int:
        return self.preset.clips * self.preset.crops

    def sampler(self, path: str, num_frames: int, sampling_rate: int):
        """The io.ClipSampler of this protocol's temporal clips of one video (its sampling rule, clip by clip),
        for io.read_clips: every clip decoded in one pass."""
        from slowfast_kernels.sampling import frame_index_rule

        rules = [frame_index_rule(self.sampling, num_frames, sampling_rate, t, self.clips,
                                  target_fps=self.preset.target_fps or 30, path=path) for t in range(self.clips)]
        return lambda num_video_frames, fps: [rule(num_video_frames, fps) for rule in rules]

    def view_fields(self) -> dict:
        """The preset and views of a video's line (--features-only lines: no scores, so no more)."""
        return {"preset": self.preset.name, "clips": self.preset.clips, "crops": self.preset.crops}

    def record_fields(self, scores: torch.Tensor, labels: List[str]) -> dict:
        """What a video's JSON line adds: the preset and views; multi-label: the labels at or above the
        threshold; with --ground-truth: every class's score (so a resumed run can still be scored)."""
        out = {**self.view_fields(), "ensemble": self.preset.ensemble}
        if self.preset.multi_label:
            chosen = torch.nonzero(scores >= self.threshold).flatten().tolist()
            chosen.sort(key=lambda i: -float(scores[i]))
            out["labels"] = [[labels[i], round(float(scores[i]), 6)] for i in chosen]
            out["threshold"] = self.threshold
        if self.ground_truth is not None:
            out["scores"] = [round(v, 6) for v in scores.tolist()]
        return out


def resolve(args: argparse.Namespace, source) -> Protocol:
    """The preset (--preset, else the checkpoint's), its views (--views | --clips / --crops) and ensemble.
    Sets args.views to the number of views. Raises UsageError for conflicting options."""
    from slowfast_kernels.presets import get_preset, preset_for

    name = args.preset
    if name is None:
        name = preset_for(source.format, source.num_classes, args.checkpoint or "") if source.format else "pyslowfast"
    preset = get_preset(name)
    if preset.num_classes is not None and source.num_classes != preset.num_classes:
        raise UsageError(f"--preset {name}: made for {preset.num_classes}-class checkpoints, the model has "
                         f"{source.num_classes} classes")
    views = getattr(args, "views", None)
    if views is not None and (args.clips is not None or args.crops is not None):
        raise UsageError(f"--views {views}: names (clips, crops) = {VIEWS[views]}; give either --views or "
                         "--clips / --crops")
    clips, crops = VIEWS[views] if views is not None else (args.clips or 1, args.crops or 1)
    if preset.crop_rule == "mmaction2" and crops == 3 and args.crop != args.size:
        raise UsageError(f"--crop {args.crop}: MMAction2's ThreeCrop takes the whole short side: --crop must equal "
                         f"--size ({args.size})")
    preset = preset.with_views(clips, crops, args.ensemble)
    args.views = clips * crops
    sampling = preset.temporal if args.sampling == "preset" else args.sampling
    return Protocol(preset, sampling, args.threshold)


def load_ground_truth(protocol: Protocol, path: Optional[str], labels: List[str]) -> None:
    if path is None:
        return
    from slowfast_kernels.scoring import GroundTruthError, read_ground_truth

    try:
        protocol.ground_truth = read_ground_truth(path, labels)
    except GroundTruthError as exc:
        raise UsageError(str(exc) if str(exc).startswith("--ground-truth") else f"--ground-truth {exc}") from None


def build_model(source, protocol: Protocol, train_crop: int, non_strict: bool, say):
    """The reference model with the checkpoint loaded: the preset's head activation; with --non-strict, a
    checkpoint that does not match loads what fits and one line says what was skipped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = source.build(head_act=protocol.preset.head_act, train_crop=train_crop, strict=not non_strict)
    for w in caught:
        text = str(w.message)
        if "does not match the model" in text:
            say(f"warning: --non-strict: {text.splitlines()[0]}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model


# ----------------------------------------------------------------------------------------------- class names

_CHARADES_CLASS = re.compile(r"^c(\d{3})\s+(.+)$")
_PBTXT_ITEM = re.compile(r"item\s*\{(?P<body>[^}]*)\}", re.S)


def read_labels(path: Optional[str], num_classes: int) -> List[str]:
    """Class names, index = class id: Kinetics-400's for 400 classes without a file, else class_<i>.

    Files: one name a line; Charades' Charades_v1_classes.txt ("c000 Holding some clothes"); SSv2's
    something-something-v2-labels.json ({"name": "id"}); AVA's label map .pbtxt (item { name: "..." id: N },
    ids from 1: class id = N - 1). The count must equal the model's classes.
    """
    from slowfast_kernels import io

    if path is None:
        if num_classes == 400:
            return io.kinetics_400_labels()
        return [f"class_{i}" for i in range(num_classes)]
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"--labels {path}: {exc.strerror or exc}") from None
    names = _parse_labels(path, text)
    if len(names) != num_classes:
        raise UsageError(f"--labels {path}: {len(names)} names, the model has {num_classes} classes")
    return names


def _parse_labels(path: str, text: str) -> List[str]:
    if path.endswith(".json"):
        try:
            table = json.loads(text)
            by_id = {int(v): str(k) for k, v in table.items()}
        except (ValueError, AttributeError, TypeError):
            raise UsageError(f"--labels {path}: expected a JSON object of name: id (SSv2's labels file)") from None
        return _dense(path, by_id, 0)
    if path.endswith(".pbtxt"):
        by_id = {}
        for m in _PBTXT_ITEM.finditer(text):
            name = re.search(r'name:\s*"([^"]*)"', m.group("body"))
            ident = re.search(r"(?<!label_)id:\s*(\d+)", m.group("body"))
            if name and ident:
                by_id[int(ident.group(1))] = name.group(1)
        if not by_id:
            raise UsageError(f"--labels {path}: no item {{ name: ... id: ... }} entries (AVA's label map)")
        return _dense(path, by_id, 1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    charades = [_CHARADES_CLASS.match(line) for line in lines]
    if lines and all(charades):
        return _dense(path, {int(m.group(1)): m.group(2) for m in charades}, 0)
    return lines


def _dense(path: str, by_id: Dict[int, str], first: int) -> List[str]:
    ids = sorted(by_id)
    if ids != list(range(first, first + len(ids))):
        gaps = sorted(set(range(first, first + len(ids))) - set(ids))
        raise UsageError(f"--labels {path}: class ids must run from {first} without gaps, id {gaps[0]} is missing")
    return [by_id[i] for i in ids]


# ----------------------------------------------------------------------------------------------- scoring

def summarize(protocol: Protocol, records: Dict[str, dict], labels: List[str], output: Optional[str],
              say) -> None:
    """--ground-truth: score the run's records, print the summary (stderr) and write OUTPUT.summary.json."""
    if protocol.ground_truth is None:
        return
    from slowfast_kernels.scoring import predictions_from_records, score

    predictions = predictions_from_records(records.values())
    summary = score(predictions, protocol.ground_truth, labels, protocol.preset.multi_label)
    for line in summary.lines():
        say(line)
    result = summary.as_dict()
    result.update(preset=protocol.preset.name, clips=protocol.preset.clips, crops=protocol.preset.crops,
                  ensemble=protocol.preset.ensemble)
    if output is not None:
        path = output + ".summary.json"
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        say(f"summary written to {path}")
    else:
        sys.stderr.write(json.dumps(result) + "\n")
