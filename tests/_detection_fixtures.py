"""PyTorchVideo's own detection model for the detection tests, and small inputs with boxes.

PyTorchVideo's RoI head imports torchvision.ops.RoIAlign; torchvision has no build for this torch, so a
stub torchvision.ops whose RoIAlign is slowfast_reference.roi_align.RoIAlign stands in. That RoIAlign is
checked on its own in tests/test_roi_align.py, against hand-computed values and against a line-by-line
transcription of torchvision's CPU kernel; the comparisons with PyTorchVideo therefore check everything
else of the detector (module tree, keys, dilated res5, pools, head order).
"""
from __future__ import annotations

import contextlib
import sys
import types

import torch

import slowfast_reference as R
from slowfast_reference.roi_align import RoIAlign
from _checkpoint_fixtures import pytorchvideo_builders


@contextlib.contextmanager
def _roi_align_stub():
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            pass
    ops = sys.modules.get("torchvision.ops")
    stubbed = ops is None or getattr(ops, "__file__", None) is None  # not a real torchvision
    if ops is None:
        tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        tv.ops = ops
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
    if not stubbed:  # a real torchvision: PyTorchVideo runs its own RoIAlign
        yield
        return
    saved = getattr(ops, "RoIAlign", None)
    ops.RoIAlign = RoIAlign
    import pytorchvideo.models.head as head

    # create_res_roi_pooling_head bound `roi=RoIAlign` when the module was first imported (maybe the stub
    # of _checkpoint_fixtures, a bare object): point that default at the reference RoIAlign too.
    defaults = head.create_res_roi_pooling_head.__kwdefaults__
    saved_default = defaults["roi"]
    defaults["roi"] = RoIAlign
    try:
        yield
    finally:
        defaults["roi"] = saved_default
        if saved is not None:
            ops.RoIAlign = saved


def pytorchvideo_detector(t_slow: int, t_fast: int, num_classes: int = 80, **kwargs) -> torch.nn.Module:
    """create_slowfast_with_roi_head (the hub's slowfast_r50_detection) with temporal pools for T frames."""
    assert pytorchvideo_builders() is not None, "pytorchvideo (with fvcore) must be installed"
    with _roi_align_stub():
        from pytorchvideo.models.slowfast import create_slowfast_with_roi_head

        return create_slowfast_with_roi_head(
            head_pool_kernel_sizes=((t_slow, 1, 1), (t_fast, 1, 1)), model_num_class=num_classes, **kwargs)


def clip_and_boxes(n=2, t_fast=8, alpha=4, h=64, w=80, seed=1):
    """[slow, fast] for a small clip and boxes [K, 5] in input pixels: inside, across the border, tiny."""
    g = torch.Generator().manual_seed(seed)
    x = R.pack_pathways(torch.randn(n, 3, t_fast, h, w, generator=g), alpha)
    boxes = torch.tensor([
        [0, 4.0, 6.0, 40.0, 60.0],
        [0, 30.0, 2.0, 79.0, 50.0],
        [1, -10.0, 20.0, 30.0, 75.0],    # across the left and bottom border
        [1, 50.0, 50.0, 52.0, 51.0],     # smaller than one feature pixel
        [1, 0.0, 0.0, float(w), float(h)],
    ])
    return x, boxes[boxes[:, 0] < n]
