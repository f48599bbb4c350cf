"""Triton conv3d_bn_act: implicit GEMM over NDHWC with the BN-folded bias, residual add, activation and
cast in the epilogue, storing at a channel offset of a wider output (the lateral concat buffer).

GEMM view: M = N*To*Ho*Wo output positions, N = C_out, K = KD*KH*KW*C_in ordered (kd, kh, kw, c) with c
innermost, so with NDHWC input and a channels_last_3d weight a K block reads contiguous channels. 1x1x1
convs skip the tap arithmetic and bounds masks (a plain GEMM over strided rows). Accumulation in fp32;
every pointer offset in int64 (a 64x8x32x224x224 activation passes 2**31 elements).

Tensors are given by pointer and strides, so NCDHW inputs, channels_last_3d weights and row-strided
channel slices of an output buffer need no copies.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

from ..backends import triton_interpreter_enabled
from .._shapes import output_shape

try:
    import triton
    import triton.language as tl
except ImportError:  # the library imports without triton; the backend reports it as unavailable
    triton = None
    tl = None


_interpreting = triton_interpreter_enabled


if triton is not None:

    @triton.jit
    def _conv3d_bn_act_kernel(
        x_ptr, w_ptr, b_ptr, r_ptr, y_ptr,
        M, C_in, C_out, K,
        D, H, W, To, Ho, Wo,
        sxn, sxc, sxd, sxh, sxw,
        swo, swi, swd, swh, sww,
        srn, src, srd, srh, srw,
        syn, syc, syd, syh, syw,
        y_channel_offset,
        stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
        KH: tl.constexpr, KW: tl.constexpr,
        IS_1X1: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        UPCAST_DOT: tl.constexpr, BF16_RTNE_BITS: tl.constexpr,
    ):
        # Grouped tile order: GROUP_M row tiles share weight tiles while they are hot in L2.
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(C_out, BLOCK_N)
        group = GROUP_M * num_n
        first_m = (pid // group) * GROUP_M
        size_m = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % size_m
        pid_n = (pid % group) // size_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < C_out
        ow = offs_m % Wo
        t = offs_m // Wo
        oh = t % Ho
        t = t // Ho
        od = t % To
        n = (t // To).to(tl.int64)
        # Input coordinate of tap (0, 0, 0) for every output row.
        id0 = od * stride_d - pad_d
        ih0 = oh * stride_h - pad_h
        iw0 = ow * stride_w - pad_w
        row = n * sxn + id0.to(tl.int64) * sxd + ih0.to(tl.int64) * sxh + iw0.to(tl.int64) * sxw
        w_col = offs_n.to(tl.int64) * swo

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            if IS_1X1:
                a_off = row[:, None] + offs_k.to(tl.int64)[None, :] * sxc
                a_mask = mask_m[:, None] & mask_k[None, :]
                w_off = offs_k.to(tl.int64) * swi
            else:
                c = offs_k % C_in
                tap = offs_k // C_in
                kw = tap % KW
                tap = tap // KW
                kh = tap % KH
                kd = tap // KH
                dd = kd * dil_d
                dh = kh * dil_h
                dw = kw * dil_w
                a_off = row[:, None] + (dd.to(tl.int64) * sxd + dh.to(tl.int64) * sxh + dw.to(tl.int64) * sxw
                                        + c.to(tl.int64) * sxc)[None, :]
                di = id0[:, None] + dd[None, :]
                hi = ih0[:, None] + dh[None, :]
                wi = iw0[:, None] + dw[None, :]
                a_mask = (mask_m[:, None] & mask_k[None, :] & (di >= 0) & (di < D) & (hi >= 0) & (hi < H)
                          & (wi >= 0) & (wi < W))
                w_off = c.to(tl.int64) * swi + kd.to(tl.int64) * swd + kh.to(tl.int64) * swh + kw.to(tl.int64) * sww
            a = tl.load(x_ptr + a_off, mask=a_mask, other=0.0)
            b = tl.load(w_ptr + w_off[:, None] + w_col[None, :], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            if UPCAST_DOT:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision="ieee")  # fp32 parity: TF32 off

        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        n_ = n
        od_ = od.to(tl.int64)
        oh_ = oh.to(tl.int64)
        ow_ = ow.to(tl.int64)
        cols = offs_n.to(tl.int64)
        out_mask = mask_m[:, None] & mask_n[None, :]
        if HAS_RESIDUAL:
            r_off = (n_ * srn + od_ * srd + oh_ * srh + ow_ * srw)[:, None] + (cols * src)[None, :]
            acc += tl.load(r_ptr + r_off, mask=out_mask, other=0.0).to(tl.float32)
        if RELU:
            acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as in torch.relu
        y_off = (n_ * syn + od_ * syd + oh_ * syh + ow_ * syw)[:, None] + ((cols + y_channel_offset) * syc)[None, :]
        if BF16_RTNE_BITS:
            # Round to nearest even by hand: the interpreter's fp32 -> bf16 cast truncates.
            bits = acc.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            tl.store(y_ptr + y_off, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=out_mask)
        else:
            tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


# Autotune tiles (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) per operand type: the usual Hopper GEMM sweep;
# autotune keys on the GEMM shape, so every SlowFast layer gets its own pick (small-M res5 layers want
# 64-row tiles, wide res2 layers 128x128). Each compiles for sm_90 with no spills on triton 3.6 and 3.9
# at the R50 layers (benchmarks/results/sm90-kernels.json). Dropped for spilling with a residual epilogue
# (bf16, 3.9): 128x256x64 / 8 warps (224 B of stack), 128x128x32 / 4 warps (80 B, now 8 warps).
TILES_16BIT = (
    (128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4), (64, 32, 32, 2, 5), (32, 64, 64, 4, 4),
)
# fp32 dots run as FFMA (input_precision="ieee"): accumulator and operand fragments all in registers, so at
# most 64 accumulators a thread and BLOCK_K 32. The 16-bit table spilled here (128x256x64: 13 KB of stack
# and 26-74 s a compile on 3.9; 128x128x32 / 4 warps 264-856 B), and so did 128x128x32 / 8 warps (8-32 B at
# Slow res4 3x1x1, K = 3072) and 32x64x32 / 4 warps (8 B on 3.6 at 1x3x3 layers).
TILES_FP32 = ((128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 32, 4, 3))
# C_in < 16 (the Fast pathway's 8-channel layers): no 16-aligned channel runs, so every A element of the
# [BLOCK_M, BLOCK_K] tile carries its own int64 address and masks; both tables above spilled 24 B to 2.2 KB
# there (Fast res2 3x1x1 8 -> 8, K = 24). 64 x 16 x 32: 64-194 registers and no spills in bf16 and fp32
# (64 x 32 x 32 spilled 48 B in fp32 on 3.9).
TILES_SMALL_CIN = ((64, 16, 32, 4, 3),)


def _tile(cfg) -> tuple:
    k = cfg.kwargs
    return k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], cfg.num_warps, cfg.num_stages


def _gpu_configs():
    """Every table's configs: the autotuner's list, of which _configs_for_dtype keeps one table's."""
    tiles = dict.fromkeys(TILES_16BIT + TILES_FP32 + TILES_SMALL_CIN)
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=warps,
                          num_stages=stages) for bm, bn, bk, warps, stages in tiles]


