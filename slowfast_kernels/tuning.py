"""Per-shape implementation choice by measurement, cached in memory and on disk.

Some layers run fastest through the vendor's fused conv (cuDNN), others through our Triton kernel; which
one wins depends on the layer shape, dtype and device, so each (op, device, dtype, shape) key is timed
once and the winner is remembered. The disk cache (JSON) lives in $SLOWFAST_KERNELS_CACHE or
~/.cache/slowfast_kernels; ``clear_cache()`` forgets every choice (in memory and on disk).
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import torch

CACHE_ENV = "SLOWFAST_KERNELS_CACHE"
CACHE_FILE = "tuning.json"

_lock = threading.Lock()
_memory: Dict[str, str] = {}
_loaded = False


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "slowfast_kernels")


def cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def device_tag(device: torch.device) -> str:
    """Names the hardware, not the index: choices carry over between identical GPUs."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda:{props.name}:sm{props.major}{props.minor}:torch{torch.__version__}"
    return f"{device.type}:{torch.get_num_threads()}threads:torch{torch.__version__}"


def make_key(op: str, device: torch.device, dtype: torch.dtype, shape: object) -> str:
    return f"{op}|{device_tag(device)}|{str(dtype).replace('torch.', '')}|{shape}"


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    try:
        data = json.loads(cache_path().read_text())
        if isinstance(data, dict):
            _memory.update({str(k): str(v) for k, v in data.items()})
    except (OSError, ValueError):
        pass  # no cache yet, or unreadable: choices are measured again


def _save() -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_memory, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: concurrent processes never read half a file
    except OSError:
        pass  # a read-only home must not break inference; the choice stays in memory


def lookup(key: str) -> Optional[str]:
    with _lock:
        _load()
        return _memory.get(key)


def record(key: str, choice: str) -> None:
    with _lock:
        _load()
        _memory[key] = choice
        _save()


def clear_cache() -> None:
    """Forget every measured choice, in this process and on disk."""
    global _loaded
    with _lock:
        _memory.clear()
        _loaded = True
        try:
            cache_path().unlink()
        except OSError:
            pass


def time_call(fn: Callable[[], object], device: torch.device, warmup: int = 2, reps: int = 5) -> float:
    """Median seconds of fn() (synchronizing CUDA)."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def choose(key: str, candidates: Mapping[str, Callable[[], object]], device: torch.device) -> str:
    """The cached winner for key, or time every candidate now, cache and return the fastest.

    A candidate that raises is skipped (and never chosen); if all raise, the first error propagates.
    """
    hit = lookup(key)
    if hit is not None and hit in candidates:
        return hit
    if len(candidates) == 1:
        return next(iter(candidates))
    times: Dict[str, float] = {}
    first_error: Optional[BaseException] = None
    for name, fn in candidates.items():
        try:
            times[name] = time_call(fn, device)
        except Exception as exc:  # e.g. a Triton config that does not fit shared memory
            first_error = first_error or exc
    if not times:
        raise first_error  # type: ignore[misc]
    best = min(times, key=times.get)
    record(key, best)
    return best
