"""roi_align_pool: every backend that runs here against the reference (slowfast_reference.detection.pool_rois)
on odd shapes and box sets (none, across the border, outside, zero-area, many per frame), fp32 and bf16, any
strides; torch.library.opcheck of the native and Triton ops; bad input. The Triton cases are few and small:
the interpreter runs the bin and sample loops in Python."""
import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels.backends import backend_unavailable_reason
from slowfast_kernels.ops.roi_align_pool import roi_align_pool_ref

from conftest import cpu_backends
from test_roi_align import random_boxes

CPU_BACKENDS = [p.values[0] if hasattr(p, "values") else p for p in cpu_backends()]


def _skip_unless(backend):
    why = backend_unavailable_reason(backend, torch.device("cpu"), "roi_align_pool" if backend == "cpu" else None)
    if why is not None:
        pytest.skip(f"{backend}: {why}")


def make(n=2, cs=5, cf=3, ts=2, alpha=4, h=6, w=7, k=6, scale=0.25, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    slow = torch.randn(n, cs, ts, h, w, generator=g).to(dtype)
    fast = torch.randn(n, cf, ts * alpha, h, w, generator=g).to(dtype)
    return [slow, fast], random_boxes(k, n, h, w, scale, g)


def check(backend, feats, boxes, size, scale, ratio, aligned, temporal="avg"):
    expected = roi_align_pool_ref([f.float() for f in feats], boxes, size, scale, ratio, aligned, temporal)
    actual = sk.roi_align_pool(feats, boxes, size, scale, ratio, aligned, temporal, backend=backend)
    assert actual.dtype == torch.float32 and actual.shape == (len(boxes), sum(f.shape[1] for f in feats))
    # both compute in fp32 from the same values (bf16 inputs too): only the summation order differs
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


# (size, scale, sampling_ratio, aligned, temporal): PyTorchVideo's, PySlowFast's and MMAction2's settings on
# odd sizes, a fixed sampling ratio, the temporal max
CPU_CASES = [((7, 7), 0.25, 0, False, "avg"), ((3, 2), 0.5, 0, True, "avg"), ((8, 8), 0.25, 0, True, "max"),
             ((2, 5), 1.0, 2, False, "avg"), ((1, 1), 0.25, -1, True, "max")]


@pytest.mark.parametrize("case", CPU_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_matches_reference(case, dtype):
    _skip_unless("cpu")
    feats, boxes = make(dtype=dtype, k=9)
    check("cpu", feats, boxes, *case)


@pytest.mark.parametrize("temporal", ["avg", "max"])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_keeps_nan(backend, temporal):
    """A NaN feature value that a box's samples read makes that box's channel NaN, through the temporal max
    and the max over the bins (torch's max keeps NaN; std::max and the GPU's max drop it); a box whose samples
    do not reach it stays finite (torchvision reads only the 4 corners of each sample; the reference's
    separable einsum would spread it over the image, so it is not compared here)."""
    _skip_unless(backend)
    feats = [torch.rand(1, 4, 3, 8, 8), torch.rand(1, 2, 6, 8, 8)]
    feats[0][0, 1, 2, 1, 1] = float("nan")  # the last frame: the temporal max meets it after finite values
    feats[1][0, 0, 5, 1, 1] = float("nan")
    boxes = torch.tensor([[0, 0.0, 0.0, 4.0, 4.0], [0, 5.0, 5.0, 8.0, 8.0]])
    out = sk.roi_align_pool(feats, boxes, (2, 2), 1.0, 2, False, temporal, backend=backend)
    assert out[0, [1, 4]].isnan().all() and not out[0, [0, 2, 3, 5]].isnan().any()
    assert not out[1].isnan().any()


def test_cpu_strides_many_boxes_and_r50_widths():
    _skip_unless("cpu")
    feats, _ = make(n=2, cs=2048, cf=256, ts=2, h=4, w=5, k=2)
    g = torch.Generator().manual_seed(5)
    boxes = random_boxes(40, 1, 4, 5, 1 / 16, g)  # 40 boxes on one frame
    feats = [f.contiguous(memory_format=torch.channels_last_3d) for f in feats]
    check("cpu", feats, boxes, (7, 7), 1 / 16, 0, False)
    check("cpu", [f.transpose(3, 4).contiguous().transpose(3, 4) for f in feats], boxes, (7, 7), 1 / 16, 0, True)


@pytest.mark.parametrize("dtype,aligned,temporal", [(torch.float32, False, "avg"), (torch.bfloat16, True, "max")])
def test_triton_matches_reference(dtype, aligned, temporal):
    _skip_unless("triton")
    feats, boxes = make(cs=3, cf=2, ts=1, alpha=3, h=5, w=4, k=4, dtype=dtype)
    feats[1] = feats[1].contiguous(memory_format=torch.channels_last_3d)
    check("triton", feats, boxes, (2, 3), 0.25, 0, aligned, temporal)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_and_single_pathway(backend):
    _skip_unless(backend)
    feats, boxes = make(cs=3, cf=2, h=3, w=3, k=3)
    out = sk.roi_align_pool(feats, boxes[:0], 2, 0.25, backend=backend)
    assert out.shape == (0, 5) and out.dtype == torch.float32
    check(backend, feats[:1], boxes[2:3], (1, 2), 0.25, 1, False)  # the zero-area-free box, one pathway


@pytest.mark.parametrize("op", ["native", "triton"])
def test_opcheck(op):
    backend = "cpu" if op == "native" else "triton"
    _skip_unless(backend)
    feats, boxes = make(n=1, cs=2, cf=1, ts=1, alpha=2, h=3, w=3, k=2)
    boxes[:, 0] = 0
    name = "roi_align_pool" if op == "native" else "roi_align_pool_triton"
    args = (feats, boxes.contiguous(), 1, 2, 0.25, 0, False, "avg")
    torch.library.opcheck(getattr(torch.ops.slowfast_kernels, name).default, args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(features=[]), "features: expected a non-empty list"),
    (dict(features=[torch.zeros(1, 2, 3, 4)]), "features\\[0\\]: expected a \\[N, C, T, H, W\\]"),
    (dict(features=[torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 2, 1, 4, 5)]), "features\\[1\\].*N, H and W"),
    (dict(features=[torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 2, 1, 4, 4, dtype=torch.float64)]), "one dtype"),
    (dict(boxes=torch.zeros(2, 4)), "boxes: expected a \\[K, 5\\]"),
    (dict(boxes=torch.tensor([[1.0, 0, 0, 1, 1]])), "boxes: row 0 has batch index 1.0"),
    (dict(boxes=torch.tensor([[0.5, 0, 0, 1, 1]])), "boxes: row 0 has batch index 0.5"),
    (dict(boxes=torch.tensor([[0.0, 0, float("nan"), 1, 1]])), "boxes: expected finite"),
    (dict(output_size=0), "output_size: expected positive"),
    (dict(output_size=(7,)), "output_size: expected an int or a pair"),
    (dict(spatial_scale=0.0), "spatial_scale: expected a positive"),
    (dict(sampling_ratio=1.5), "sampling_ratio: expected an int"),
    (dict(aligned=1), "aligned: expected a bool"),
    (dict(temporal_pool="mean"), "temporal_pool: expected one of"),
])
def test_bad_input(kwargs, match):
    args = dict(features=[torch.zeros(1, 2, 1, 4, 4)], boxes=torch.tensor([[0.0, 0, 0, 2, 2]]), output_size=2,
                spatial_scale=1.0, sampling_ratio=0, aligned=False, temporal_pool="avg")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sk.roi_align_pool(**args)
