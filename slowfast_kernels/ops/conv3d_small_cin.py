"""conv3d_small_cin: the CPU conv of the stems (1 to 4 input channels), vectorized along the output row.

oneDNN vectorizes over output channels, which the Fast stem's 8 fill half of (it runs 3 -> 8 at the same
speed as 3 -> 16). The native kernel (csrc/cpu/conv3d_small_cin.cpp) puts 16 output columns in a register
and one register per output channel instead. Used by the fused model's CPU runners where `small_cin_wins`
says so; callable on its own. conv3d_small_cin_bf16 is the same in bf16 (AVX512_BF16 dot products, two
taps a lane) for bf16 models on CPUs without AMX, reading the float32 clip as given (`small_cin_bf16_wins`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import _ext, cpu_isa
from .conv3d_bn_act import output_shape


def supports(x: torch.Tensor, weight_shape, stride, padding, dilation) -> Optional[str]:
    """None when the native kernel computes this conv, else why not."""
    if _ext.LOAD_ERROR is not None:
        return _ext.LOAD_ERROR
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return f"needs float32 CPU tensors, got {x.dtype} on {x.device}"
    if not 1 <= weight_shape[1] <= 4:
        return f"needs 1 to 4 input channels, got {weight_shape[1]}"
    if tuple(dilation) != (1, 1, 1) or stride[0] != 1 or stride[1] != stride[2] or stride[1] not in (1, 2):
        return f"needs stride (1, s, s) with s 1 or 2 and no dilation, got stride {tuple(stride)} " \
               f"dilation {tuple(dilation)}"
    return None


# The ISA tiers (cpu_isa.CpuIsa.tier) where the kernel beat oneDNN on the Fast stem; elsewhere oneDNN runs it.
SMALL_CIN_TIERS = frozenset({"avx512"})


def small_cin_wins(x: torch.Tensor, weight_shape, stride, padding, dilation) -> bool:
    """The measured rule, keyed by the CPU's ISA (slowfast_kernels.cpu_isa: the tier found at run time).

    avx512 (fitted on an AMD EPYC with AVX-512, 2 cores, fp32, batch 1): 3 -> 8 5x7x7 stride (1,2,2) (the
    Fast stem) 26 ms in oneDNN, ~1.1x faster here (measured under load; see benchmarks/bench_conv3d.py);
    3 -> 64 1x7x7 (the Slow stem) oneDNN 2.3x faster: it fills whole registers with 64 output channels. So:
    up to 16 output channels.
    amx (an Intel Xeon with AMX): the Fast stem 57-65 ms here against 53 ms in oneDNN: oneDNN.
    avx2 / default (no AVX-512: the portable loop; an AMD EPYC with AVX2 only, 1 thread, loaded machine,
    medians of 15): the Fast stem at 224 3780 ms here against 200 ms in oneDNN: oneDNN."""
    if cpu_isa.tier() not in SMALL_CIN_TIERS:
        return False
    return supports(x, weight_shape, stride, padding, dilation) is None and weight_shape[0] <= 16


def conv3d_small_cin(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: Sequence[int],
                     padding: Sequence[int], *, activation: str = "relu", portable: bool = False) -> torch.Tensor:
    """act(conv3d(x, weight) + bias). x [N, C_in <= 4, T, H, W] float32 CPU, any strides; weight
    [C_out, C_in, kd, kh, kw]; bias [C_out] or None; stride (1, s, s) with s 1 or 2; padding 3 ints;
    activation "relu" | "none". Returns [N, C_out, To, Ho, Wo] channels_last_3d. portable=True skips the
    AVX-512 path (for tests: both must agree)."""
    why = supports(x, weight.shape, stride, padding, (1, 1, 1)) if isinstance(x, torch.Tensor) else "x is no tensor"
    if why is not None:
        raise ValueError(f"conv3d_small_cin: {why}")
    return torch.ops.slowfast_kernels.conv3d_small_cin(x, weight, bias, list(stride), list(padding), activation,
                                                       portable)


def raw_clip_problem(x: torch.Tensor, weight_shape) -> Optional[str]:
    """Why a stem kernel that reads the raw clip (this bf16 one, the AMX one) cannot take x, or None: it
    needs a float32 or bfloat16 5-d CPU tensor with the weight's 1 to 4 input channels."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return f"needs float32 or bfloat16 CPU tensors, got {x.dtype} on {x.device}"
    if x.dim() != 5 or not 1 <= weight_shape[1] <= 4 or x.shape[1] != weight_shape[1]:
        return f"needs a 5-d x and 1 to 4 input channels, the weight's, got x {tuple(x.shape)}, weight " \
               f"{tuple(weight_shape)}"
    return None


