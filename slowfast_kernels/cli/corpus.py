"""The videos of a classify run (files, directories, @lists) and its results file (JSON lines, resumable).

Results file: one JSON object per line, ``{"video": path, ...}``. Each line is written by one os.write on
an O_APPEND descriptor as its video finishes, so a killed run leaves whole lines and at most one cut-off
last line; reading ignores a line that does not parse (or lacks its newline), and the writer cuts such a
tail off before appending. Under torchrun each rank appends to its own part file (``OUTPUT.part-RANK``);
rank 0 merges the part files into OUTPUT at the end, skipping videos already there, then removes them.
A run reads OUTPUT and every part file, so videos in either are never classified twice, whatever the
number of processes of the run that wrote them.

A video is known by its key, its absolute path with symlinks resolved (``"resolved"`` in its record), so
``../corpus/a.mp4`` and ``/data/corpus/a.mp4`` are one video; ``"video"`` keeps the path as it was given.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from .._decode import is_stream
from .errors import UsageError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
                    ".ts", ".mts", ".ogv")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def video_key(path: str) -> str:
    """The identity of a video, whatever its spelling: its absolute path with symlinks resolved (a stream,
    "-" or a URL, is itself)."""
    return path if is_stream(path) else os.path.realpath(path)


def record_key(record: dict) -> str:
    return record.get("resolved") or video_key(record["video"])


def expand_inputs(items: Iterable[str], warn: Callable[[str], None] = _stderr) -> List[str]:
    """Video paths, in order, each once (by video_key): a file as given, a directory's video files
    (recursively, sorted; symlinks followed, a directory reached twice searched once), the lines of an
    @list file (blank lines and # comments skipped; a relative entry is relative to the list's folder;
    entries are checked when decoded). "-" (standard input) and URLs (rtsp://, udp://, ...) pass through
    untouched: they are live streams (cli/timeline.py)."""
    videos: List[str] = []
    for item in items:
        if is_stream(item):
            videos.append(item)
        elif item.startswith("@"):
            videos.extend(_read_list(item[1:]))
        elif os.path.isdir(item):
            found = _walk(item, warn)
            if not found:
                raise UsageError(f"{item}: a directory without video files ({', '.join(VIDEO_EXTENSIONS)})")
            videos.extend(found)
        elif os.path.exists(item):
            videos.append(item)
        else:
            raise UsageError(f"{item}: no such file or directory")
    unique: Dict[str, str] = {}
    for video in videos:
        unique.setdefault(video_key(video), video)
    return list(unique.values())


def _read_list(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except FileNotFoundError:
        raise UsageError(f"@{path}: no such list file") from None
    except OSError as exc:
        raise UsageError(f"@{path}: {exc.strerror or exc}") from None
    folder = os.path.dirname(path)  # os.path.join keeps an absolute entry as it is
    return [os.path.join(folder, line) for line in lines if line and not line.startswith("#")]


def _identity(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:  # a dangling symlink, a file removed meanwhile: the decoder names it later
        return None
    return st.st_dev, st.st_ino


def _walk(root: str, warn: Callable[[str], None] = _stderr) -> List[str]:
    """Video files under root, each real file once: a directory (or file) already reached by another path,
    a symlink loop such as ``self -> .`` among them, is skipped, with one warning for the walk."""
    found: List[str] = []
    seen_dirs: Set[Tuple[int, int]] = set()
    seen_files: Set[Tuple[int, int]] = set()
    skipped: List[str] = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        seen_dirs.add(_identity(directory))
        kept = []
        # Real folders claim their identity before symlinks to them, so a folder is listed by its own path.
        for name in sorted(subdirs, key=lambda n: (os.path.islink(os.path.join(directory, n)), n)):
            identity = _identity(os.path.join(directory, name))
            if identity is None or identity in seen_dirs:
                skipped.append(os.path.join(directory, name))
                continue
            seen_dirs.add(identity)
            kept.append(name)
        subdirs[:] = sorted(kept)
        for name in sorted(files):
            if not name.lower().endswith(VIDEO_EXTENSIONS):
                continue
            path = os.path.join(directory, name)
            identity = _identity(path)
            if identity is not None:
                if identity in seen_files:
                    continue
                seen_files.add(identity)
            found.append(path)
    if skipped:
        shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        warn(f"warning: {root}: skipped {len(skipped)} symlinked folder(s) already searched (a symlink loop or "
             f"a second path to one folder): {shown}")
    return found


def read_results(path: str) -> Dict[str, dict]:
    """video key -> its first record, from every complete, parseable line of a results file (missing file:
    empty)."""
    records: Dict[str, dict] = {}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return records
    for line in data.split(b"\n")[:-1]:  # the piece after the last newline is a cut-off line
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("video"), str):
            records.setdefault(record_key(record), record)
    return records


def _cut_partial_tail(path: str) -> None:
    """Remove a last line without its newline (a write killed midway), so appends start on a new line."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            end = size
            while end > 0:
                start = max(0, end - 65536)
                f.seek(start)
                chunk = f.read(end - start)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    f.truncate(start + cut + 1)
                    return
                end = start
            f.truncate(0)
    except FileNotFoundError:
        pass


def encode(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


class ResultsFile:
    """The output of one rank: OUTPUT itself in a single-process run, OUTPUT.part-RANK under torchrun."""

    def __init__(self, path: str, rank: int = 0, world_size: int = 1) -> None:
        self.path, self.rank, self.world_size = path, rank, world_size
        self.own = path if world_size == 1 else f"{path}.part-{rank}"
        self._fd: Optional[int] = None

    def part_files(self) -> List[str]:
        return sorted(glob.glob(glob.escape(self.path) + ".part-*"))

    def done(self) -> Dict[str, dict]:
        """Every video with a line in OUTPUT or a part file."""
        records = read_results(self.path)
        for part in self.part_files():
            for key, record in read_results(part).items():
                records.setdefault(key, record)
        return records

    def open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.own))
        if not os.path.isdir(directory):
            raise UsageError(f"--output {self.path}: the directory {directory} does not exist")
        _cut_partial_tail(self.own)
        self._fd = os.open(self.own, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        assert self._fd is not None, "ResultsFile.open() first"
        data = encode(record)
        written = os.write(self._fd, data)
        if written != len(data):  # a short write (disk full): the rest, so the line is whole or reported
            os.write(self._fd, data[written:])

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def start_over(self) -> None:
        """Rank 0, before any rank writes (--overwrite): OUTPUT and its part files removed."""
        for path in [self.path, *self.part_files()]:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    def drop(self, keys: Set[str]) -> None:
        """Rank 0, before any rank writes, the part files merged (--retry-failed): OUTPUT rewritten without
        the records of `keys` (a new file renamed over the old one: a kill leaves the old or the new)."""
        try:
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")[:-1]
        except FileNotFoundError:
            return
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
                if isinstance(record, dict) and record_key(record) in keys:
                    continue
            except (ValueError, KeyError, TypeError):
                pass
            kept.append(line + b"\n")
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def merge_parts(self) -> None:
        """Rank 0, after every rank closed its part: append the part files' videos missing from OUTPUT."""
        parts = self.part_files()
        if not parts:
            return
        _cut_partial_tail(self.path)
        seen = set(read_results(self.path))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for part in parts:
                for key, record in read_results(part).items():
                    if key not in seen:
                        os.write(fd, encode(record))
                        seen.add(key)
            os.fsync(fd)
        finally:
            os.close(fd)
        for part in parts:
            os.remove(part)
