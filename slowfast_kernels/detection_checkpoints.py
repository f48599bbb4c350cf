"""AVA detector checkpoints: PyTorchVideo, PySlowFast and MMAction2 weights into a SlowFastDetector.

A detector's backbone has the weights of the classifier of its architecture (the dilated res5 changes no
shape), so its keys go through slowfast_kernels.checkpoints' tables; only the head differs:

- pytorchvideo (hub ``slowfast_r50_detection``, SLOWFAST_8x8_R50_DETECTION.pyth, ``{"model_state": ...}``):
  ``model.blocks.N...`` and ``detection_head.proj.weight`` [80, 2304]; res5 dilation 2, head "pytorchvideo".
- pyslowfast (``{"model_state": ...}``): the classifier's keys (``s1.pathway0_stem...``) and
  ``head.projection.weight`` [80, 2304]: the AVA configs without non-local blocks, SLOWFAST_32x2_R50_SHORT
  (R50, alpha 4, 32 frames) and its 4x16 / R101 kin; dilation 2 (RESNET.SPATIAL_DILATIONS [[2, 2]] in res5),
  head "pyslowfast" (aligned RoIAlign). Non-local checkpoints (``nonlocal`` keys) are refused by the key check.
- mmaction2 (``{"meta", "state_dict"}``): ``backbone.slow_path...`` and ``roi_head.bbox_head.fc_cls.weight``
  [81, 2304] (class 0 is the background); res5 spatial stride 1 without dilation (its AVA configs), head
  "mmaction2". Its RoI features concatenate Slow then Fast, so unlike its recognizer's fc no column is permuted.

Which layout a file uses comes from its keys; the architecture from their shapes (checkpoints.detect_arch).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, NamedTuple, Tuple

import torch

from slowfast_reference.detection import SlowFastDetector, detection_config
from slowfast_reference.models import SlowFast

from .checkpoints import (CheckpointError, detect_arch, export_state_dict, load_checkpoint, read_checkpoint_file,
                          unwrap_container)

DETECTION_FORMATS = ("pytorchvideo", "pyslowfast", "mmaction2")
DETECTION_HEAD_KEY = {"pytorchvideo": "detection_head.proj", "pyslowfast": "head.projection",
                      "mmaction2": "roi_head.bbox_head.fc_cls"}
CLASSIFIER_HEAD_KEY = {"pytorchvideo": "blocks.6.proj", "pyslowfast": "head.projection", "mmaction2": "cls_head.fc_cls"}
RES5_DILATION = {"pytorchvideo": 2, "pyslowfast": 2, "mmaction2": 1}
BACKBONE_BLOCKS = 5  # stem, res2..res5: what a detector and its classifier share


class DetectorInfo(NamedTuple):
    """What a detector checkpoint holds: the architecture, the key layout, the head's outputs, the source."""

    arch: str
    format: str
    num_classes: int
    source: str


def detection_format(state: Mapping[str, Any]) -> str:
    """The layout of a detector state dict, from its head keys."""
    for fmt in DETECTION_FORMATS:
        if f"{DETECTION_HEAD_KEY[fmt]}.weight" in state:
            return fmt
    sample = ", ".join(repr(k) for k in list(state)[:5]) or "no keys"
    raise CheckpointError(f"no detection head in the keys ({sample}): expected one of "
                          f"{[DETECTION_HEAD_KEY[f] + '.weight' for f in DETECTION_FORMATS]}")


def read_detector_state(path_or_state_dict: Any, format: str = "auto", *,
                        weights_only: bool = True) -> Tuple[Dict[str, Any], str, str]:
    """(flat state dict, layout, source) of a detector checkpoint file or loaded object ("module." removed)."""
    if format not in ("auto",) + DETECTION_FORMATS:
        raise ValueError(f"format must be one of {('auto',) + DETECTION_FORMATS}, got {format!r}")
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = f"checkpoint {os.fspath(path_or_state_dict)!r}"
        obj = read_checkpoint_file(path_or_state_dict, "auto", weights_only)
    elif isinstance(path_or_state_dict, torch.nn.Module):
        source, obj = f"{type(path_or_state_dict).__name__} model", path_or_state_dict.state_dict()
    elif isinstance(path_or_state_dict, Mapping):
        source, obj = "state dict", path_or_state_dict
    else:
        raise TypeError("path_or_state_dict: expected a file path, a state dict or a model, got "
                        f"{type(path_or_state_dict).__name__}")
    state = dict(unwrap_container(obj, source))
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    found = detection_format(state)
    if format != "auto" and format != found:
        raise CheckpointError(f"{source}: format={format!r} was asked for, but the head keys are {found}'s")
    return state, found, source


