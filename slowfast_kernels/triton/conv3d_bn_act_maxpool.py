"""Triton kernels for the stems: convs with 1 to 4 input channels, bias + activation in the epilogue, and
optionally the stem max-pool (kernel (1,3,3), stride (1,2,2), pad (0,1,1)) fused so only the pooled
output is written.

Two kernel families, picked per call by conv3d_small_cin_triton / conv3d_small_cin_maxpool_triton:
- the tap-row kernels (conv3d_bn_act_maxpool_tap_rows.py), where the column stride and W are even (both
  stems at any even frame size): the input as 4-channel NDHWC (a 3-channel input is copied once, 3 -> 4
  channels), each kernel row (kd, kh) of a GEMM row one run of contiguous 16-byte vectors gathered by
  cp.async into shared memory, 4 outputs a GEMM row for C_out <= 8, a pipelined loop; see that module.
- the element-gather kernels below, for everything else (an odd W or column stride, e.g. stride 1).

The element-gather kernels: the general implicit GEMM (triton/conv3d_bn_act.py) decodes every K index into
(kd, kh, kw, c) with divisions on a [BLOCK_M, BLOCK_K] tile. With C_in = 3 the GEMM is all K: the Fast
stem (3 -> 8, 5x7x7) is M = 12.8 M rows (batch 32, 224), K = 735, N = 8. Here K is walked as KD x KH steps
of one (kw, c) row of BLOCK_K = next_pow2(KW * C_in) (21 -> 32 for both stems): the (kw, c) decode and
each row's valid kw range are computed once per program, each step adds one scalar offset and masks by
two compares per element. Their loads are scalar (21 16-bit loads and 32 16-bit shared stores a K step and
thread for the Fast stem), which bounds the Fast stem at ~3.3 ms (triton 3.6) and ~6 ms (3.9) on an H200.
The weight is packed per call into [KD, KH, BLOCK_K, N_pad] (zeros in the padding), so its loads need no
mask.

The fused max-pool (both families): a program computes a ROWS x COLS block of conv outputs starting one row
and one column before its first pool window, pools it in registers (pairs by reshape + split, the window's
third element by a one-step tl.gather shift) and writes (ROWS/2 - 1) x (COLS/2 - 1) pooled outputs.
Neighbouring blocks overlap by the halo, so the conv is recomputed by ROWS*COLS / (4 * (ROWS/2-1) *
(COLS/2-1)): 1.14x at 32 x 32, 1.22x at 16 x 32, against 2.25x for computing each 3x3 window separately.

sm_90 static bounds at batch 32, 224, bf16 (triton.compile for GPUTarget("cuda", 90, 32) at the launchers'
specializations, cuobjdump -res-usage / -sass; H200: 132 SMs at 1.755 GHz, 4 warp-instructions issued and
1 load/store-unit warp-instruction a clock and SM, 790 TFLOP/s bf16 MMA, 4.2 TB/s; est_ms = max of the
issue, LSU, tensor-core and HBM bounds from the loop's counts x trips, the tap-row kernels' interior and
edge loops weighted by their tile shares), from benchmarks/results/sm90-kernels.json (triton 3.9 / 3.6).
The tap-row configs (conv3d_bn_act_maxpool_tap_rows.py) run the masked K loop alone: the two-loop PATH 0
asked 289 KB of shared memory for the Fast stem (over a block's 227 KB) and saves nothing where the loads
bound the kernel. No kernel below has stack (spills):

    kernel                        est_ms 3.9 / 3.6 (bound)       regs 3.9 / 3.6   shared memory
    Fast stem, pool fused         0.811 / 0.792 (LSU)            244 / 241        205 KB (32 x 64, 3 stages)
    3 -> 4 channel copy (Fast)    0.171 (HBM)                     52
    Slow stem, pool fused         0.263 / 0.248 (LSU)            112 / 113         61 KB
    3 -> 4 channel copy (Slow)    0.043 (HBM)                     52
    Fast stem conv alone          1.007 / 0.978 (LSU)             52 / 61         145 KB

So the stems as the plan runs them (pool fused, copy included): Fast 0.982 / 0.963 ms, Slow 0.305 / 0.291
ms. The Fast kernels are bound by the load/store unit: each GEMM row gathers 16 columns for 4 outputs that
advance 8 (2x overlap), and every power-of-two pool block computes 128 x 128 conv positions of the 112 x
112 frame. The element-gather kernels before them, same method: Fast conv 3.3 ms (3.6; LSU, 165-instruction
loop) / 6.7 ms (3.9; 372), Fast fused pool 4.2 / 9.8 ms (3.9: 56 B of stack, 988-instruction loop), Slow
fused pool 0.28 / 0.65 ms; cuDNN measured 28.7 / 1.96 ms. The Fast conv alone + torch's pool (~0.16 ms
of HBM) + copy is ~1.3 ms: the pool stays fused (fuse_pool_rule). Unmeasured on a GPU.

Accumulation in fp32; every pointer offset in int64 (the Slow stem's conv output at batch 32 is 206 M
elements; a large batch, or an input with a big batch stride, passes 2**31).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

from ..backends import triton_interpreter_enabled

try:
    import triton
    import triton.language as tl
except ImportError:  # the library imports without triton; the backend reports it as unavailable
    triton = None
    tl = None


if triton is not None:

    @triton.jit
    def _store_cast(ptr, off, acc, mask, BF16_RTNE_BITS: tl.constexpr):
        if BF16_RTNE_BITS:
            # Round to nearest even by hand: the interpreter's fp32 -> bf16 cast truncates.
            bits = acc.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            tl.store(ptr + off, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
        else:
            tl.store(ptr + off, acc.to(ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _small_cin_conv_tile(
        x_ptr, w_ptr, b_ptr,
        n, id0, ih0, iw0, mask_m,
        D, H, W,
        sxn, sxc, sxd, sxh, sxw,
        n0,
        C_IN: tl.constexpr, KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, N_PAD: tl.constexpr,
        RELU: tl.constexpr, UPCAST_DOT: tl.constexpr,
    ):
        """act(conv + bias) for BLOCK_M output positions given by their batch index n (int64) and the input
        coordinate (id0, ih0, iw0) of tap (0, 0, 0), output channels n0 .. n0 + BLOCK_N. fp32 [BLOCK_M, BLOCK_N]."""
        # Only [BLOCK_M] and [BLOCK_K] vectors live across the loop: a hoisted [BLOCK_M, BLOCK_K] pointer
        # tile would hold 2 registers per element (128 a thread in the 512-row pool block).
        j = tl.arange(0, BLOCK_K)
        kw = j // C_IN
        col = kw.to(tl.int64) * sxw + (j % C_IN).to(tl.int64) * sxc
        row = n * sxn + id0.to(tl.int64) * sxd + ih0.to(tl.int64) * sxh + iw0.to(tl.int64) * sxw
        # Tap kw of a row reads column iw0 + kw: in bounds for kw in [-iw0, W - iw0), real for kw < KW.
        kw_lo = -iw0
        kw_hi = tl.minimum(W - iw0, KW)
        w_ptrs = w_ptr + j[:, None] * N_PAD + (n0 + tl.arange(0, BLOCK_N))[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kd in range(KD):
            di = id0 + kd
            ok_d = mask_m & (di >= 0) & (di < D)
            for kh in range(KH):
                hi = ih0 + kh
                ok = ok_d & (hi >= 0) & (hi < H)
                lo = tl.where(ok, kw_lo, KW)  # a row out of bounds in D or H takes no tap
                mask = (kw[None, :] >= lo[:, None]) & (kw[None, :] < kw_hi[:, None])
                a = tl.load(x_ptr + (row + (kd * sxd + kh * sxh))[:, None] + col[None, :], mask=mask, other=0.0)
                b = tl.load(w_ptrs + (kd * KH + kh) * (BLOCK_K * N_PAD))
                if UPCAST_DOT:
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                acc = tl.dot(a, b, acc, input_precision="ieee")  # fp32 parity: TF32 off
        acc += tl.load(b_ptr + n0 + tl.arange(0, BLOCK_N))[None, :]
        if RELU:
            acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as in eager ReLU
        return acc

    @triton.jit
    def _conv3d_small_cin_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        M, C_out, D, H, W, To, Ho, Wo,
        sxn, sxc, sxd, sxh, sxw,
        syn, syc, syd, syh, syw,
        y_channel_offset,
        stride_d, stride_h, stride_w, pad_d, pad_h, pad_w,
        C_IN: tl.constexpr, KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, N_PAD: tl.constexpr,
        RELU: tl.constexpr, UPCAST_DOT: tl.constexpr, BF16_RTNE_BITS: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        n0 = tl.program_id(1) * BLOCK_N
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        ow = (offs_m % Wo).to(tl.int32)
        t = offs_m // Wo
        oh = (t % Ho).to(tl.int32)
        t = t // Ho
        od = (t % To).to(tl.int32)
        n = t // To
        acc = _small_cin_conv_tile(
            x_ptr, w_ptr, b_ptr, n, od * stride_d - pad_d, oh * stride_h - pad_h, ow * stride_w - pad_w, mask_m,
            D, H, W, sxn, sxc, sxd, sxh, sxw, n0,
            C_IN, KD, KH, KW, BLOCK_M, BLOCK_N, BLOCK_K, N_PAD, RELU, UPCAST_DOT)
        cols = n0 + tl.arange(0, BLOCK_N)
        y_off = ((n * syn + od.to(tl.int64) * syd + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[:, None]
                 + ((cols + y_channel_offset).to(tl.int64) * syc)[None, :])
        _store_cast(y_ptr, y_off, acc, mask_m[:, None] & (cols < C_out)[None, :], BF16_RTNE_BITS)

    @triton.jit
    def _conv3d_small_cin_maxpool_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        C_out, D, H, W, To, Ho, Wo, Hp, Wp,
        sxn, sxc, sxd, sxh, sxw,
        syn, syc, syd, syh, syw,
        stride_d, stride_h, stride_w, pad_d, pad_h, pad_w,
        C_IN: tl.constexpr, KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        N_PAD: tl.constexpr, RELU: tl.constexpr, UPCAST_DOT: tl.constexpr, BF16_RTNE_BITS: tl.constexpr,
    ):
        """Pool (1,3,3)/(1,2,2)/(0,1,1) of the conv: program (n*To + od, row tile, column tile) writes pooled
        rows ph0 .. ph0 + ROWS/2 - 2 and columns pw0 .. pw0 + COLS/2 - 2, all channels of one BLOCK_N."""
        R: tl.constexpr = ROWS // 2
        B: tl.constexpr = COLS // 2
        nd = tl.program_id(0).to(tl.int64)
        ph0 = tl.program_id(1) * (R - 1)
        pw0 = tl.program_id(2) * (B - 1)
        od = (nd % To).to(tl.int32)
        n = nd // To
        i = tl.arange(0, ROWS * COLS)
        # Conv position of block element i: row 2*ph0 - 1 + i // COLS, column 2*pw0 - 1 + i % COLS.
        oh = 2 * ph0 - 1 + i // COLS
        ow = 2 * pw0 - 1 + i % COLS
        inside = (oh >= 0) & (oh < Ho) & (ow >= 0) & (ow < Wo)
        id0 = tl.zeros_like(i) + (od * stride_d - pad_d)
        for c0 in range(0, N_PAD, BLOCK_N):
            acc = _small_cin_conv_tile(
                x_ptr, w_ptr, b_ptr, n, id0, oh * stride_h - pad_h, ow * stride_w - pad_w, inside,
                D, H, W, sxn, sxc, sxd, sxh, sxw, c0,
                C_IN, KD, KH, KW, ROWS * COLS, BLOCK_N, BLOCK_K, N_PAD, RELU, UPCAST_DOT)
            _pool_and_store(y_ptr, acc, inside, n, od, ph0, pw0, c0, C_out, Hp, Wp, syn, syc, syd, syh, syw,
                            ROWS, COLS, BLOCK_N, BF16_RTNE_BITS)

    @triton.jit
    def _pool_and_store(
        y_ptr, acc, inside, n, od, ph0, pw0, c0, C_out, Hp, Wp, syn, syc, syd, syh, syw,
        ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_N: tl.constexpr, BF16_RTNE_BITS: tl.constexpr,
    ):
        """Max-pool (3x3 windows, stride 2) a ROWS x COLS block of conv outputs acc [ROWS * COLS, BLOCK_N]
        starting one row and one column before pooled output (ph0, pw0), and store the (ROWS/2 - 1) x
        (COLS/2 - 1) pooled outputs of channels c0 .. c0 + BLOCK_N."""
        R: tl.constexpr = ROWS // 2
        B: tl.constexpr = COLS // 2
        NAN: tl.constexpr = tl.PropagateNan.ALL  # a NaN in a window pools to NaN, as max_pool3d does
        # Positions outside the conv output are the pool's -inf padding.
        acc = tl.where(inside[:, None], acc, float("-inf"))
        # Columns: window b = conv columns 2b, 2b + 1, 2b + 2 of the block.
        pairs = tl.permute(tl.reshape(acc, (ROWS, B, 2, BLOCK_N)), (0, 1, 3, 2))
        even, odd = tl.split(pairs)
        nxt = tl.minimum(tl.arange(0, B) + 1, B - 1)[None, :, None] + tl.zeros((ROWS, B, BLOCK_N), tl.int32)
        cols = tl.maximum(tl.maximum(even, odd, propagate_nan=NAN), tl.gather(even, nxt, 1), propagate_nan=NAN)
        # Rows: window a = conv rows 2a, 2a + 1, 2a + 2 of the block.
        pairs = tl.permute(tl.reshape(cols, (R, 2, B, BLOCK_N)), (0, 2, 3, 1))
        even, odd = tl.split(pairs)
        nxt = tl.minimum(tl.arange(0, R) + 1, R - 1)[:, None, None] + tl.zeros((R, B, BLOCK_N), tl.int32)
        pooled = tl.maximum(tl.maximum(even, odd, propagate_nan=NAN), tl.gather(even, nxt, 0), propagate_nan=NAN)
        a = tl.arange(0, R)[:, None, None]
        b = tl.arange(0, B)[None, :, None]
        ch = c0 + tl.arange(0, BLOCK_N)[None, None, :]
        ph = ph0 + a
        pw = pw0 + b
        mask = (a < R - 1) & (b < B - 1) & (ph < Hp) & (pw < Wp) & (ch < C_out)
        y_off = (n * syn + od.to(tl.int64) * syd + ph.to(tl.int64) * syh + pw.to(tl.int64) * syw
                 + ch.to(tl.int64) * syc)
        _store_cast(y_ptr, y_off, pooled, mask, BF16_RTNE_BITS)


# -- configs: fixed per shape class, no autotuning ----------------------------------------------------

def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def block_k(c_in: int, kw: int) -> int:
    """One (kw, c) row of the kernel per K step, padded to a power of two >= 16 (tl.dot's minimum)."""
    return max(16, _pow2(c_in * kw))


def block_n(c_out: int) -> int:
    """N padded to >= 16 (tl.dot's minimum), at most 64 per program (the Slow stem's 64 in one tile)."""
    return max(16, min(64, _pow2(c_out)))


# Conv-only kernel, keyed by block_n. BLOCK_M 128 with 4 warps: the usual Hopper tile for a thin N; the
# accumulator is 128 x 16 (Fast stem) or 128 x 64 (Slow stem) fp32, 8 or 32 registers a thread.
# Unmeasured on a GPU so far: the first thing to sweep there.
CONV_CONFIGS = {
    16: dict(BLOCK_M=128, num_warps=4, num_stages=3),
    32: dict(BLOCK_M=128, num_warps=4, num_stages=3),
    64: dict(BLOCK_M=128, num_warps=4, num_stages=3),
}
# Fused pool kernel, keyed by block_n: the conv block ROWS x COLS. Larger blocks recompute less halo
# (16 x 32: 1.22x; 16 x 16: 1.31x) but hold ROWS*COLS*BLOCK_N fp32 accumulators: 512 x 16 and
# 256 x 64 are both 32 registers a thread at 8 warps.
POOL_CONFIGS = {
    16: dict(ROWS=16, COLS=32, num_warps=8, num_stages=2),
    32: dict(ROWS=16, COLS=16, num_warps=8, num_stages=2),
    64: dict(ROWS=16, COLS=16, num_warps=8, num_stages=2),
}
# Under the CPU interpreter every block operation is a numpy call with a fixed cost (~0.2 ms on a loaded
# core) per (program, kd, kh) step: the largest blocks that the tests' shapes still split into several
# programs (the pool block then overlaps its neighbours in both directions).
INTERPRETER_CONV = dict(BLOCK_M=512)
INTERPRETER_POOL = dict(ROWS=16, COLS=32)


def padded_k(c_in: int, kd: int, kh: int, kw: int) -> int:
    """K as the kernels walk it: KD x KH steps of block_k (1120 for the Fast stem's 735, 224 for the Slow's 147)."""
    return kd * kh * block_k(c_in, kw)


def pool_recompute(rows: int, cols: int) -> float:
    """Conv outputs computed per conv output the pool reads once (the halo overlap of the fused kernel)."""
    return rows * cols / (4 * (rows // 2 - 1) * (cols // 2 - 1))


def pack_weight(weight: torch.Tensor, dtype: torch.dtype, bk: int, n_pad: int) -> torch.Tensor:
    """[C_out, C_in, KD, KH, KW] -> [KD, KH, bk, n_pad] with element [kd, kh, kw * C_in + c, o], zero padded."""
    c_out, c_in, kd, kh, kw = weight.shape
    packed = torch.zeros(kd, kh, bk, n_pad, dtype=dtype, device=weight.device)
    packed[:, :, : kw * c_in, :c_out] = weight.permute(2, 3, 4, 1, 0).reshape(kd, kh, kw * c_in, c_out).to(dtype)
    return packed


def _pad_bias(bias: Optional[torch.Tensor], c_out: int, n_pad: int, device) -> torch.Tensor:
    b = torch.zeros(n_pad, dtype=torch.float32, device=device)
    if bias is not None:
        b[:c_out] = bias.float()
    return b


@functools.lru_cache(maxsize=None)
def _mode() -> dict:
    if triton is None:
        raise RuntimeError("triton is not installed")
    if triton_interpreter_enabled():
        # UPCAST_DOT: the interpreter's tl.dot returns garbage for bfloat16 operands; bf16 products are
        # exact in fp32, so the upcast changes nothing numerically.
        return {"UPCAST_DOT": True}
    return {"UPCAST_DOT": False, "BF16_RTNE_BITS": False}


def _strides5(t: torch.Tensor):
    return tuple(int(s) for s in t.stride())


def _operands(x, weight, bias):
    C_out, C_in, KD, KH, KW = weight.shape
    bk, bn = block_k(C_in, KW), block_n(C_out)
    n_pad = triton.cdiv(C_out, bn) * bn
    w_dtype = torch.float32 if x.dtype == torch.float32 else x.dtype
    return pack_weight(weight, w_dtype, bk, n_pad), _pad_bias(bias, C_out, n_pad, x.device), bk, bn, n_pad


def conv3d_small_cin_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                            stride: Sequence[int], padding: Sequence[int], relu: bool, out: torch.Tensor,
                            out_channel_offset: int) -> torch.Tensor:
    """act(conv3d(x, weight) + bias) into out[:, offset : offset + C_out] (any strides). x: any strides.
    Validated by the caller."""
    N, C_in, D, H, W = x.shape
    C_out, _, KD, KH, KW = weight.shape
    _, _, To, Ho, Wo = out.shape
    M = N * To * Ho * Wo
    if M == 0 or C_out == 0:
        return out
    from .conv3d_bn_act_maxpool_tap_rows import conv3d_tap_rows_triton, tap_rows_fit, to_tap_rows

    if tap_rows_fit(x.shape, weight.shape, stride, padding):
        return conv3d_tap_rows_triton(to_tap_rows(x), weight, bias, stride, padding, relu, out, out_channel_offset,
                                      triton_interpreter_enabled())
    w, b, bk, bn, n_pad = _operands(x, weight, bias)
    fixed = dict(_mode())
    cfg = dict(INTERPRETER_CONV) if triton_interpreter_enabled() else dict(CONV_CONFIGS[bn])
    if triton_interpreter_enabled():
        fixed["BF16_RTNE_BITS"] = out.dtype == torch.bfloat16
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), n_pad // bn)
    _conv3d_small_cin_kernel[grid](
        x, w, b, out, M, C_out, D, H, W, To, Ho, Wo,
        *_strides5(x), *_strides5(out), out_channel_offset, *stride, *padding,
        C_IN=C_in, KD=KD, KH=KH, KW=KW, BLOCK_N=bn, BLOCK_K=bk, N_PAD=n_pad, RELU=relu, **cfg, **fixed,
    )
    return out


def conv3d_small_cin_maxpool_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                    stride: Sequence[int], padding: Sequence[int], relu: bool,
                                    conv_hw: Sequence[int], out: torch.Tensor) -> torch.Tensor:
    """max_pool3d(act(conv3d(x, weight) + bias), (1,3,3), (1,2,2), (0,1,1)) into out (any strides), conv
    output height and width conv_hw. Validated by the caller."""
    N, C_in, D, H, W = x.shape
    C_out, _, KD, KH, KW = weight.shape
    _, _, To, Hp, Wp = out.shape
    if out.numel() == 0:
        return out
    from .conv3d_bn_act_maxpool_tap_rows import conv3d_tap_rows_maxpool_triton, tap_rows_fit, to_tap_rows

    if tap_rows_fit(x.shape, weight.shape, stride, padding):
        return conv3d_tap_rows_maxpool_triton(to_tap_rows(x), weight, bias, stride, padding, relu, conv_hw, out,
                                              triton_interpreter_enabled())
    w, b, bk, bn, n_pad = _operands(x, weight, bias)
    fixed = dict(_mode())
    cfg = dict(INTERPRETER_POOL) if triton_interpreter_enabled() else dict(POOL_CONFIGS[bn])
    if triton_interpreter_enabled():
        fixed["BF16_RTNE_BITS"] = out.dtype == torch.bfloat16
    r, c = cfg["ROWS"] // 2 - 1, cfg["COLS"] // 2 - 1
    grid = (N * To, triton.cdiv(Hp, r), triton.cdiv(Wp, c))
    _conv3d_small_cin_maxpool_kernel[grid](
        x, w, b, out, C_out, D, H, W, To, conv_hw[0], conv_hw[1], Hp, Wp,
        *_strides5(x), *_strides5(out), *stride, *padding,
        C_IN=C_in, KD=KD, KH=KH, KW=KW, BLOCK_N=bn, BLOCK_K=bk, N_PAD=n_pad, RELU=relu, **cfg, **fixed,
    )
    return out
