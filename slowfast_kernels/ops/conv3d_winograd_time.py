"""Temporal 3x1x1 convs on the CPU by Winograd F(4, 3) along time (csrc/cpu/conv3d_winograd_time.cpp).

A 3x1x1 conv (stride 1, padding (1, 0, 0)) is three GEMMs over time-shifted frames. F(4, 3) makes every 4
output frames from 6 transformed input frames with 6 GEMM products instead of 12: half the multiplies. The
Slow pathway's res4/res5 conv a layers (C_in 512..2048 at T = 8: two tiles, no padding waste) are compute
bound, so they run up to ~1.5x faster; the Fast pathway's small-channel ones are memory bound and the
transforms' extra traffic makes them slower (winograd_time_wins keeps them on oneDNN).

Measured on this 2-core AVX-512 machine (one thread, CPU time, median of 21, batch 1, fp32; busy machine:
the ratios are the figure) against oneDNN's conv run as the (3, 1) 2D conv over [N, C, T, H*W], the fused
model's CPU runner for these layers before:

    C_in -> C_out  T  H=W    oneDNN   F(4,3)   ratio
    1024 ->  256   8  14     21.2 ms  13.8 ms  1.54   Slow res4 conv a
    2048 ->  512   8   7     20.6     12.8     1.61   Slow res5 conv a
     512 ->  256   8  28     42.5     26.1     1.63   Slow res4 block 0 (Slow part)
    1280 ->  512   8  14     50.9     30.3     1.68
     128 ->  256   8  28     11.1      7.7     1.44   Slow res4 block 0 (lateral part)
     256 ->  128  32  14     11.3      7.7     1.46   Fast res4 conv a
     128 ->   64  32  28     12.2     10.5     1.15   Fast res3 conv a
      64 ->   32  32  56     15.2     36.5     0.42   (at::bmm GEMMs) memory bound: not taken

Without AVX-512 (an AMD EPYC with AVX2 only, 1 thread, loaded machine, medians of 15): 1024 -> 256 at 8x14
93.6 ms oneDNN vs 54.9 ms F(4, 3): the rule holds on every ISA tier (the transforms are compiled for AVX-512,
AVX2 and plain x86).

bf16 (WinogradTimeConv on a bfloat16 input): F(2, 3), 2 output frames from 4 transformed ones (4 products
instead of 6), the transforms in csrc/cpu/conv3d_winograd_time_bf16.cpp and the GEMMs in bf16; F(4, 3)'s
larger matrix entries (up to 8) multiplied the extra bf16 roundings into ~6x oneDNN's bf16 error, F(2, 3)'s
~2x. Measured and chosen on AVX512_BF16 CPUs without AMX (the table in WinogradTimeConv).

The GEMMs run through oneDNN's packed-weight matmul (at::bmm: 20-40% slower on these shapes).
fp32 error: ~1.6e-6 of the output's max magnitude (oneDNN's direct conv: ~1.7e-6), points 0, +-1, +-2, inf.

Entry points: conv3d_winograd_time(x, weight, bias, activation, residual) (folds nothing: weight and bias as
conv3d_bn_act takes them), WinogradTimeConv (the fused model's runner: filter transformed and packed once),
winograd_time_supports / winograd_time_wins (the plan's shape rule).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from .. import _ext, cpu_isa


def winograd_time_supports(x: torch.Tensor, weight_shape: Sequence[int], stride, padding, dilation) -> bool:
    """Whether the native kernels compute this conv: CPU float32 (F(4, 3)) or bfloat16 (F(2, 3)), kernel
    3x1x1, stride 1, padding (1, 0, 0)."""
    return (_ext.LOAD_ERROR is None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and x.dim() == 5 and tuple(weight_shape[2:]) == (3, 1, 1) and tuple(stride) == (1, 1, 1)
            and tuple(padding) == (1, 0, 0) and tuple(dilation) == (1, 1, 1))


def winograd_time_wins(x: torch.Tensor, weight_shape: Sequence[int], stride, padding, dilation) -> bool:
    """The plan's rule. float32: supported, T a multiple of 4 (no padded tile), and wide enough to be compute
    bound (C_in >= 128 and C_out >= 64; see the table above). bfloat16: F(2, 3) on the avx512 tier with
    AVX512_BF16 (no AMX: not measured there), C_in and C_out >= 256 (the table in WinogradTimeConv)."""
    if not winograd_time_supports(x, weight_shape, stride, padding, dilation):
        return False
    if x.dtype == torch.bfloat16:
        isa = cpu_isa.current()
        return isa.tier == "avx512" and isa.native_bf16 and weight_shape[1] >= 256 and weight_shape[0] >= 256
    return x.shape[2] % 4 == 0 and weight_shape[1] >= 128 and weight_shape[0] >= 64


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if _ext.LOAD_ERROR is not None:
        raise RuntimeError(f"conv3d_winograd_time: needs the native extension, which failed to load: {_ext.LOAD_ERROR}")
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.device.type != "cpu" or x.dtype != torch.float32:
        got = f"{tuple(x.shape)} {x.dtype} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"conv3d_winograd_time: x: expected a float32 CPU tensor [N, C_in, T, H, W], got {got}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5 or tuple(weight.shape[1:]) != (x.shape[1], 3, 1, 1):
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"conv3d_winograd_time: weight: expected [C_out, {x.shape[1]}, 3, 1, 1], got {got}")


def conv3d_winograd_time(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         activation: str = "relu", residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """act(conv3d(x, weight, bias, padding=(1, 0, 0)) + residual) by F(4, 3); channels_last_3d output."""
    _check(x, weight)
    packed = torch.ops.slowfast_kernels.conv3d_winograd_time_weight(weight)
    b = None if bias is None else bias.float().contiguous()
    if residual is not None:
        residual = residual.float()
    return torch.ops.slowfast_kernels.conv3d_winograd_time(x, packed, b, activation, residual)


def _onednn_linear_ok() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class WinogradTimeConv:
    """The fused model's runner (plan.make_runner): the filter transformed once, each of its planes packed
    for oneDNN's matmul at this input's row count (oneDNN's packed GEMM measured ~10% faster than at::bmm
    here); a call is input transform -> one GEMM a plane -> output transform with bias, residual and ReLU.
    float32 x: F(4, 3) (6 planes); bfloat16 x: F(2, 3) (4 planes, bf16 GEMMs; csrc/cpu/conv3d_winograd_time_bf16.cpp).
    shared: the layer's dict of shape-independent prepared weights (plan.make_runner): the transformed filter
    is made once there; the packed planes depend on the row count (batch and frame size), so stay per shape.

    bf16 F(2, 3) against oneDNN's bf16 conv as the (3, 1) 2D view (the plan's runner otherwise), the AVX-512
    EPYC with AVX512_BF16, 2 threads, batch 1, medians of 21 (IQR 0.03-0.40 ms), bias + ReLU:

        C_in -> C_out  T  H=W    oneDNN   F(2, 3)   ratio   error / oneDNN's (max, vs float64)
        1024 ->  256   8  14     5.20 ms  4.73 ms   1.10    4.3e-3 / 2.2e-3   Slow res4 conv a
        2048 ->  512   8   7     5.38     4.72      1.14    4.4e-3 / 2.4e-3   Slow res5 conv a
        1024 ->  512   8  14    10.57     8.77      1.21    3.7e-3 / 2.4e-3   res5 block 0, residual
         512 ->  256   8  28    10.79     9.82      1.10    3.8e-3 / 2.8e-3   res4 block 0, residual
         256 ->  512   8  14     2.53     2.35      1.08    4.7e-3 / 2.1e-3   res5 block 0, lateral part
         256 ->  128  32  14     2.90     2.98      0.97    (Fast res4 conv a)
         128 ->  256   8  28     2.59     3.32      0.78    (res4 block 0, lateral part)
          64 ->   32  32  56     3.43     7.99      0.43    memory bound

    so from 256 channels in and out (winograd_time_wins)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation,
                 activation: str, x: torch.Tensor, shared: Optional[Dict[tuple, torch.Tensor]] = None) -> None:
        self.bf16 = isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16
        if not self.bf16:
            _check(x, weight)
        elif not winograd_time_supports(x, weight.shape, stride, padding, dilation):
            raise ValueError(f"WinogradTimeConv: x: expected a float32 or bfloat16 CPU tensor [N, C_in, T, H, W] and a "
                             f"[C_out, C_in, 3, 1, 1] weight, got {tuple(x.shape)} {x.dtype} on {x.device} and "
                             f"{tuple(weight.shape)}")
        ops = torch.ops.slowfast_kernels
        key = ("winograd_time_f2" if self.bf16 else "winograd_time", x.device)
        u = shared.get(key) if shared is not None else None
        if u is None:  # [6 or 4, C_in, C_out]
            u = ops.winograd_time_f2_weight(weight.float()) if self.bf16 else \
                ops.conv3d_winograd_time_weight(weight.float())
            if shared is not None:
                shared[key] = u
        tile = 2 if self.bf16 else 4
        self.rows = x.shape[0] * -(-x.shape[2] // tile) * x.shape[3] * x.shape[4]
        self.onednn = _onednn_linear_ok()
        dtype = x.dtype
        if self.onednn:
            self.planes: List[torch.Tensor] = [torch.ops.mkldnn._reorder_linear_weight(
                u[k].t().contiguous().to(dtype), self.rows) for k in range(u.shape[0])]
        else:
            self.planes = [u[k].to(dtype).contiguous() for k in range(u.shape[0])]
        self.bias = None if bias is None else bias.float().contiguous()
        self.activation, self.c_out = activation, weight.shape[0]

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                 residual_is_scratch: bool = False) -> torch.Tensor:
        ops = torch.ops.slowfast_kernels
        v = ops.winograd_time_input_bf16(x) if self.bf16 else ops.winograd_time_input(x)
        if self.onednn:
            m = [torch.ops.mkldnn._linear_pointwise(v[k], p, None, "none", [], "") for k, p in enumerate(self.planes)]
        else:
            m = [torch.mm(v[k], p) for k, p in enumerate(self.planes)]
        dtype = x.dtype
        if residual is not None and residual_is_scratch and residual.dtype == dtype \
                and residual.is_contiguous(memory_format=torch.channels_last_3d):
            out = residual  # accumulated in place: no fresh output memory
        else:
            n, _, t, h, w = x.shape
            out = torch.empty((n, self.c_out, t, h, w), dtype=dtype, memory_format=torch.channels_last_3d)
        if self.bf16:
            r = None if residual is None else residual.to(torch.bfloat16)
            ops.winograd_time_output_bf16(m, self.bias, self.activation, r, False, out)
        else:
            ops.winograd_time_output(m, self.bias, self.activation, residual, out)
        return out


if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("slowfast_kernels::conv3d_winograd_time")
    def _conv3d_winograd_time_fake(x, packed, bias, activation, residual):
        n, _, t, h, w = x.shape
        return x.new_empty((n, packed.shape[2], t, h, w)).contiguous(memory_format=torch.channels_last_3d)

    @torch.library.register_fake("slowfast_kernels::conv3d_winograd_time_weight")
    def _conv3d_winograd_time_weight_fake(weight):
        return weight.new_empty((6, weight.shape[1], weight.shape[0]), dtype=torch.float32)
