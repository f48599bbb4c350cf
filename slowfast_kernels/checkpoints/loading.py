"""load_checkpoint: every checkpoint tensor matched to a model tensor, or one error naming each key that
does not fit."""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Tuple

import torch

from slowfast_reference.lateral import FuseFastToSlow
from slowfast_reference.models import SlowFast

from ..presets import preset_for
from .formats import (_C2_SOLVER_BLOBS, _LATERAL_BN, FORMAT_CHOICES, _check_model, _head_permutation, _key_table,
                      _parse_ours, caffe2_to_pyslowfast, read_state_dict)

def _to_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(value))


def _plan(model: SlowFast, state: Dict[str, Any], fmt: str):
    """Match every checkpoint entry to a model tensor: (pairs, (missing, unexpected, mismatched), hints, bare)."""
    if fmt == "pyslowfast-caffe2":
        renamed: Dict[str, Any] = {}
        for blob, value in state.items():
            key = caffe2_to_pyslowfast(blob)
            renamed[key if key is not None else "\0" + blob] = (blob, value)
        theirs = renamed
    else:
        theirs = {k: (k, v) for k, v in state.items()}
    bare = False
    if fmt == "mmaction2" and not model.config.slow_only and model.lateral_norm:
        lateral = [n for n in _key_table(model, fmt).values() if "_lateral." in n]
        bare = not any(n in theirs for n in lateral if ".bn." in n) and any(n in theirs for n in lateral)
    table = _key_table(model, fmt, bare_laterals=bare)
    ours = model.state_dict()
    perm = _head_permutation(model) if fmt == "mmaction2" else None
    pairs: List[Tuple[str, torch.Tensor]] = []
    missing, mismatched, hints = [], [], []
    used = set()
    for key, name in table.items():
        if name not in theirs:
            if not key.endswith("num_batches_tracked"):
                missing.append(f"{key} (checkpoint key {name!r})" if name != key else key)
            continue
        used.add(name)
        label, value = theirs[name]
        tensor = _to_tensor(value)
        target = ours[key]
        if fmt == "pyslowfast-caffe2" and tensor.dim() < target.dim() and tensor.numel() == target.numel():
            tensor = tensor.reshape(tuple(tensor.shape) + (1,) * (target.dim() - tensor.dim()))
        if tensor.shape != target.shape:
            mismatched.append(f"{label}: checkpoint {tuple(tensor.shape)} vs model {tuple(target.shape)} (the model "
                              f"expects {tuple(target.shape)}, found {tuple(tensor.shape)}; {key})")
            if _parse_ours(key, model.config.slow_only).kind == "head" and tensor.shape[0] != target.shape[0]:
                hints.append(
                    f"the checkpoint has {tensor.shape[0]} classes, the model {target.shape[0]}: build the model "
                    f"with num_classes={tensor.shape[0]}"
                )
            continue
        if perm is not None and name == "cls_head.fc_cls.weight":
            tensor = tensor[:, torch.argsort(perm)]
        pairs.append((key, tensor))
    unexpected = []
    for name, (label, _) in theirs.items():
        if name in used:
            continue
        if fmt == "pyslowfast-caffe2" and any(s in label for s in _C2_SOLVER_BLOBS):
            continue
        if fmt == "mmaction2" and name.startswith("data_preprocessor."):
            continue  # normalisation constants of MMAction2's input pipeline, not weights
        unexpected.append(label)
    if not model.lateral_norm and any(_LATERAL_BN.search(u) for u in unexpected):
        hints.append("the checkpoint's laterals have BN + ReLU: build the model with lateral_norm=True")
    return pairs, (missing, unexpected, mismatched), hints, bare