def _configs_for_dtype(configs, named_args, **kwargs):
    """The autotuner's early prune: C_in < 16 gets TILES_SMALL_CIN, else fp32 inputs TILES_FP32 and bf16/fp16
    TILES_16BIT."""
    if named_args["C_in"] < 16:
        table = TILES_SMALL_CIN
    else:
        table = TILES_FP32 if named_args["x_ptr"].dtype == torch.float32 else TILES_16BIT
    return [c for c in configs if _tile(c) in table]


def _interpreter_tiles(M: int, C_out: int) -> dict:
    # The interpreter pays per block operation, not per element: the largest tiles that fit the layer
    # keep CI's every-layer check (C_in up to 2048, C_out up to 2048) within seconds per layer.
    return {"BLOCK_M": max(16, min(64, triton.next_power_of_2(M))),
            "BLOCK_N": max(16, min(256, triton.next_power_of_2(C_out))), "BLOCK_K": 128}


@functools.lru_cache(maxsize=None)
def _launcher():
    """The kernel as launched: autotuned on GPU; fixed tiles under the CPU interpreter, where every config
    would be executed in numpy."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    if _interpreting():
        # UPCAST_DOT: the interpreter's tl.dot returns garbage for bfloat16 operands (triton 3.9); bf16
        # products are exact in fp32, so the upcast changes nothing numerically.
        return _conv3d_bn_act_kernel, {"GROUP_M": 4, "UPCAST_DOT": True}
    tuned = triton.autotune(configs=_gpu_configs(), key=["M", "C_out", "K", "IS_1X1"],
                            prune_configs_by={"early_config_prune": _configs_for_dtype})(_conv3d_bn_act_kernel)
    return tuned, {"UPCAST_DOT": False, "BF16_RTNE_BITS": False}


def _strides5(t: torch.Tensor):
    return tuple(int(s) for s in t.stride())


def _conv3d_bn_act_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    residual: Optional[torch.Tensor],
    relu: bool,
    out: torch.Tensor,
    out_channel_offset: int,
) -> torch.Tensor:
    """Launch into `out` (any strides) at channel `out_channel_offset`. Inputs are validated by the caller;
    weight must already be in x's dtype."""
    N, C_in, D, H, W = x.shape
    C_out, _, KD, KH, KW = weight.shape
    _, _, To, Ho, Wo = output_shape(x.shape, weight.shape, stride, padding, dilation)
    M = N * To * Ho * Wo
    K = C_in * KD * KH * KW
    if M == 0 or C_out == 0:
        return out
    is_1x1 = KD == KH == KW == 1 and not any(padding)
    kernel, fixed = _launcher()
    if _interpreting():
        fixed = dict(fixed, BF16_RTNE_BITS=out.dtype == torch.bfloat16, **_interpreter_tiles(M, C_out))
    dummy = out  # never read: HAS_BIAS / HAS_RESIDUAL are compile-time false
    r = residual if residual is not None else dummy

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(C_out, meta["BLOCK_N"]),)

    kernel[grid](
        x, weight, bias if bias is not None else dummy, r, out,
        M, C_in, C_out, K,
        D, H, W, To, Ho, Wo,
        *_strides5(x), *_strides5(weight), *_strides5(r), *_strides5(out),
        out_channel_offset,
        *stride, *padding, *dilation,
        KH=KH, KW=KW, IS_1X1=is_1x1, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, RELU=relu,
        **fixed,
    )
    return out
