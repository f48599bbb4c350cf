"""The reference detectors (slowfast_reference.detection) against PyTorchVideo's create_slowfast_with_roi_head
(same weights, same boxes), the PySlowFast and MMAction2 heads against transcriptions of theirs, and bad input.

PyTorchVideo's RoI head runs the reference RoIAlign through a stub torchvision.ops (see _detection_fixtures)."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import slowfast_reference as R
from slowfast_reference.detection import HEAD_SPECS, PathwayRoIHead, build_detector, detection_config, pool_rois
from slowfast_reference.roi_align import roi_align
from _checkpoint_fixtures import randomize
from _detection_fixtures import clip_and_boxes, pytorchvideo_detector


@pytest.fixture(scope="module")
def models():
    """PyTorchVideo's detector with random weights (classifier scaled: scores of order 0.5, not 0 or 1), ours
    with its weights, a clip with boxes and our res5 features of it."""
    theirs = pytorchvideo_detector(2, 8).eval()
    randomize(theirs)
    with torch.no_grad():
        theirs.detection_head.proj.weight.mul_(5e-4)
        theirs.detection_head.proj.bias.sub_(1.0)
    ours = build_detector("slowfast_r50_8x8").eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())  # same tree, same keys, same order
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x, boxes = clip_and_boxes(h=48, w=64)
    with torch.no_grad():
        feats = ours.backbone(x)
        scores = ours(x, boxes)
    return theirs, ours, x, boxes, feats, scores


def test_matches_pytorchvideo(models):
    theirs, ours, x, boxes, feats, actual = models
    for name in ("detection_head.roi_layer", "detection_head.pool_spatial", "detection_head.activation"):
        assert type(ours.get_submodule(name)).__name__ == type(theirs.get_submodule(name)).__name__, name
    with torch.no_grad():
        expected = theirs([t.clone() for t in x], boxes.clone())
        empty = ours.detection_head(ours.model.blocks[5](list(feats)), torch.zeros(0, 5))
    assert empty.flatten(1).shape == (0, 80)
    assert actual.shape == (len(boxes), 80)
    assert ((expected > 0.02) & (expected < 0.98)).float().mean() > 0.8  # informative, not saturated
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    # the dilated res5 keeps 1/16 of the input
    assert [tuple(f.shape[2:]) for f in feats] == [(2, 3, 4), (8, 3, 4)]
    # pool_rois + the classifier is the head
    scores = torch.sigmoid(ours.detection_head.proj(pool_rois(feats, boxes, ours.spec)))
    torch.testing.assert_close(scores, actual, atol=1e-6, rtol=1e-6)


def _pathway_head(ours, spec, num_classes=80, seed=0):
    head = PathwayRoIHead(2304, num_classes, spec, 0.5, "sigmoid").eval()
    if num_classes == 80:
        head.proj.load_state_dict(ours.detection_head.proj.state_dict())
    else:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            head.proj.weight.copy_(torch.randn(num_classes, 2304, generator=g) * 5e-4)
    return head


def test_pyslowfast_head(models):
    """PySlowFast's per-pathway head: the same function as PyTorchVideo's at the same alignment (RoIAlign is
    per channel); its own default, aligned=True, gives other scores."""
    _, ours, x, boxes, feats, ptv = models
    spec = HEAD_SPECS["pyslowfast"]
    assert spec.aligned
    with torch.no_grad():
        same = _pathway_head(ours, dataclasses.replace(spec, aligned=False))(feats, boxes)
        aligned = _pathway_head(ours, spec)(feats, boxes)
    torch.testing.assert_close(same, ptv, atol=1e-6, rtol=1e-6)
    assert (aligned - ptv).abs().max() > 1e-4


def mmaction2_forward(feats, boxes, fc, temporal):
    """SingleRoIExtractor3D (RoIAlign 8x8, aligned) + BBoxHeadAVA (avg time, max space) as MMAction2 writes them."""
    max_t = max(f.shape[2] for f in feats)
    feats = [F.interpolate(f, (max_t,) + tuple(feats[0].shape[3:])) for f in feats]
    feats = [f.mean(2, keepdim=True) if temporal == "avg" else f.max(2, keepdim=True)[0] for f in feats]
    feat = torch.cat(feats, dim=1)
    roi = torch.stack([roi_align(feat[:, :, t], boxes, 8, 1 / 16, 0, True) for t in range(feat.shape[2])], dim=2)
    roi = torch.nn.AdaptiveMaxPool3d((None, 1, 1))(torch.nn.AdaptiveAvgPool3d((1, None, None))(roi))
    return torch.sigmoid(fc(roi.flatten(1)))


@pytest.mark.parametrize("temporal", ["avg", "max"])
def test_mmaction2_head(models, temporal):
    _, ours, _, boxes, feats, _ = models
    spec = dataclasses.replace(HEAD_SPECS["mmaction2"], temporal_pool=temporal)
    assert (spec.resolution, spec.aligned) == ((8, 8), True)
    head = _pathway_head(ours, spec, num_classes=81)
    with torch.no_grad():
        expected = mmaction2_forward(feats, boxes, head.proj, temporal)
        actual = head(feats, boxes)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)


def test_pathway_detector_forward(models):
    """A whole pyslowfast-head detector on the same weights: its backbone output through its head."""
    theirs, ours = models[:2]
    model = build_detector(head="pyslowfast", aligned=False).eval()
    model.load_state_dict(theirs.state_dict())
    x, boxes = clip_and_boxes(n=1, h=32, w=48)
    with torch.no_grad():
        torch.testing.assert_close(model(x, boxes), ours(x, boxes), atol=1e-6, rtol=1e-6)


def test_bad_input(models):
    ours = models[1]
    with pytest.raises(ValueError, match="arch: the detectors are two-pathway"):
        detection_config("slow_r50_8x8")
    with pytest.raises(ValueError, match="head must be one of"):
        build_detector(head="detectron2")
    with pytest.raises(ValueError, match="temporal_pool: the pytorchvideo head"):
        build_detector(temporal_pool="max")
    x, _ = clip_and_boxes(n=1, h=32, w=32)
    with pytest.raises(ValueError, match="boxes: expected a \\[K, 5\\]"):
        ours(x, torch.zeros(3, 4))
    assert detection_config("slowfast_r50_8x8").res5_dilation == 2
    assert R.CONFIGS["slowfast_r50_8x8"].res5_dilation == 1  # the classifiers keep stride 2, dilation 1
