"""Detector checkpoints in the PyTorchVideo, PySlowFast and MMAction2 layouts (state dicts generated from the
reference detectors, written in each framework's file container): keys loaded, architecture detected."""
import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels.checkpoints import CheckpointError
from slowfast_kernels.detection_checkpoints import (detect_detector_arch, export_detector_state_dict, load_detector,
                                                    read_detector_state)
from slowfast_reference.detection import build_detector
from _checkpoint_fixtures import randomize
from _detection_fixtures import pytorchvideo_detector

CONTAINER = {
    "pytorchvideo": lambda sd: {"model_state": sd},
    "pyslowfast": lambda sd: {"epoch": 20, "model_state": sd, "optimizer_state": {},
                              "cfg": "DETECTION:\n  ENABLE: True\n"},
    "mmaction2": lambda sd: {"meta": {"epoch": 20, "mmaction_version": "1.2.0"}, "state_dict": sd},
}
KEYS = {"pytorchvideo": ("model.blocks.0.multipathway_blocks.0.conv.weight", "detection_head.proj.weight"),
        "pyslowfast": ("s1.pathway0_stem.conv.weight", "head.projection.weight"),
        "mmaction2": ("backbone.slow_path.conv1.conv.weight", "roi_head.bbox_head.fc_cls.weight")}


@pytest.mark.parametrize("fmt,arch,num_classes", [
    ("pytorchvideo", "slowfast_r50_8x8", 80),
    ("pyslowfast", "slowfast_r50_4x16", 80),
    ("mmaction2", "slowfast_r50_8x8", 81),
])
def test_round_trip_through_each_layout(tmp_path, fmt, arch, num_classes):
    source = randomize(build_detector(arch, head=fmt, num_classes=num_classes).eval())
    sd = export_detector_state_dict(source, fmt)
    assert all(k in sd for k in KEYS[fmt]), sorted(sd)[:5]
    path = tmp_path / f"detector_{fmt}.pth"
    torch.save(CONTAINER[fmt](sd), path)
    info = detect_detector_arch(path)
    assert (info.arch, info.format, info.num_classes) == (arch, fmt, num_classes)
    loaded = load_detector(path)
    assert loaded.head_type == fmt and loaded.config.res5_dilation == (1 if fmt == "mmaction2" else 2)
    ours, theirs = loaded.state_dict(), source.state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_pytorchvideo_model_object():
    """PyTorchVideo's own detector (the hub's SLOWFAST_8x8_R50_DETECTION.pyth layout): {"model_state": its
    state dict} loads, every tensor where PyTorchVideo has it."""
    theirs = randomize(pytorchvideo_detector(8, 32))
    state = {"model_state": theirs.state_dict()}
    assert detect_detector_arch(state).arch == "slowfast_r50_8x8"
    loaded = load_detector(state).state_dict()
    for key, value in theirs.state_dict().items():
        assert torch.equal(loaded[key], value), key
    fused = sk.fuse_detector(theirs.eval())  # the model object itself
    assert torch.equal(fused.head_weight, theirs.detection_head.proj.weight)


def test_bad_checkpoints():
    sd = export_detector_state_dict(build_detector(), "pytorchvideo")
    with pytest.raises(CheckpointError, match="no detection head in the keys"):
        read_detector_state({k: v for k, v in sd.items() if not k.startswith("detection_head")})
    with pytest.raises(CheckpointError, match="format='mmaction2' was asked for"):
        read_detector_state(sd, "mmaction2")
    with pytest.raises(ValueError, match="format must be one of"):
        read_detector_state(sd, "caffe2")
    broken = dict(sd)
    broken["model.blocks.1.multipathway_blocks.0.res_blocks.0.branch2.conv_a.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError):
        load_detector(broken)
