"""roi_align_pool: the RoI head's pooling of the detectors, every pathway in one op.

Per pathway [N, C_p, T_p, H, W]: the temporal pool (mean = AvgPool3d((T, 1, 1)), or max: MMAction2's
option), RoIAlign of every box to PH x PW bins (torchvision's sampling, see slowfast_reference.roi_align),
the max over the bins (MaxPool2d(PH) of the heads); the pathways concatenated: [K, sum C_p], the 2304-wide
feature of SlowFast R50 that the classifier reads. Inference only (no autograd).

Backends: cpu (csrc/cpu/roi_align_pool.cpp: the pooled map once per pathway, boxes in parallel), triton
(slowfast_kernels/triton/roi_align_pool.py: time pooled at the bilinear corners, no intermediate map),
reference (slowfast_reference.detection.pool_rois). The result is float32 whatever the input dtype: the
pools accumulate in fp32 and the classifier runs in fp32.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch

from slowfast_reference.detection import RoIHeadSpec, pool_rois

from .. import _ext
from ..backends import choose_backend

TEMPORAL_POOLS = ("avg", "max")
NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def roi_align_pool_ref(
    features: Sequence[torch.Tensor],
    boxes: torch.Tensor,
    output_size: Union[int, Tuple[int, int]] = (7, 7),
    spatial_scale: float = 1.0 / 16.0,
    sampling_ratio: int = 0,
    aligned: bool = False,
    temporal_pool: str = "avg",
) -> torch.Tensor:
    """Eager PyTorch: per pathway temporal pool, the reference RoIAlign, amax over the bins; concat."""
    ph, pw = _pair(output_size)
    spec = RoIHeadSpec((ph, pw), float(spatial_scale), int(sampling_ratio), bool(aligned), temporal_pool)
    return pool_rois(features, boxes.float(), spec)


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"roi_align_pool: output_size: expected an int or a pair of ints, got {v!r}")


def _check_inputs(features, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                  temporal_pool) -> Tuple[int, int]:
    where = "roi_align_pool: "
    if not isinstance(features, (list, tuple)) or not features:
        raise ValueError(f"{where}features: expected a non-empty list of [N, C, T, H, W] tensors, got "
                         f"{type(features).__name__}")
    first = features[0]
    for i, f in enumerate(features):
        if not isinstance(f, torch.Tensor) or f.dim() != 5:
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"{where}features[{i}]: expected a [N, C, T, H, W] tensor, got {got}")
        if not f.dtype.is_floating_point:
            raise ValueError(f"{where}features[{i}]: expected a floating-point tensor, got {f.dtype}")
        if f.device != first.device or f.dtype != first.dtype:
            raise ValueError(f"{where}features[{i}] is {f.dtype} on {f.device}, features[0] {first.dtype} on "
                             f"{first.device}: expected one dtype and device")
        if f.shape[0] != first.shape[0] or f.shape[3:] != first.shape[3:]:
            raise ValueError(f"{where}features[{i}] {tuple(f.shape)} and features[0] {tuple(first.shape)}: "
                             "N, H and W must match")
        if min(f.shape[2:]) < 1:
            raise ValueError(f"{where}features[{i}]: T, H and W must be >= 1, got {tuple(f.shape)}")
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"{where}boxes: expected a [K, 5] tensor (batch index, x1, y1, x2, y2), got {got}")
    if not boxes.dtype.is_floating_point:
        raise ValueError(f"{where}boxes: expected a floating-point tensor, got {boxes.dtype}")
    if boxes.device != first.device:
        raise ValueError(f"{where}boxes is on {boxes.device}, features on {first.device}: expected one device")
    ph, pw = _pair(output_size)
    if ph < 1 or pw < 1:
        raise ValueError(f"{where}output_size: expected positive sizes, got {(ph, pw)}")
    if not isinstance(spatial_scale, (int, float)) or not math.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"{where}spatial_scale: expected a positive finite number, got {spatial_scale!r}")
    if not isinstance(sampling_ratio, int) or isinstance(sampling_ratio, bool):
        raise ValueError(f"{where}sampling_ratio: expected an int (<= 0: adaptive), got {sampling_ratio!r}")
    if not isinstance(aligned, bool):
        raise ValueError(f"{where}aligned: expected a bool, got {aligned!r}")
    if temporal_pool not in TEMPORAL_POOLS:
        raise ValueError(f"{where}temporal_pool: expected one of {TEMPORAL_POOLS}, got {temporal_pool!r}")
    if boxes.shape[0]:
        if not torch.isfinite(boxes).all():
            raise ValueError(f"{where}boxes: expected finite coordinates, got NaN or inf")
        index = boxes[:, 0]
        bad = (index != index.floor()) | (index < 0) | (index >= first.shape[0])
        if bad.any():
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"{where}boxes: row {row} has batch index {float(index[row])}, expected an integer "
                             f"in [0, {first.shape[0]})")
    return ph, pw


def _empty_result(features: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
    return torch.empty((boxes.shape[0], sum(f.shape[1] for f in features)), dtype=torch.float32,
                       device=features[0].device)


def _fake(features, boxes, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, temporal_pool):
    return _empty_result(features, boxes)


if _ext.LOAD_ERROR is None and hasattr(torch.ops.slowfast_kernels, "roi_align_pool"):
    torch.library.register_fake("slowfast_kernels::roi_align_pool")(_fake)


@torch.library.custom_op("slowfast_kernels::roi_align_pool_triton", mutates_args=())
def roi_align_pool_triton(features: List[torch.Tensor], boxes: torch.Tensor, pooled_h: int, pooled_w: int,
                          spatial_scale: float, sampling_ratio: int, aligned: bool,
                          temporal_pool: str) -> torch.Tensor:
    from ..triton.roi_align_pool import _roi_align_pool_triton

    out = _empty_result(features, boxes)
    _roi_align_pool_triton(features, boxes, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned,
                           temporal_pool, out)
    return out


roi_align_pool_triton.register_fake(_fake)


@torch.compiler.assume_constant_result
def _choose_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    def native_support():
        if dtype not in NATIVE_DTYPES:
            return f"the kernels take float32, bfloat16 or float16, got {dtype}"
        return None

    checks = {"cpu": native_support, "cuda": native_support, "triton": native_support}
    # No CUDA C++ kernel: on CUDA the Triton one runs.
    priority = {"cuda": ("triton", "reference"), "cpu": ("cpu", "reference")}.get(torch.device(device).type)
    return choose_backend("roi_align_pool", backend, device, checks, priority=priority)


def roi_align_pool(
    features: Sequence[torch.Tensor],
    boxes: torch.Tensor,
    output_size: Union[int, Tuple[int, int]] = (7, 7),
    spatial_scale: float = 1.0 / 16.0,
    sampling_ratio: int = 0,
    aligned: bool = False,
    temporal_pool: str = "avg",
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """The RoI feature of every box: [K, sum C_p] float32.

    features: per pathway [N, C_p, T_p, H, W] (one dtype, device, N, H, W; any strides); boxes [K, 5] =
    (batch index, x1, y1, x2, y2) in input pixels (spatial_scale maps them to the feature map: 1/16 for the
    detectors' res5); output_size: RoIAlign's bins (7 for PyTorchVideo and PySlowFast, 8 for MMAction2);
    sampling_ratio <= 0: ceil(box size / bins) samples per bin side; aligned: the -0.5 pixel shift;
    temporal_pool: "avg" or "max" over T before the RoIAlign. K = 0 gives a [0, sum C_p] tensor.
    backend: auto | cpu | triton | reference (see slowfast_kernels.backends).
    """
    ph, pw = _check_inputs(features, boxes, output_size, spatial_scale, sampling_ratio, aligned, temporal_pool)
    features = list(features)
    chosen = _choose_backend(backend, features[0].device, features[0].dtype)
    if chosen == "reference":
        return roi_align_pool_ref(features, boxes, (ph, pw), spatial_scale, sampling_ratio, aligned, temporal_pool)
    rois = boxes.to(torch.float32).contiguous()
    args = (features, rois, ph, pw, float(spatial_scale), int(sampling_ratio), bool(aligned), temporal_pool)
    if chosen == "triton":
        return torch.ops.slowfast_kernels.roi_align_pool_triton(*args)
    return torch.ops.slowfast_kernels.roi_align_pool(*args)