def _summary(items: List[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _describe(problems, hints: List[str], model: SlowFast, fmt: str, source: str) -> str:
    """The first line names the problem keys (the first 3 of each kind: the CLI shows one line); the
    following lines list every one."""
    missing, unexpected, mismatched = problems
    named = "; ".join(f"{title}: {_summary(items)}" for title, items in
                      (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if items)
    lines = [
        f"{source} ({fmt} layout) does not match the model ({model.num_classes} classes): {len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(mismatched)} shape-mismatched key(s) ({named}); nothing was loaded",
        f"  model config: {model.config}",
    ]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            lines.append(f"  {title}:")
            lines.extend(f"    {item}" for item in items)
    lines.extend(f"  hint: {hint}" for hint in dict.fromkeys(hints))
    return "\n".join(lines)


def _make_laterals_bare(model: SlowFast) -> None:
    for module in model.modules():
        if isinstance(module, FuseFastToSlow) and module.mode == "time_strided_conv":
            module.norm = None
            module.activation = None
    model.lateral_norm = False


def load_checkpoint(
    model: SlowFast,
    path_or_state_dict: Any,
    format: str = "auto",
    strict: bool = True,
    *,
    weights_only: bool = True,
) -> SlowFast:
    """Load PyTorchVideo, PySlowFast (.pyth / Caffe2 .pkl) or MMAction2 weights into a reference model.

    model: a ``slowfast_reference.SlowFast`` (slowfast_r50_4x16, slowfast_r50_8x8, slowfast_r101_8x8,
        slowfast_r101_16x8, slow_r50_8x8) built with the checkpoint's number of classes.
    path_or_state_dict: a file path, or an already loaded object: a flat state dict or a container
        ({"model_state": ...}, {"state_dict": ...}, {"blobs": ...}, {"model": ...}), or a model object
        (e.g. PyTorchVideo's ``slowfast_r50()``) whose state dict is in one of the layouts. "module."
        prefixes are removed.
    format: auto | pytorchvideo | pyslowfast | pyslowfast-caffe2 | mmaction2; auto reads the keys.
    strict: every model tensor must come from the checkpoint (``num_batches_tracked`` may be absent),
        every checkpoint tensor must land in the model, shapes must agree. Otherwise one ValueError
        lists every missing, unexpected and shape-mismatched key and nothing is loaded. With
        strict=False the matching tensors load and the rest is reported in a warning.
    weights_only: files are read with ``torch.load(weights_only=True)`` and Caffe2 pickles with an
        unpickler that rebuilds numpy arrays only; pass False for a trusted file that holds other
        Python objects (e.g. a training checkpoint's logger state).

    MMAction2's default laterals are bare convolutions (no BN, no ReLU). When such a checkpoint (lateral
    conv weights, no lateral BN keys) is loaded into a model built with lateral BN, the loader selects
    the bare form: each lateral's norm and activation become None and ``model.lateral_norm`` False, so
    the model computes what MMAction2's does. MMAction2's head pools each pathway globally
    (AdaptiveAvgPool3d), so loading its weights also switches the head to ``head_pool="global"``; the other
    layouts come from PySlowFast's fixed-window head and leave it as built. ``model.preset`` becomes the
    name of the test preset the weights imply (slowfast_kernels.presets.preset_for: charades / ssv2 by
    class count or file name, else the layout's family). Returns the model, loaded in place.
    """
    if format not in FORMAT_CHOICES:
        raise ValueError(f"format must be one of {FORMAT_CHOICES}, got {format!r}")
    if not isinstance(model, SlowFast):
        raise TypeError(f"model: expected a slowfast_reference.SlowFast, got {type(model).__name__}")
    state, fmt, source = read_state_dict(path_or_state_dict, format, weights_only=weights_only)
    _check_model(model, fmt)
    pairs, problems, hints, bare = _plan(model, state, fmt)
    if any(problems):
        message = _describe(problems, hints, model, fmt, source)
        if strict:
            raise ValueError(message)
        warnings.warn(message.replace("nothing was loaded", "the matching tensors were loaded"), stacklevel=2)
    if bare:
        _make_laterals_bare(model)
    model.preset = preset_for(fmt, model.num_classes, source)
    if fmt == "mmaction2":
        model.set_head_pool("global")
    ours = model.state_dict()
    with torch.no_grad():
        for key, tensor in pairs:
            ours[key].copy_(tensor)
    return model

