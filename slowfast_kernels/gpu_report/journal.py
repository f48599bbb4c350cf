"""The report's journal: one JSON object a line, appended by whichever process has something to say (the
report, a stage's child process, pytest and its xdist workers), each line written by one os.write on an
O_APPEND descriptor so lines from several processes never interleave. A process killed mid-stage loses
nothing it wrote: the report is rebuilt from these lines.

Events: {"stage", "event": "start" | "end" | "error" | "skip" | "record" | "note" | ..., ...}.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterator, List, Optional


def _clean(obj):
    """JSON without NaN/inf (written as null: strict parsers reject them)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def append(path: os.PathLike, obj: dict) -> None:
    line = (json.dumps(_clean(obj), default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read(path: os.PathLike, stage: Optional[str] = None) -> List[dict]:
    """Every complete line (of `stage`, when given); a torn last line (a process killed mid-write) is skipped."""
    return list(_lines(Path(path), stage))


def _lines(path: Path, stage: Optional[str]) -> Iterator[dict]:
    try:
        text = path.read_text()
    except OSError:
        return
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and (stage is None or obj.get("stage") == stage):
            yield obj
