"""What a checkpoint holds, read from its keys and shapes: the architecture, the class count, the preset of
its family; and PyTorchVideo model objects turned into reference models."""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, NamedTuple, Optional

import torch

from slowfast_reference.models import SlowFast

from ..presets import preset_for
from .files import CheckpointError
from .formats import read_state_dict
from .loading import _plan, _summary, load_checkpoint

class ArchInfo(NamedTuple):
    """What a checkpoint holds: the reference architecture (a slowfast_reference factory name), the key
    layout, the number of classes of its classifier, where it came from, and the preset it implies."""

    arch: str
    format: str
    num_classes: int
    source: str
    preset: str = "pyslowfast"   # the test preset the weights imply (slowfast_kernels.presets.preset_for)


_HEAD_WEIGHT_KEY = {
    "pytorchvideo": re.compile(r"blocks\.\d+\.proj\.weight"),
    "pyslowfast": re.compile(r"head\.projection\.weight"),
    "pyslowfast-caffe2": re.compile(r"pred_w"),
    "mmaction2": re.compile(r"cls_head\.fc_cls\.weight"),
}


def _num_classes(state: Mapping[str, Any], fmt: str) -> Optional[int]:
    for key, value in state.items():
        if _HEAD_WEIGHT_KEY[fmt].fullmatch(key):
            return int(value.shape[0])
    return None


# The most common checkpoints first: detection stops at the first architecture that fits.
_DETECTION_ORDER = ("slowfast_r50_8x8", "slowfast_r50_4x16", "slow_r50_8x8", "slowfast_r101_8x8", "slowfast_r101_16x8")


def _problems_as(arch: str, state: Dict[str, Any], fmt: str, num_classes: int):
    from slowfast_reference.models import build_model

    # Meta tensors: shapes without memory or initialisation (an R101 in milliseconds).
    with torch.device("meta"):
        model = build_model(arch, num_classes=num_classes).eval()
    _, problems, _, _ = _plan(model, state, fmt)
    return problems


def detect_arch(path_or_state_dict: Any, format: str = "auto", *, weights_only: bool = True,
                strict: bool = True) -> ArchInfo:
    """The architecture a checkpoint holds, read from its keys and shapes (nothing is loaded).

    The key layout gives the block counts per stage (R50: 3, 4, 6, 3; R101: 3, 4, 23, 3) and whether a
    Fast pathway exists (Slow-only); the lateral conv's temporal kernel separates R50 8x8 (7) from R50 4x16
    (5), conv a's temporal kernels in res4 R101 8x8 (all 23 blocks) from R101 16x8 (6 blocks). alpha and
    the clip length have no weights: each is the one of the released model with those weights.
    path_or_state_dict: anything load_checkpoint takes. Raises CheckpointError naming the closest known
    architecture (and its first problem keys) when none matches every key and shape; strict=False returns
    that closest architecture instead (for a non-strict load).
    """
    state, fmt, source = read_state_dict(path_or_state_dict, format, weights_only=weights_only)
    num_classes = _num_classes(state, fmt) or 400
    scored = []
    for arch in _DETECTION_ORDER:
        problems = _problems_as(arch, state, fmt, num_classes)
        if not any(problems):
            return ArchInfo(arch, fmt, num_classes, source, preset_for(fmt, num_classes, source))
        scored.append((sum(len(p) for p in problems), arch, problems))
    _, arch, (missing, unexpected, mismatched) = min(scored, key=lambda x: (x[0], x[1]))
    if not strict:
        return ArchInfo(arch, fmt, num_classes, source, preset_for(fmt, num_classes, source))
    named = "; ".join(f"{title}: {_summary(items)}" for title, items in
                      (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if items)
    raise CheckpointError(
        f"{source} ({fmt} layout) holds none of the known architectures ({', '.join(_DETECTION_ORDER)}); the "
        f"closest, {arch}, differs in {len(missing)} missing, {len(unexpected)} unexpected and {len(mismatched)} "
        f"shape-mismatched key(s) ({named})"
    )


def _pytorchvideo_head(model: torch.nn.Module) -> Dict[str, Any]:
    """build_model's head arguments (head_act, train_crop, head_pool) read from a PyTorchVideo-style model.

    The head pools are the AvgPool3d (fixed window: train_crop = 32 x its spatial size) or AdaptiveAvgPool3d
    (global) modules other than the head's output_pool; kernel sizes may be numpy ints."""
    kwargs: Dict[str, Any] = {}
    for name, module in model.named_modules():
        if name.endswith("output_pool"):
            continue
        if isinstance(module, torch.nn.AdaptiveAvgPool3d):
            kwargs["head_pool"] = "global"
        elif isinstance(module, torch.nn.AvgPool3d):
            kernel = module.kernel_size
            spatial = int(kernel[-1]) if isinstance(kernel, (tuple, list)) else int(kernel)
            kwargs.setdefault("train_crop", 32 * spatial)
        proj = getattr(module, "proj", None)
        if isinstance(proj, torch.nn.Linear) and hasattr(module, "activation"):
            act = module.activation
            if act is None:
                kwargs["head_act"] = None
            elif isinstance(act, torch.nn.Softmax):
                kwargs["head_act"] = "softmax"
            elif isinstance(act, torch.nn.Sigmoid):
                kwargs["head_act"] = "sigmoid"
            else:
                raise ValueError(f"{type(model).__name__}: head activation {type(act).__name__} has no counterpart "
                                 "in the reference (None, Softmax or Sigmoid)")
    return kwargs


def to_reference_model(model: torch.nn.Module, format: str = "auto") -> SlowFast:
    """A reference SlowFast computing what `model` computes: `model` itself when it is one, otherwise a new
    reference model of the architecture its weights hold (detect_arch), loaded with them.

    model: e.g. PyTorchVideo's ``slowfast_r50()`` / ``create_slowfast(...)`` / ``slow_r50()`` (any
    nn.Module whose state dict is in one of the known layouts). The head follows the model's: the fixed
    pool window (its AvgPool3d kernels, numpy ints accepted) or a global pool, softmax or no activation.
    The result is on the model's device and in its train/eval mode.
    """
    if isinstance(model, SlowFast):
        return model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected an nn.Module (e.g. a PyTorchVideo SlowFast), got {type(model).__name__}")
    from slowfast_reference.models import build_model

    state, fmt, source = read_state_dict(model, format)
    info = detect_arch(state, fmt)
    reference = build_model(info.arch, num_classes=info.num_classes, **_pytorchvideo_head(model))
    load_checkpoint(reference, state, format=fmt)
    param = next(iter(model.parameters()), None)
    if param is not None:
        reference = reference.to(param.device)
    return reference.train(model.training)


def preset_of(path_or_state_dict: Any, format: str = "auto", *, weights_only: bool = True) -> str:
    """The name of the test preset a checkpoint's weights imply (detect_arch(...).preset)."""
    return detect_arch(path_or_state_dict, format, weights_only=weights_only).preset
