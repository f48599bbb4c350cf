"""conv3d_stem_amx: the stems (conv + bias + ReLU + max pool) in one pass on Intel AMX-BF16 tiles.

oneDNN's AMX kernels reduce over input channels, which a stem has 3 of: the Fast stem (3 -> 8, 5x7x7)
runs at ~260 GFLOP/s in bf16, 18 ms of a ~100 ms R50 8x8 forward (batch 1, 2 cores; OpenVINO runs the same
kernel). The native kernel (csrc/cpu/conv3d_stem_amx.cpp) reduces over a whole window row instead (pixels x
frames x channels packed together), fuses the pool, and reads the raw float32 clip (no separate cast to
bf16 or to channels_last_3d). precision "bf16" computes what a bf16 conv computes; "bf16x3" reaches float32
accuracy with three bf16 products per tap (x_hi w_hi + x_hi w_lo + x_lo w_hi).

Used by the fused model's stems where `stem_amx_precision` says so; callable on its own.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

from .. import _ext, cpu_isa
from .conv3d_bn_act import output_shape
from .conv3d_small_cin import raw_clip_problem

PRECISIONS = ("bf16", "bf16x3")


@functools.lru_cache(maxsize=1)
def amx_available() -> bool:
    """The CPU has AMX-BF16 tiles and the OS lets this process use them (the extension asks once)."""
    return _ext.LOAD_ERROR is None and bool(torch.ops.slowfast_kernels.cpu_amx_available())


def supports(x: torch.Tensor, weight_shape, stride, padding, dilation) -> Optional[str]:
    """None when the native kernel computes this conv on this machine, else why not."""
    if _ext.LOAD_ERROR is not None:
        return _ext.LOAD_ERROR
    if not amx_available():
        return f"needs AMX-BF16 tiles ({cpu_isa.current().model} offers none, or the OS refused them)"
    why = raw_clip_problem(x, weight_shape)
    if why is not None:
        return why
    if tuple(dilation) != (1, 1, 1) or stride[0] != 1 or stride[1] != stride[2] or stride[1] not in (1, 2):
        return f"needs stride (1, s, s) with s 1 or 2 and no dilation, got stride {tuple(stride)} " \
               f"dilation {tuple(dilation)}"
    if any(not 0 <= p < k for p, k in zip(padding, weight_shape[2:])):
        return f"needs 0 <= padding < kernel, got padding {tuple(padding)} for kernel {tuple(weight_shape[2:])}"
    return None


def stem_amx_precision(dtype: torch.dtype, weight_shape) -> Optional[str]:
    """The measured rule (a Xeon with AMX, 2 cores, R50 8x8 at 224, batch 1, stem conv + pool; see
    DESIGN.md, "CPU: the stems on AMX"): bf16 models run both stems here (Fast 6.0 ms vs 21 ms for oneDNN
    bf16 + max_pool3d, Slow 3.0 vs 6.7); float32 models run the Fast stem (<= 16 output channels) as bf16x3
    (15 ms vs 27 ms for oneDNN fp32 + pool) and leave the Slow stem to oneDNN (7.7 vs 7.6 ms: no gain).
    None: not here (no AMX, or another dtype)."""
    if cpu_isa.tier() != "amx":
        return None
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float32 and weight_shape[0] <= 16:
        return "bf16x3"
    return None


def conv3d_stem_amx(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: Sequence[int],
                    padding: Sequence[int], *, pool_kernel: Sequence[int] = (), pool_stride: Sequence[int] = (),
                    pool_padding: Sequence[int] = (), activation: str = "relu",
                    precision: str = "bf16", nonfinite: Optional[torch.Tensor] = None) -> torch.Tensor:
    """max_pool3d(act(conv3d(x, weight) + bias)) on AMX. x [N, C_in <= 4, T, H, W] float32 or bfloat16 CPU,
    any strides, finite (a non-finite x gives NaN where the reference gives inf: check first); weight
    [C_out, C_in, kd, kh, kw] float32; bias [C_out] float32 or None; stride (1, s, s), s 1 or 2; pool_kernel
    (1, k, k), pool_stride (1, s, s), pool_padding (0, p, p), or all empty for no pool; precision "bf16"
    (bfloat16 out) or "bf16x3" (float32 accuracy, float32 out). nonfinite: an int32 tensor of one element,
    set to 1 when a value the kernel packed (every value a window reads, and the rest of their rows) is
    NaN or inf once rounded to bf16 (then the result is not the conv's: redo it another way); left as it is
    otherwise. Returns channels_last_3d."""
    why = supports(x, weight.shape, stride, padding, (1, 1, 1)) if isinstance(x, torch.Tensor) else "x is no tensor"
    if why is not None:
        raise ValueError(f"conv3d_stem_amx: {why}")
    if precision not in PRECISIONS:
        raise ValueError(f"conv3d_stem_amx: precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.ops.slowfast_kernels.conv3d_stem_amx(x, weight, bias, list(stride), list(padding), list(pool_kernel),
                                                      list(pool_stride), list(pool_padding), activation, precision,
                                                      nonfinite)


if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("slowfast_kernels::conv3d_stem_amx")
    def _fake(x, weight, bias, stride, padding, pool_kernel, pool_stride, pool_padding, activation, precision,
              nonfinite=None):
        shape = list(output_shape(x.shape, weight.shape, stride, padding, (1, 1, 1)))
        if pool_kernel:
            for d in (3, 4):
                shape[d] = (shape[d] + 2 * pool_padding[d - 2] - pool_kernel[d - 2]) // pool_stride[d - 2] + 1
        dtype = torch.float32 if precision == "bf16x3" else torch.bfloat16
        return torch.empty(shape, dtype=dtype, device=x.device, memory_format=torch.channels_last_3d)
