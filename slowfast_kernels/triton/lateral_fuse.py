"""Triton kernels of lateral_fuse (Fast -> Slow lateral connection into channel slices of one buffer).

_lateral_fuse_kernel: the copy modes (time_to_channel, time_strided_sampling) as a strided gather of a
    [voxels, channels] tile, with the sum fusion folded into the store. Strides are arguments, so one
    kernel serves NCDHW, channels_last_3d and sliced buffers alike.
_lateral_fuse_conv_kernel: time_strided_conv as an implicit GEMM, rows = output voxels (n, t, h, w),
    columns = output channels, reduction over (k, c_in); bias, ReLU and the sum fusion in the epilogue,
    stored straight into the buffer's lateral slice.
Offsets are int64: a [64, 8, 32, 224, 224] tensor has more than 2**31 elements.
"""
from __future__ import annotations


import torch

from ..backends import triton_interpreter_enabled
import triton
import triton.language as tl

# Source-channel map of the copy kernel (the same numbering as csrc/cpu/lateral_fuse.cpp).
TIME_TO_CHANNEL, TIME_STRIDED_SAMPLING = 0, 1


@triton.jit
def _lateral_fuse_kernel(
    src_ptr, dst_ptr, P, C, T, HW, W, alpha,
    ss0, ss1, ss2, ss3, ss4, ds0, ds1, ds2, ds3, ds4,
    MAP: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    j = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    hw = p % HW
    t = (p // HW) % T
    n = p // (HW * T)
    h = hw // W
    w = hw % W
    if MAP == 0:  # time_to_channel: channel j = c * alpha + a comes from frame t * alpha + a
        c = j // alpha
        ts = t[:, None] * alpha + (j % alpha)[None, :]
    else:  # time_strided_sampling
        c = j
        ts = t[:, None] * alpha + 0 * j[None, :]
    src = (n * ss0 + h * ss3 + w * ss4)[:, None] + (c * ss1)[None, :] + ts * ss2
    dst = (n * ds0 + t * ds2 + h * ds3 + w * ds4)[:, None] + (j * ds1)[None, :]
    mask = (p < P)[:, None] & (j < C)[None, :]
    v = tl.load(src_ptr + src, mask=mask)
    if ACC:
        v = (v.to(tl.float32) + tl.load(dst_ptr + dst, mask=mask).to(tl.float32)).to(v.dtype)
    tl.store(dst_ptr + dst, v, mask=mask)


@triton.jit
def _lateral_fuse_conv_kernel(
    x_ptr, w_ptr, b_ptr, dst_ptr, P, CO, CI, T, Tf, HW, W, alpha, pad,
    xs0, xs1, xs2, xs3, xs4, ws0, ws1, ws2, ds0, ds1, ds2, ds3, ds4,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, ACC: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_CI: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    o = tl.program_id(1).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O).to(tl.int64)
    ci = tl.arange(0, BLOCK_CI).to(tl.int64)
    hw = p % HW
    t = (p // HW) % T
    n = p // (HW * T)
    h = hw // W
    w = hw % W
    p_ok = p < P
    o_ok = o < CO
    x_row = n * xs0 + h * xs3 + w * xs4
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
    for k in range(K):
        tf = t * alpha + k - pad
        row_ok = p_ok & (tf >= 0) & (tf < Tf)
        x_base = x_row + tf * xs2
        for c0 in range(0, CI, BLOCK_CI):
            c = c0 + ci
            c_ok = c < CI
            a = tl.load(x_ptr + x_base[:, None] + (c * xs1)[None, :], mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_ptr + (c * ws1)[:, None] + (o * ws0)[None, :] + k * ws2,
                        mask=c_ok[:, None] & o_ok[None, :], other=0.0)
            if IEEE:
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as in torch.relu
    dst = (n * ds0 + t * ds2 + h * ds3 + w * ds4)[:, None] + (o * ds1)[None, :]
    mask = p_ok[:, None] & o_ok[None, :]
    if ACC:
        acc += tl.load(dst_ptr + dst, mask=mask).to(tl.float32)
    tl.store(dst_ptr + dst, acc.to(dst_ptr.dtype.element_ty), mask=mask)


def _bf16_dot_broken(dtype) -> bool:
    # Triton's CPU interpreter multiplies bf16 tiles as raw bits (results ~1e10): upcast there only.
    return dtype == torch.bfloat16 and triton_interpreter_enabled()


# Copy-kernel tile: BLOCK_C = the lateral channels (a power of two, at most 64) and BLOCK_P voxels, so that
# a program moves COPY_TILE_ELEMENTS elements. 4096 (512 x 8 at the first site's time_strided_sampling)
# spilled 296 / 456 B of int64 offsets on sm_90 (triton 3.6 / 3.9), 128 x 32 16 B on 3.6; 2048 is 16
# elements a thread at 4 warps and compiles with no spills on both (benchmarks/results/sm90-kernels.json).
COPY_TILE_ELEMENTS = 2048


def _pow2(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(x), 1))))


def _lateral_fuse_triton(slow, fast, mode, alpha, weight, bias, fusion, activation, out) -> None:
    """Writes the fused result into `out` (validated by the caller); slow's copy skipped when in place."""
    concat = fusion == "concat"
    cs = slow.shape[1]
    slow_part = out[:, :cs] if concat else out
    if not (slow.data_ptr() == out.data_ptr() and slow.stride() == out.stride()):
        slow_part.copy_(slow)
    dst = out[:, cs:] if concat else out
    n, c, t, h, w = dst.shape
    p = n * t * h * w
    if p == 0 or c == 0:
        return
    if mode == "time_strided_conv":
        k = weight.shape[2]
        # tl.dot needs every tile dimension >= 16; the masks cover the tails. fp32 (an FFMA dot with both
        # operand fragments in registers): BLOCK_CI 16, as 64 x 64 x 32 spilled 32 B on sm_90 (triton 3.9).
        ieee = fast.dtype == torch.float32 or _bf16_dot_broken(fast.dtype)
        block_o, block_ci = _pow2(c, 16, 64), _pow2(fast.shape[1], 16, 16 if ieee else 32)
        block_p = 64
        grid = (triton.cdiv(p, block_p), triton.cdiv(c, block_o))
        _lateral_fuse_conv_kernel[grid](
            fast, weight, bias if bias is not None else weight, dst, p, c, fast.shape[1], t, fast.shape[2], h * w, w,
            alpha, k // 2, *fast.stride(), *weight.stride()[:3], *dst.stride(),
            K=k, HAS_BIAS=bias is not None, RELU=activation == "relu", ACC=not concat,
            IEEE=ieee,
            BLOCK_P=block_p, BLOCK_O=block_o, BLOCK_CI=block_ci)
        return
    block_c = _pow2(c, 1, 64)
    block_p = max(16, COPY_TILE_ELEMENTS // block_c)
    grid = (triton.cdiv(p, block_p), triton.cdiv(c, block_c))
    _lateral_fuse_kernel[grid](
        fast, dst, p, c, t, h * w, w, alpha, *fast.stride(), *dst.stride(),
        MAP=TIME_TO_CHANNEL if mode == "time_to_channel" else TIME_STRIDED_SAMPLING, ACC=not concat,
        BLOCK_P=block_p, BLOCK_C=block_c)
