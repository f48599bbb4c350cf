"""AVA detection: the RoI head (roi_align_pool) at SlowFast R50 res5 shapes, and the detector end to end
(clips/s, boxes/s), fused against the eager reference in the same run.

Head: batch 1 at 256x320 (res5 16x20, Slow [1, 2048, 8], Fast [1, 256, 32]), 4 and 32 boxes; baseline "eager"
is PyTorchVideo's head as the reference runs it (AvgPool3d per pathway, concat, RoIAlign 7x7, MaxPool2d).
Detector: one 32-frame clip at 256x320 with 8 boxes, fp32 on CPU, bf16 on CUDA.

Run: python -m pytest benchmarks/bench_detect.py   (the end-to-end cases take minutes on a 2-core CPU)
"""
from __future__ import annotations

import copy

import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels.backends import backend_unavailable_reason
from slowfast_reference import pack_pathways
from slowfast_reference.detection import build_detector

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
H, W = 256, 320
HEAD_IMPLS = ["eager", "cpu"] if DEVICE == "cpu" else ["eager", "triton"]


def _boxes(k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([W * 0.7, H * 0.7])
    wh = (torch.rand(k, 2, generator=g) * 0.25 + 0.05) * torch.tensor([W, H])
    return torch.cat([torch.zeros(k, 1), xy, xy + wh], dim=1).to(DEVICE)


@pytest.mark.parametrize("num_boxes", [4, 32])
@pytest.mark.parametrize("impl", HEAD_IMPLS)
def test_roi_head(measure, impl, num_boxes):
    if impl != "eager" and backend_unavailable_reason(impl, torch.device(DEVICE), "roi_align_pool" if impl == "cpu"
                                                      else None):
        pytest.skip(f"{impl} cannot run here")
    g = torch.Generator(device=DEVICE).manual_seed(0)
    cl = torch.channels_last_3d
    slow = torch.randn(1, 2048, 8, H // 16, W // 16, device=DEVICE, generator=g).to(DTYPE).contiguous(memory_format=cl)
    fast = torch.randn(1, 256, 32, H // 16, W // 16, device=DEVICE, generator=g).to(DTYPE).contiguous(memory_format=cl)
    boxes = _boxes(num_boxes)
    backend = "reference" if impl == "eager" else impl
    measure(f"roi head R50 res5 {H}x{W}, {num_boxes} boxes", impl,
            lambda: sk.roi_align_pool([slow, fast], boxes, 7, 1 / 16, 0, False, backend=backend),
            baseline=impl == "eager", device=DEVICE, boxes=num_boxes)


@pytest.fixture(scope="module")
def detector():
    return build_detector().eval().to(DEVICE)


@pytest.mark.parametrize("impl", ["eager", "fused"])
def test_detector(measure, detector, impl):
    g = torch.Generator().manual_seed(0)
    x = [t.to(DEVICE) for t in pack_pathways(torch.randn(1, 3, 32, H, W, generator=g), 4)]
    boxes = _boxes(8)
    if impl == "eager":
        model = copy.deepcopy(detector).to(DTYPE)
        x = [t.to(DTYPE) for t in x]
    else:
        model = sk.fuse_detector(detector.float(), dtype=DTYPE)

    def run():
        with torch.no_grad():
            return model(x, boxes)

    measure(f"detector R50 8x8 {H}x{W}, 8 boxes", impl, run, baseline=impl == "eager", device=DEVICE,
            rounds=3, boxes=8)
