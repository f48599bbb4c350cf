"""Loads the compiled extension (slowfast_kernels._C) if it was built.

The library stays usable without it: the reference and Triton backends are pure Python. The reason
the extension is missing is kept for slowfast_kernels.backends to report.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

LOAD_ERROR: Optional[str] = None

try:
    from . import _C  # noqa: F401  (importing registers the native ops with torch.library)
except ImportError as exc:  # not built, or built against another torch
    LOAD_ERROR = (
        f"the compiled extension slowfast_kernels._C did not load ({exc}); build it with "
        "`pip install --no-build-isolation -e .`"
    )
    warnings.warn(f"slowfast_kernels: {LOAD_ERROR}. The reference and Triton backends still work.", stacklevel=2)


def native_kernel_registered(op: str, dispatch_key: str) -> bool:
    """True when the native op slowfast_kernels::<op> has a kernel for dispatch_key ("CPU", "CUDA")."""
    if LOAD_ERROR is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"slowfast_kernels::{op}", dispatch_key)
