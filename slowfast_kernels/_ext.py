"""Loads the compiled extension (slowfast_kernels._C) if it was built.

The library stays usable without it: the reference and Triton backends are pure Python. The reason
the extension is missing is kept for slowfast_kernels.backends to report.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from typing import Optional

import torch

LOAD_ERROR: Optional[str] = None


def _load_error() -> Optional[str]:
    """Import _C (registering the native ops with torch.library); None on success, else the real cause.

    `from . import _C` inside the package's own import reports a missing file as "cannot import name '_C'
    from partially initialized module ... (most likely due to a circular import)": hence the lookup first
    and importlib for the load itself."""
    name = f"{__package__}._C"
    build = "build it with `pip install --no-build-isolation -e .`"
    spec = importlib.util.find_spec(name)
    if spec is None:
        where = os.path.dirname(os.path.abspath(__file__))
        return f"the compiled extension {name} is not built (no _C*.so in {where}); {build}"
    try:
        importlib.import_module(name)
    except (ImportError, OSError) as exc:  # built against another torch, or a damaged file
        return f"the compiled extension {spec.origin} did not load: {exc}; re{build}"
    return None


LOAD_ERROR = _load_error()
if LOAD_ERROR is not None:
    warnings.warn(f"slowfast_kernels: {LOAD_ERROR}. The reference and Triton backends still work.", stacklevel=2)


def native_kernel_registered(op: str, dispatch_key: str) -> bool:
    """True when the native op slowfast_kernels::<op> has a kernel for dispatch_key ("CPU", "CUDA")."""
    if LOAD_ERROR is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"slowfast_kernels::{op}", dispatch_key)