def _classifier_state(state: Dict[str, Any], fmt: str) -> Dict[str, Any]:
    """The detector's keys renamed to its classifier's (same layout), head included."""
    head, cls_head = DETECTION_HEAD_KEY[fmt], CLASSIFIER_HEAD_KEY[fmt]
    out: Dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(head + "."):
            key = cls_head + key[len(head):]
        elif fmt == "pytorchvideo" and key.startswith("model."):
            key = key[len("model."):]
        out[key] = value
    return out


def detect_detector_arch(path_or_state_dict: Any, format: str = "auto", *, weights_only: bool = True) -> DetectorInfo:
    """The architecture and layout a detector checkpoint holds, from its keys and shapes (nothing is loaded)."""
    state, fmt, source = read_detector_state(path_or_state_dict, format, weights_only=weights_only)
    info = detect_arch(_classifier_state(state, fmt), fmt)
    if info.arch == "slow_r50_8x8":
        raise CheckpointError(f"{source}: a Slow-only detector; the detectors here are two-pathway SlowFast models")
    return DetectorInfo(info.arch, fmt, info.num_classes, source)


def load_detector(path_or_state_dict: Any, format: str = "auto", strict: bool = True, *,
                  weights_only: bool = True) -> SlowFastDetector:
    """A reference SlowFastDetector (eval mode) with a checkpoint's weights, its architecture, head and res5
    dilation those of the checkpoint's framework (see the module docstring)."""
    state, fmt, source = read_detector_state(path_or_state_dict, format, weights_only=weights_only)
    info = detect_detector_arch(state, fmt)
    config = detection_config(info.arch, RES5_DILATION[fmt])
    classifier = SlowFast(config, num_classes=info.num_classes)
    load_checkpoint(classifier, _classifier_state(state, fmt), fmt, strict=strict)
    detector = SlowFastDetector(config, num_classes=info.num_classes, head=fmt)
    for i in range(BACKBONE_BLOCKS):  # the loaded modules themselves: MMAction2's bare laterals stay bare
        detector.model.blocks[i] = classifier.blocks[i]
    head = DETECTION_HEAD_KEY[fmt]
    with torch.no_grad():
        for name in ("weight", "bias"):
            value = state[f"{head}.{name}"]
            getattr(detector.detection_head.proj, name).copy_(torch.as_tensor(value))
    return detector.eval()


def export_detector_state_dict(detector: SlowFastDetector, format: str) -> Dict[str, Any]:
    """The detector's weights in `format`'s detector layout (the inverse of load_detector)."""
    if format not in DETECTION_FORMATS:
        raise ValueError(f"format must be one of {DETECTION_FORMATS}, got {format!r}")
    if not isinstance(detector, SlowFastDetector):
        raise TypeError(f"detector: expected a SlowFastDetector, got {type(detector).__name__}")
    classifier = SlowFast(detector.config, num_classes=detector.num_classes)
    for i in range(BACKBONE_BLOCKS):
        classifier.blocks[i] = detector.model.blocks[i]
    lateral = classifier.blocks[0].multipathway_fusion
    classifier.lateral_norm = lateral.norm is not None
    sd = export_state_dict(classifier, format)
    cls_head, head = CLASSIFIER_HEAD_KEY[format], DETECTION_HEAD_KEY[format]
    out: Dict[str, Any] = {}
    for key, value in sd.items():
        if key.startswith(cls_head + "."):
            continue
        out[("model." + key) if format == "pytorchvideo" else key] = value
    out[f"{head}.weight"] = detector.detection_head.proj.weight
    out[f"{head}.bias"] = detector.detection_head.proj.bias
    return out
