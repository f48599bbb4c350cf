"""fuse() of a reference SlowFastDetector (the dilated res5 through the fused conv paths, the head through
roi_align_pool) against the reference, on the CPU backend (the Triton backbone in the interpreter would take
minutes; the Triton head is checked in test_roi_align_pool.py)."""
import dataclasses

import pytest
import torch

import slowfast_kernels as sk
from slowfast_reference.detection import HEAD_SPECS, PathwayRoIHead, build_detector
from _checkpoint_fixtures import randomize
from _detection_fixtures import clip_and_boxes


@pytest.fixture(scope="module")
def detector():
    model = randomize(build_detector("slowfast_r50_8x8").eval())
    with torch.no_grad():
        model.detection_head.proj.weight.mul_(5e-4)
        model.detection_head.proj.bias.sub_(1.0)
    return model


def test_fused_detector_matches_reference(detector):
    model = detector
    fused = sk.fuse(model)
    assert isinstance(fused, sk.FusedSlowFastDetector)
    x, boxes = clip_and_boxes(h=32, w=48)
    with torch.no_grad():
        feats = model.backbone(x)
        expected = model.detection_head(model.model.blocks[5](list(feats)), boxes).flatten(1)
    actual = fused(x, boxes)
    assert ((expected > 0.02) & (expected < 0.98)).float().mean() > 0.8
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)

    # MMAction2's head (8x8 bins, aligned, temporal max) on the same features: the fused head's op arguments
    spec = dataclasses.replace(HEAD_SPECS["mmaction2"], temporal_pool="max")
    mm = PathwayRoIHead(2304, 80, spec, 0.5, "sigmoid").eval()
    mm.proj.load_state_dict(model.detection_head.proj.state_dict())
    fused.spec = spec
    with torch.no_grad():
        torch.testing.assert_close(fused.head(feats, boxes), mm(feats, boxes), atol=1e-5, rtol=1e-5)
        assert fused.head(feats, boxes[:0]).shape == (0, 80)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_detector_propagates_nan_like_the_reference(detector, dtype):
    """A NaN in one clip of the batch (the CPU forward checks its inputs once, as FusedSlowFast's) spreads
    over that clip's whole feature map; every box of it that samples the map is NaN, as in the reference
    (the bins' max keeps NaN), and the other clip's boxes stay finite and equal. Box 3 lies beyond the map
    (x1 * 1/16 > W): torchvision's RoIAlign reads no feature value for it, a 0, and so does roi_align_pool;
    the reference's separable einsum multiplies the NaN map by zero weights there (a NaN-only departure of
    the reference from torchvision), so that box is left out of the comparison."""
    x, boxes = clip_and_boxes(h=32, w=48)
    x = [t.clone() for t in x]
    x[1][1, :, 3, 10, 20] = float("nan")  # the Fast pathway of clip 1
    with torch.no_grad():
        expected = detector(x, boxes)
        actual = sk.fuse_detector(detector, dtype=dtype)(x, boxes)
    inside = torch.tensor([True, True, True, False, True])
    assert boxes[3, 1] / 16 > x[0].shape[-1] / 16  # box 3 starts past the 3-column feature map
    assert torch.equal(actual[inside].isnan(), expected[inside].isnan())
    assert actual[2].isnan().all() and actual[4].isnan().all() and not actual[3].isnan().any()
    clean = boxes[:, 0] == 0
    assert not expected[clean].isnan().any()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(actual[clean], expected[clean], atol=tol, rtol=tol)


def test_fuse_detector_bad_input(detector):
    with pytest.raises(TypeError, match="fuse_detector: model must be"):
        sk.fuse_detector(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="fuse_detector: model must be"):
        sk.fuse_detector("model.pyth")
    with pytest.raises(ValueError, match="dtype must be"):
        sk.fuse_detector(detector, dtype=torch.float64)
    fused = sk.fuse_detector(detector)
    x, _ = clip_and_boxes(n=1, h=32, w=32)
    with pytest.raises(ValueError, match="boxes: expected a \\[K, 5\\]"):
        fused(x, torch.zeros(2, 4))
    for bad in (0, 2.5, "4"):
        with pytest.raises(ValueError, match="fuse_detector: max_cached_shapes must be an int >= 1"):
            sk.fuse_detector(detector, max_cached_shapes=bad)


def test_fused_detector_keeps_the_last_shapes_and_releases_pushed_out_memory(detector, monkeypatch):
    """As FusedSlowFast: the runners of the last max_cached_shapes input signatures (boxes do not count), and a
    signature that pushes one out returns the buffer cache's idle blocks before and after its forward. Copies
    drop the runners and keep the bound; the outputs of a shape rebuilt after eviction are unchanged."""
    import pickle
    import sys

    from slowfast_kernels.plan import FoldedConv

    fuse_module = sys.modules["slowfast_kernels.fuse"]  # (the package's `fuse` attribute is the function)
    released, real = [], fuse_module.release_cpu_buffers
    monkeypatch.setattr(fuse_module, "release_cpu_buffers",
                        lambda trim=True: (released.append(trim), real(trim=trim))[1])
    fused = sk.fuse(detector, max_cached_shapes=2)
    assert isinstance(fused, sk.FusedSlowFastDetector) and fused.max_cached_shapes == 2
    shapes = [(32, 32), (32, 48), (32, 32), (48, 32)]  # the third is cached; the fourth pushes (32, 48) out
    outputs = {}
    with torch.no_grad():
        for i, (h, w) in enumerate(shapes):
            x, boxes = clip_and_boxes(n=1, h=h, w=w)
            y = fused(x, boxes[: 1 + i % 2])  # the box count varies: not part of the signature
            outputs.setdefault((h, w), y)
            assert released == ([False, True] if i == 3 else [])
        convs = [m for m in fused.modules() if isinstance(m, FoldedConv)]
        assert max(m.cached_shapes() for m in convs) == 2
        x, boxes = clip_and_boxes(n=1, h=32, w=48)
        torch.testing.assert_close(fused(x, boxes[:2]), outputs[(32, 48)], rtol=1e-6, atol=1e-6)  # rebuilt
        copy = pickle.loads(pickle.dumps(fused))
        assert copy.max_cached_shapes == 2 and not any(m._runners for m in copy.modules() if isinstance(m, FoldedConv))
        torch.testing.assert_close(copy(x, boxes[:2]), outputs[(32, 48)], rtol=1e-6, atol=1e-6)
