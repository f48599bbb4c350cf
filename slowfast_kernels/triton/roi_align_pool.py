"""Triton kernel of roi_align_pool: temporal pool + RoIAlign + max over the bins, one box per program row.

_roi_align_pool_kernel: program (k, channel block) reads box k, walks its PH x PW bins and their sampling
    grid (torchvision's rule: ceil(size / bins) samples per side when sampling_ratio <= 0), loads at each
    bilinear corner a [BLOCK_T, BLOCK_C] tile of the [N, C, T, H, W] feature (any strides), pools it over
    time (mean or max), weights it, and keeps the running max over the bins; the result goes to
    out[k, col0 + c]. The time pool happens at the corners, so no pooled map is written: the feature is
    read straight, in one pass per pathway (one launch per pathway).
Offsets are int64 (a [64, 2048, 8, 16, 16] res5 map has 2**31 elements).
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl


@triton.jit
def _max_keep_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _corner(base, offset, tile_mask, s_t_c, inv_t, TEMPORAL_MAX: tl.constexpr):
    """The time pool of the [BLOCK_T, BLOCK_C] tile at one pixel: [BLOCK_C] (0 where the tile is masked)."""
    if TEMPORAL_MAX:
        v = tl.load(base + offset + s_t_c, mask=tile_mask, other=float("-inf")).to(tl.float32)
        # tl.max need not keep NaN (the GPU's max drops it): reduced with a NaN-keeping max, as torch's
        return tl.where(tl.sum(tile_mask.to(tl.int32), axis=0) > 0, tl.reduce(v, 0, _max_keep_nan), 0.0)
    v = tl.load(base + offset + s_t_c, mask=tile_mask, other=0.0).to(tl.float32)
    return tl.sum(v, axis=0) * inv_t


@triton.jit
def _roi_align_pool_kernel(
    x_ptr, boxes_ptr, out_ptr, C, T, H, W, PH, PW, spatial_scale, offset, sampling_ratio, out_stride, col0,
    s0, s1, s2, s3, s4,
    ALIGNED: tl.constexpr, TEMPORAL_MAX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    t = tl.arange(0, BLOCK_T).to(tl.int64)
    c_mask = c < C
    tile_mask = (t < T)[:, None] & c_mask[None, :]
    s_t_c = t[:, None] * s2 + c[None, :] * s1
    inv_t = 1.0 / (T * 1.0)  # `* 1.0`, not .to(): Triton passes an int argument equal to 1 as a constant

    b = tl.load(boxes_ptr + k * 5).to(tl.int64)
    x1 = tl.load(boxes_ptr + k * 5 + 1) * spatial_scale - offset
    y1 = tl.load(boxes_ptr + k * 5 + 2) * spatial_scale - offset
    x2 = tl.load(boxes_ptr + k * 5 + 3) * spatial_scale - offset
    y2 = tl.load(boxes_ptr + k * 5 + 4) * spatial_scale - offset
    roi_w = x2 - x1
    roi_h = y2 - y1
    if not ALIGNED:  # torchvision: malformed boxes become 1x1
        roi_w = tl.maximum(roi_w, 1.0)
        roi_h = tl.maximum(roi_h, 1.0)
    bin_h = roi_h / PH
    bin_w = roi_w / PW
    grid_h = tl.where(sampling_ratio > 0, sampling_ratio, tl.ceil(roi_h / PH).to(tl.int32))
    grid_w = tl.where(sampling_ratio > 0, sampling_ratio, tl.ceil(roi_w / PW).to(tl.int32))
    inv_count = 1.0 / tl.maximum(grid_h * grid_w, 1).to(tl.float32)
    base = x_ptr + b * s0
    Hf = H * 1.0
    Wf = W * 1.0

    best = tl.full([BLOCK_C], float("-inf"), tl.float32)
    for ph in range(0, PH):
        for pw in range(0, PW):
            acc = tl.zeros([BLOCK_C], tl.float32)
            for iy in range(0, grid_h):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / (grid_h * 1.0)
                for ix in range(0, grid_w):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / (grid_w * 1.0)
                    valid = (y >= -1.0) & (y <= Hf) & (x >= -1.0) & (x <= Wf)
                    yc = tl.maximum(y, 0.0)
                    xc = tl.maximum(x, 0.0)
                    y_low = yc.to(tl.int64)
                    x_low = xc.to(tl.int64)
                    y_end = y_low >= H - 1
                    x_end = x_low >= W - 1
                    y_low = tl.where(y_end, H - 1, y_low)
                    x_low = tl.where(x_end, W - 1, x_low)
                    y_high = tl.where(y_end, y_low, y_low + 1)
                    x_high = tl.where(x_end, x_low, x_low + 1)
                    ly = tl.where(y_end, 0.0, yc - y_low.to(tl.float32))
                    lx = tl.where(x_end, 0.0, xc - x_low.to(tl.float32))
                    hy = 1.0 - ly
                    hx = 1.0 - lx
                    m = tile_mask  # clamped corners are inside the map: an invalid sample is zeroed below
                    v = hy * hx * _corner(base, y_low * s3 + x_low * s4, m, s_t_c, inv_t, TEMPORAL_MAX)
                    v += hy * lx * _corner(base, y_low * s3 + x_high * s4, m, s_t_c, inv_t, TEMPORAL_MAX)
                    v += ly * hx * _corner(base, y_high * s3 + x_low * s4, m, s_t_c, inv_t, TEMPORAL_MAX)
                    v += ly * lx * _corner(base, y_high * s3 + x_high * s4, m, s_t_c, inv_t, TEMPORAL_MAX)
                    acc += tl.where(valid, v, 0.0)
            best = tl.maximum(best, acc * inv_count, propagate_nan=tl.PropagateNan.ALL)  # NaN kept, as torch
    tl.store(out_ptr + k * out_stride + col0 + c, best, mask=c_mask)


def _roi_align_pool_triton(features: Sequence[torch.Tensor], boxes: torch.Tensor, pooled_h: int, pooled_w: int,
                           spatial_scale: float, sampling_ratio: int, aligned: bool, temporal_pool: str,
                           out: torch.Tensor) -> None:
    """Fill out [K, sum C] (float32, contiguous). boxes: float32 contiguous [K, 5], validated by the caller."""
    k = boxes.shape[0]
    if k == 0:
        return
    col0 = 0
    for f in features:
        n, c, t, h, w = f.shape
        if c > 0:
            # BLOCK_C=64: a [T, 64] tile per corner stays in registers for T up to 32 (the Fast res5).
            block_c = min(64, triton.next_power_of_2(c))
            grid = (k, triton.cdiv(c, block_c))
            _roi_align_pool_kernel[grid](
                f, boxes, out, c, t, h, w, pooled_h, pooled_w, float(spatial_scale), 0.5 if aligned else 0.0,
                int(sampling_ratio),
                out.stride(0), col0, *f.stride(),
                ALIGNED=bool(aligned), TEMPORAL_MAX=temporal_pool == "max",
                BLOCK_T=triton.next_power_of_2(t), BLOCK_C=block_c,
            )
        col0 += c
