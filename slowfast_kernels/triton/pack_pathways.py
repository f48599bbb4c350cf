"""Triton pack_pathways: one program per (clip, output frame, block of output pixels).

Each program reads its source frame's pixels (bilinear taps of the short-side resize, or the plain crop)
and writes all 3 channels of the fast or slow output, so the raw clip is read once and each output
element written once. Offsets are int64: a 64-clip batch of 32x256x256 fp32 frames passes 2**31 bytes.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
import triton
import triton.language as tl


@triton.jit
def _tap(ptr, lut_ptr, mean, std, mask, IS_U8: tl.constexpr):
    # Normalize each tap before blending, as the reference does: uint8 through the 256-entry table the
    # launcher built with torch's own arithmetic, float inputs as (x - mean) / std.
    if IS_U8:
        return tl.load(lut_ptr + tl.load(ptr, mask=mask, other=0).to(tl.int32), mask=mask, other=0.0)
    else:
        return (tl.load(ptr, mask=mask, other=0).to(tl.float32) - mean) / std


@triton.jit
def _channel(base, lut_ptr, mean, std, y0_off, y1_off, x0_off, x1_off, ly0, ly1, lx0, lx1, mask,
             RESIZE: tl.constexpr, IS_U8: tl.constexpr):
    if RESIZE:
        # PyTorch's bilinear order (CPU, fma-contracted): each source row horizontally, then vertically.
        top = tl.fma(lx0, _tap(base + y0_off + x0_off, lut_ptr, mean, std, mask, IS_U8),
                     lx1 * _tap(base + y0_off + x1_off, lut_ptr, mean, std, mask, IS_U8))
        bot = tl.fma(lx0, _tap(base + y1_off + x0_off, lut_ptr, mean, std, mask, IS_U8),
                     lx1 * _tap(base + y1_off + x1_off, lut_ptr, mean, std, mask, IS_U8))
        return tl.fma(ly0, top, ly1 * bot)
    else:
        return _tap(base + y0_off + x0_off, lut_ptr, mean, std, mask, IS_U8)


@triton.jit
def _source_coord(dst, scale, size):
    # area_pixel_compute_source_index (align_corners=False) + guard_index_and_lambda in float32; the
    # fma is how PyTorch's compiled kernels evaluate scale * (dst + 0.5) - 0.5, and a 1-ulp difference
    # in the coordinate moves the result by up to 1e-5.
    src = tl.maximum(tl.fma(dst.to(tl.float32) + 0.5, scale, -0.5), 0.0)
    i0 = tl.minimum(tl.floor(src).to(tl.int32), size - 1)
    lam = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
    i1 = i0 + (i0 < size - 1).to(tl.int32)
    return i0, i1, 1.0 - lam, lam


@triton.jit
def _pack_pathways_kernel(
    video_ptr, fast_idx_ptr, slow_idx_ptr, fast_ptr, slow_ptr, lut_ptr,
    T, TS, H, W, CROP_H, CROP_W, Y0, X0, scale_h, scale_w,
    sv_n, sv_v, sv_h, sv_w, sv_c,
    sf_n, sf_c, sf_t, sf_h, sf_w,
    ss_n, ss_c, ss_t, ss_h, ss_w,
    mean0, mean1, mean2, std0, std1, std2,
    RESIZE: tl.constexpr, IS_U8: tl.constexpr, BLOCK: tl.constexpr,
):
    pid_f = tl.program_id(0).to(tl.int64)
    n = pid_f // (T + TS)
    j = pid_f % (T + TS)
    is_fast = j < T
    fast_src = tl.load(fast_idx_ptr + n * T + tl.minimum(j, T - 1))
    slow_src = tl.load(slow_idx_ptr + n * TS + tl.maximum(j - T, 0))
    src_t = tl.where(is_fast, fast_src, slow_src)
    base = video_ptr + n * sv_n + src_t * sv_v

    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CROP_H * CROP_W
    oy = offs // CROP_W
    ox = offs % CROP_W
    if RESIZE:
        yi0, yi1, ly0, ly1 = _source_coord(oy + Y0, scale_h, H)
        xi0, xi1, lx0, lx1 = _source_coord(ox + X0, scale_w, W)
    else:
        yi0, yi1, ly0, ly1 = oy + Y0, oy + Y0, 1.0, 0.0
        xi0, xi1, lx0, lx1 = ox + X0, ox + X0, 1.0, 0.0
    y0_off = yi0.to(tl.int64) * sv_h
    y1_off = yi1.to(tl.int64) * sv_h
    x0_off = xi0.to(tl.int64) * sv_w
    x1_off = xi1.to(tl.int64) * sv_w

    r = _channel(base, lut_ptr, mean0, std0, y0_off, y1_off, x0_off, x1_off, ly0, ly1, lx0, lx1, mask,
                 RESIZE, IS_U8)
    g = _channel(base + sv_c, lut_ptr + 256, mean1, std1, y0_off, y1_off, x0_off, x1_off, ly0, ly1, lx0, lx1,
                 mask, RESIZE, IS_U8)
    b = _channel(base + 2 * sv_c, lut_ptr + 512, mean2, std2, y0_off, y1_off, x0_off, x1_off, ly0, ly1, lx0,
                 lx1, mask, RESIZE, IS_U8)

    oy64 = oy.to(tl.int64)
    ox64 = ox.to(tl.int64)
    f_ptr = fast_ptr + n * sf_n + j * sf_t + oy64 * sf_h + ox64 * sf_w
    s_ptr = slow_ptr + n * ss_n + (j - T) * ss_t + oy64 * ss_h + ox64 * ss_w
    jv = tl.full([BLOCK], 0, tl.int64) + j  # a vector: the interpreter refuses scalar & vector masks
    f_mask = mask & (jv < T)
    s_mask = mask & (jv >= T)
    out_ty = fast_ptr.dtype.element_ty
    tl.store(f_ptr, r.to(out_ty), mask=f_mask)
    tl.store(f_ptr + sf_c, g.to(out_ty), mask=f_mask)
    tl.store(f_ptr + 2 * sf_c, b.to(out_ty), mask=f_mask)
    tl.store(s_ptr, r.to(out_ty), mask=s_mask)
    tl.store(s_ptr + ss_c, g.to(out_ty), mask=s_mask)
    tl.store(s_ptr + 2 * ss_c, b.to(out_ty), mask=s_mask)


_TABLES: Dict[Tuple, torch.Tensor] = {}


def _normalize_table(mean: Tuple[float, ...], std: Tuple[float, ...], device: torch.device) -> torch.Tensor:
    """[3, 256] float32: (v / 255 - mean) / std by torch on `device`, so uint8 results match the reference."""
    key = (mean, std, str(device))
    if key not in _TABLES:
        if len(_TABLES) > 64:
            _TABLES.clear()
        v = torch.arange(256, dtype=torch.float32, device=device) / 255.0
        _TABLES[key] = ((v[None] - torch.tensor(mean, device=device)[:, None]) /
                        torch.tensor(std, device=device)[:, None]).contiguous()
    return _TABLES[key]


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"pack_pathways (triton): {msg}")


def _pack_pathways_triton(video: torch.Tensor, fast_index: torch.Tensor, slow_index: torch.Tensor,
                          resized: List[int], crop_box: List[int], mean: List[float], std: List[float],
                          slow: torch.Tensor, fast: torch.Tensor) -> None:
    """Writes slow [N, 3, TS, ch, cw] and fast [N, 3, T, ch, cw] (any strides) from video [N, V, H, W, 3]."""
    _check(video.dim() == 5 and video.shape[-1] == 3, f"video: expected [N, V, H, W, 3], got {tuple(video.shape)}")
    n, _, h, w, _ = video.shape
    t, ts = fast_index.shape[-1], slow_index.shape[-1]
    (rh, rw), (y0, x0, ch, cw) = resized, crop_box
    _check(fast_index.shape == (n, t) and slow_index.shape == (n, ts) and fast_index.dtype == torch.long and
           slow_index.dtype == torch.long, "fast_index/slow_index: expected int64 [N, T] and [N, T_slow]")
    _check(0 <= y0 and y0 + ch <= rh and 0 <= x0 and x0 + cw <= rw, f"crop_box {crop_box} exceeds {resized}")
    _check(fast.shape == (n, 3, t, ch, cw) and slow.shape == (n, 3, ts, ch, cw) and fast.dtype == slow.dtype,
           f"fast/slow: expected {(n, 3, t, ch, cw)} and {(n, 3, ts, ch, cw)} of one dtype, got "
           f"{tuple(fast.shape)} {fast.dtype} and {tuple(slow.shape)} {slow.dtype}")
    for name, x in (("fast_index", fast_index), ("slow_index", slow_index), ("fast", fast), ("slow", slow)):
        _check(x.device == video.device, f"{name} is on {x.device}, video on {video.device}")
    fast_index, slow_index = fast_index.contiguous(), slow_index.contiguous()
    lut = _normalize_table(tuple(mean), tuple(std), video.device)
    # float32 division, as PyTorch computes the resize scale.
    scale_h = float(np.float32(h) / np.float32(rh))
    scale_w = float(np.float32(w) / np.float32(rw))
    block = 1024
    grid = (n * (t + ts), triton.cdiv(ch * cw, block))
    _pack_pathways_kernel[grid](
        video, fast_index, slow_index, fast, slow, lut,
        t, ts, h, w, ch, cw, y0, x0, scale_h, scale_w,
        *video.stride(),
        *fast.stride(), *slow.stride(),
        *mean, *std,
        RESIZE=(rh, rw) != (h, w), IS_U8=video.dtype == torch.uint8, BLOCK=block, num_warps=4,
    )