def supports_bf16(x: torch.Tensor, weight_shape, stride, padding, dilation) -> Optional[str]:
    """None when the bf16 kernel (AVX512_BF16 dot products) computes this conv on this machine, else why not."""
    if _ext.LOAD_ERROR is not None:
        return _ext.LOAD_ERROR
    isa = cpu_isa.current()
    if not {"avx512_bf16", "avx512bw"} <= isa.flags:
        return f"needs AVX512_BF16 ({isa.model} has none)"
    why = raw_clip_problem(x, weight_shape)
    if why is not None:
        return why
    if tuple(dilation) != (1, 1, 1) or tuple(stride) != (1, 2, 2):
        return f"needs stride (1, 2, 2) and no dilation, got stride {tuple(stride)} dilation {tuple(dilation)}"
    return None


def small_cin_bf16_wins(x: torch.Tensor, weight_shape, stride, padding, dilation) -> bool:
    """The measured rule for bf16 models on a CPU with AVX512_BF16 and no AMX (the AMX kernel runs the stems
    there). An AMD EPYC with AVX-512 BF16, 2 cores, from the float32 input clip, since a row's last 16 columns
    take a one-block pass: the Fast stem (3 -> 8, 5x7x7) 14.3 ms here (16.1 before) against 36 ms for the bf16
    cast and oneDNN's bf16 conv at batch 1; the Slow stem (3 -> 64, 1x7x7) 6.4 ms against 6.9 for the cast and
    oneDNN (42 vs 46 at batch 4; it tied before). So: up to 64 output channels, both stems."""
    return (cpu_isa.tier() == "avx512" and weight_shape[0] <= 64
            and supports_bf16(x, weight_shape, stride, padding, dilation) is None)


def conv3d_small_cin_bf16(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          stride: Sequence[int], padding: Sequence[int], *, activation: str = "relu") -> torch.Tensor:
    """act(conv3d(bf16(x), bf16(weight)) + bias) on AVX512_BF16, fp32 accumulation, bfloat16 out (oneDNN's bf16
    numerics). x [N, C_in <= 4, T, H, W] float32 or bfloat16 CPU, any strides (read as given: no cast pass);
    weight [C_out, C_in, kd, kh, kw] float32; bias [C_out] float32 or None; stride (1, 2, 2). Returns
    [N, C_out, To, Ho, Wo] bfloat16 channels_last_3d."""
    if not isinstance(x, torch.Tensor):
        raise ValueError("conv3d_small_cin_bf16: x is no tensor")
    why = supports_bf16(x, weight.shape, stride, padding, (1, 1, 1))
    if why is not None:
        raise ValueError(f"conv3d_small_cin_bf16: {why}")
    return torch.ops.slowfast_kernels.conv3d_small_cin_bf16(x, weight, bias, list(stride), list(padding), activation)


if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("slowfast_kernels::conv3d_small_cin")
    def _fake(x, weight, bias, stride, padding, activation, portable=False):
        shape = output_shape(x.shape, weight.shape, stride, padding, (1, 1, 1))
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)

    @torch.library.register_fake("slowfast_kernels::conv3d_small_cin_bf16")
    def _fake_bf16(x, weight, bias, stride, padding, activation):
        shape = output_shape(x.shape, weight.shape, stride, padding, (1, 1, 1))
        return torch.empty(shape, dtype=torch.bfloat16, device=x.device, memory_format=torch.channels_last_3d)
