"""Which backend runs an op, and why the others do not.

Backends: ``triton`` (Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1),
``cuda`` (the CUDA C++ extension), ``cpu`` (the C++/OpenMP extension or oneDNN through torch),
``reference`` (eager PyTorch, always available).

``auto`` takes the first backend of the op's priority list for the input's device that can run it;
the environment variable SLOWFAST_KERNELS_BACKEND replaces ``auto``. A backend asked for by name that
cannot run raises ``BackendUnavailable`` listing the reason: nothing falls back silently.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Callable, Dict, Mapping, Optional, Sequence

import torch

from . import _ext

BACKENDS = ("auto", "triton", "cuda", "cpu", "reference")
ENV_VAR = "SLOWFAST_KERNELS_BACKEND"

# Default priority per device type: fastest first. Ops may pass their own order.
DEFAULT_PRIORITY = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}

# A per-input check: returns None when the backend handles these inputs, else the reason it does not.
SupportCheck = Callable[[], Optional[str]]


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run the given inputs; the message says why."""


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken install must not break the library
        return f"triton failed to import: {exc}"
    return None


def backend_unavailable_reason(backend: str, device: torch.device, op: Optional[str] = None) -> Optional[str]:
    """Why `backend` cannot run on `device` (for `op`, when given), or None if it can."""
    device = torch.device(device)
    if backend == "reference":
        return None
    if backend == "triton":
        err = _triton_import_error()
        if err:
            return err
        if device.type == "cuda":
            return None if torch.cuda.is_available() else "no CUDA device is available"
        if device.type == "cpu":
            return None if triton_interpreter_enabled() else (
                "Triton runs on CPU tensors only in interpreter mode (set TRITON_INTERPRET=1 before importing triton)")
        return f"Triton does not run on {device.type} tensors"
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            return f"the {backend} backend runs on {backend} tensors, the input is on {device.type}"
        if _ext.LOAD_ERROR is not None:
            return _ext.LOAD_ERROR
        if op is not None and not _ext.native_kernel_registered(op, backend.upper()):
            how = ("the extension was built without CUDA (needs a CUDA build of torch and nvcc, or FORCE_CUDA=1)"
                   if backend == "cuda" else "the extension has no CPU kernel for it")
            return f"slowfast_kernels::{op} has no {backend} kernel: {how}"
        return None
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def requested_backend(backend: str) -> str:
    """`backend` with `auto` replaced by SLOWFAST_KERNELS_BACKEND when that is set."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "auto").strip() or "auto"
        if env not in BACKENDS:
            raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {env!r}")
        return env
    return backend


def choose_backend(
    op: str,
    backend: str,
    device: torch.device,
    checks: Optional[Mapping[str, SupportCheck]] = None,
    priority: Optional[Sequence[str]] = None,
    native_op: Optional[str] = None,
) -> str:
    """Resolve `backend` for one call of `op` on `device`.

    checks: per-backend input checks (dtype, layout, mode, ...) beyond plain availability; a backend
    missing from checks supports every input. native_op: the torch.library op name whose kernels the
    cpu/cuda backends run (defaults to `op`).
    """
    device = torch.device(device)
    checks = checks or {}
    native_op = native_op or op

    def reason(name: str) -> Optional[str]:
        why = backend_unavailable_reason(name, device, native_op if name in ("cpu", "cuda") else None)
        if why is None and name in checks:
            why = checks[name]()
        return why

    wanted = requested_backend(backend)
    if wanted != "auto":
        why = reason(wanted)
        if why is not None:
            raise BackendUnavailable(f"{op}: backend '{wanted}' cannot run this call: {why}")
        return wanted
    order = priority or DEFAULT_PRIORITY.get(device.type, ("reference",))
    reasons: Dict[str, str] = {}
    for name in order:
        why = reason(name)
        if why is None:
            return name
        reasons[name] = why
    listing = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    raise BackendUnavailable(f"{op}: no backend can run this call ({listing})")


def available_backends(device: str = "cpu") -> Dict[str, Optional[str]]:
    """{backend: None if it can run on `device`, else the reason it cannot}."""
    return {name: backend_unavailable_reason(name, torch.device(device)) for name in BACKENDS[1:]}


def describe() -> str:
    """A readable table of every backend on every device this machine has."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lines = []
    for dev in devices:
        for name, why in available_backends(dev).items():
            lines.append(f"{dev:5s} {name:10s} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)
