"""RoIAlign in pure PyTorch, with torchvision's semantics (torchvision/csrc/ops/cpu/roi_align_kernel.cpp).

For a box (batch index b, x1, y1, x2, y2) in input pixels and an output of PH x PW bins:
  start = (x1, y1) * spatial_scale - offset, end = (x2, y2) * spatial_scale - offset, offset = 0.5 if aligned
  else 0; the box size end - start is clamped to >= 1 when not aligned (a zero-area box then covers one
  pixel) and left as it is when aligned (a zero-area box gives zeros);
  bin = size / (PH, PW); sampling grid per bin gh x gw = sampling_ratio each, or ceil(size / (PH, PW)) when
  sampling_ratio <= 0 (the adaptive rule);
  sample (iy, ix) of bin (ph, pw) at start + (ph, pw) * bin + (i + 0.5) * bin / grid;
  output = the mean over the gh * gw samples (divided by max(gh * gw, 1)) of the bilinear value there.
Bilinear value at (y, x): 0 when y < -1, y > H, x < -1 or x > W (outside the map by more than a pixel);
otherwise y, x are clamped to >= 0, and a coordinate at or past the last row / column reads that row /
column alone.

The implementation is separable: the bilinear weight of a sample is wy(y) * wx(x) and its validity is
valid(y) * valid(x), so the mean over a bin's samples is Ay[ph, :] F Ax[pw, :]^T with Ay[ph, h] = (1 / gh)
sum_iy wy(y_iy, h) (and Ax alike, the 1 / (gh * gw) split between them). One einsum per box set instead of
a gather of 4 corners per sample; the sums run in another order than torchvision's (fp32 rounding only).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import nn

IntOr2 = Union[int, Sequence[int]]


def _pair(v: IntOr2) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _axis_weights(start: torch.Tensor, size: torch.Tensor, bins: int, grid: torch.Tensor, length: int,
                  max_grid: int) -> torch.Tensor:
    """[K, bins, length]: the mean over each bin's samples of their bilinear weights on each row (or column).

    start, size: [K] box start and (clamped) size in feature-map pixels; grid: [K] samples per bin (int64)."""
    k = start.shape[0]
    bin_size = size / bins
    i = torch.arange(max_grid, dtype=start.dtype, device=start.device)
    p = torch.arange(bins, dtype=start.dtype, device=start.device)
    g = grid.clamp(min=1).to(start.dtype)
    # [K, bins, max_grid] sample coordinates
    coord = start[:, None, None] + p[None, :, None] * bin_size[:, None, None] \
        + (i[None, None, :] + 0.5) * (bin_size / g)[:, None, None]
    in_grid = i[None, None, :] < grid[:, None, None]
    valid = in_grid & (coord >= -1.0) & (coord <= length)
    coord = coord.clamp(min=0.0)
    low = coord.floor().long()
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(coord), coord - low.to(coord.dtype))
    scale = valid.to(coord.dtype) / g[:, None, None]
    weights = torch.zeros((k, bins, length), dtype=coord.dtype, device=coord.device)
    weights.scatter_add_(2, low.clamp(0, length - 1), (1.0 - frac) * scale)
    weights.scatter_add_(2, high.clamp(0, length - 1), frac * scale)
    return weights


def roi_align(
    x: torch.Tensor,
    boxes: torch.Tensor,
    output_size: IntOr2,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """torchvision.ops.roi_align: x [N, C, H, W], boxes [K, 5] (batch index, x1, y1, x2, y2 in input pixels)
    -> [K, C, PH, PW] in x's dtype (computed in fp32, or fp64 for fp64 input). K = 0 gives an empty result."""
    if x.dim() != 4:
        raise ValueError(f"roi_align: x: expected [N, C, H, W], got {tuple(x.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"roi_align: boxes: expected [K, 5] (batch index, x1, y1, x2, y2), got {tuple(boxes.shape)}")
    ph, pw = _pair(output_size)
    n, c, h, w = x.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    k = boxes.shape[0]
    if k == 0:
        return x.new_zeros((0, c, ph, pw))
    b = boxes[:, 0].to(torch.int64)
    coords = boxes[:, 1:].to(compute) * spatial_scale - (0.5 if aligned else 0.0)
    x1, y1, x2, y2 = coords.unbind(1)
    width, height = x2 - x1, y2 - y1
    if not aligned:  # torchvision: "force malformed ROIs to be 1x1"
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((k,), int(sampling_ratio), dtype=torch.int64, device=x.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(height / ph).to(torch.int64).clamp(min=0)
        grid_w = torch.ceil(width / pw).to(torch.int64).clamp(min=0)
    max_h = max(int(grid_h.max()), 1)
    max_w = max(int(grid_w.max()), 1)
    ay = _axis_weights(y1, height, ph, grid_h, h, max_h)  # [K, PH, H]
    ax = _axis_weights(x1, width, pw, grid_w, w, max_w)   # [K, PW, W]
    feats = x.to(compute)[b]                              # [K, C, H, W]
    out = torch.einsum("kph,kchw,kqw->kcpq", ay, feats, ax)
    return out.to(x.dtype)


class RoIAlign(nn.Module):
    """torchvision.ops.RoIAlign's module form: RoIAlign(output_size, spatial_scale, sampling_ratio, aligned)(x,
    boxes); boxes [K, 5] or a list of [K_i, 4] per image (torchvision's two conventions)."""

    def __init__(self, output_size: IntOr2, spatial_scale: float, sampling_ratio: int, aligned: bool = False) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, x: torch.Tensor, boxes) -> torch.Tensor:
        if isinstance(boxes, (list, tuple)):
            boxes = boxes_with_index(boxes)
        return roi_align(x, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


def boxes_with_index(per_image: Sequence[torch.Tensor]) -> torch.Tensor:
    """[K_i, 4] boxes per image -> one [sum K_i, 5] tensor with the image index in column 0."""
    rows = [torch.cat([torch.full((len(bx), 1), i, dtype=bx.dtype, device=bx.device), bx], dim=1)
            for i, bx in enumerate(per_image)]
    return torch.cat(rows, dim=0) if rows else torch.zeros((0, 5))
