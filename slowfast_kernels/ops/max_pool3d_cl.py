"""max_pool3d_cl: the stems' max-pool on CPU where no AMX kernel fuses it into the conv.

torch's CPU max_pool3d computes and writes an int64 argmax per output element even when nothing reads it
(4x a bf16 output's bytes), and vectorizes over channels, which the Fast stem's 8 half fill. The native
kernel (csrc/cpu/max_pool3d_cl.cpp) reads each window's channel vectors from channels_last_3d memory and
writes the max only. Same values as torch's (-inf padding, NaN propagates); float32 and bfloat16.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import _ext

CL = torch.channels_last_3d


def _triple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def supports(x: torch.Tensor, kernel, stride, padding) -> Optional[str]:
    """None when the native kernel pools x, else why not."""
    if _ext.LOAD_ERROR is not None:
        return _ext.LOAD_ERROR
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        return "needs a 5-d tensor [N, C, T, H, W]"
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return f"needs a float32 or bfloat16 CPU tensor, got {x.dtype} on {x.device}"
    k, s, p = (_triple(a) for a in (kernel, stride, padding))
    if any(v < 1 for v in k + s) or any(q < 0 or 2 * q > kk for q, kk in zip(p, k)):
        return f"needs positive kernel and stride and padding at most half the kernel, got {k}, {s}, {p}"
    if any((n + 2 * q - kk) // ss + 1 < 1 for n, kk, ss, q in zip(x.shape[2:], k, s, p)):
        return f"input {tuple(x.shape)} is smaller than the kernel {k}"
    return None


def max_pool3d_cl(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int],
                  padding: Sequence[int]) -> torch.Tensor:
    """max_pool3d(x, kernel, stride, padding) (ceil_mode False, dilation 1) as a channels_last_3d tensor: the
    native kernel where `supports` says so, else torch's max_pool3d."""
    k, s, p = (list(_triple(a)) for a in (kernel, stride, padding))
    if supports(x, k, s, p) is None:
        return torch.ops.slowfast_kernels.max_pool3d_cl(x, k, s, p)
    return torch.nn.functional.max_pool3d(x, k, s, p).contiguous(memory_format=CL)


if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("slowfast_kernels::max_pool3d_cl")
    def _fake(x, kernel, stride, padding):
        shape = [x.shape[0], x.shape[1]] + [(n + 2 * q - kk) // ss + 1
                                            for n, kk, ss, q in zip(x.shape[2:], kernel, stride, padding)]
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=CL)
