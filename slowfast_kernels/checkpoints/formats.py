"""The key layouts of the four model zoos and the one table between them and the reference model.

Every key goes through one canonical address (stage, pathway, block, layer, parameter), rendered per
format, so loading and exporting share one table (layouts: the package docstring).
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import torch

from slowfast_reference.models import SlowFast

from .files import CheckpointError, read_checkpoint_file, unwrap_container

FORMATS = ("pytorchvideo", "pyslowfast", "pyslowfast-caffe2", "mmaction2")
FORMAT_CHOICES = ("auto",) + FORMATS

class Slot(NamedTuple):
    """Where a tensor lives, independent of any framework's naming.

    kind: stem | fuse | res | head. stage: 1 (stem and the fuse after it) .. 5 (res5).
    layer: branch1 | a | b | c for res blocks. part: conv | bn | fc.
    """

    kind: str
    stage: int
    pathway: int
    block: int
    layer: str
    part: str
    param: str


_OURS_SF = re.compile(
    r"blocks\.(?P<s>\d+)\.(?:multipathway_blocks\.(?P<p>\d+)\.(?:(?P<stem>conv|norm)"
    r"|res_blocks\.(?P<i>\d+)\.(?P<layer>branch1_conv|branch1_norm|branch2\.(?:conv|norm)_[abc]))"
    r"|multipathway_fusion\.(?P<fuse>conv_fast_to_slow|norm)|(?P<head>proj))\.(?P<param>\w+)"
)
_OURS_SLOW = re.compile(
    r"blocks\.(?P<s>\d+)\.(?:(?P<stem>conv|norm)"
    r"|res_blocks\.(?P<i>\d+)\.(?P<layer>branch1_conv|branch1_norm|branch2\.(?:conv|norm)_[abc])"
    r"|(?P<head>proj))\.(?P<param>\w+)"
)


def _parse_ours(key: str, slow_only: bool) -> Slot:
    m = (_OURS_SLOW if slow_only else _OURS_SF).fullmatch(key)
    if m is None:
        raise ValueError(f"model: state-dict key {key!r} is not part of a SlowFast reference model")
    g = m.groupdict()
    s, param, pathway = int(g["s"]), g["param"], int(g.get("p") or 0)
    if g["head"]:
        return Slot("head", 6, 0, 0, "", "fc", param)
    if g["stem"]:
        return Slot("stem", 1, pathway, 0, "", "conv" if g["stem"] == "conv" else "bn", param)
    if g.get("fuse"):
        return Slot("fuse", s + 1, 1, 0, "", "conv" if g["fuse"] == "conv_fast_to_slow" else "bn", param)
    layer = g["layer"]
    name = "branch1" if layer.startswith("branch1") else layer[-1]
    part = "bn" if ("norm" in layer) else "conv"
    return Slot("res", s + 1, pathway, int(m["i"]), name, part, param)


def _render_pyslowfast(slot: Slot, model: SlowFast) -> Optional[str]:
    if slot.kind == "head":
        return f"head.projection.{slot.param}"
    bn = slot.part == "bn"
    if slot.kind == "stem":
        return f"s1.pathway{slot.pathway}_stem.{'bn' if bn else 'conv'}.{slot.param}"
    if slot.kind == "fuse":
        return f"s{slot.stage}_fuse.{'bn' if bn else 'conv_f2s'}.{slot.param}"
    prefix = f"s{slot.stage}.pathway{slot.pathway}_res{slot.block}."
    if slot.layer == "branch1":
        return prefix + ("branch1_bn." if bn else "branch1.") + slot.param
    return prefix + f"branch2.{slot.layer}{'_bn' if bn else ''}.{slot.param}"


_C2_BN_SUFFIX = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
_C2_SUFFIX_BN = {v: k for k, v in _C2_BN_SUFFIX.items()}


def _render_caffe2(slot: Slot, model: SlowFast) -> Optional[str]:
    if slot.param == "num_batches_tracked":
        return None  # Caffe2 BN keeps no step count
    if slot.kind == "head":
        return f"pred_{slot.param[0]}"
    suffix = f"bn_{_C2_BN_SUFFIX[slot.param]}" if slot.part == "bn" else slot.param[0]
    fast = "t_" if slot.pathway == 1 else ""
    if slot.kind == "stem":
        return f"{fast}res_conv1_{suffix}" if slot.part == "bn" else f"{fast}conv1_{suffix}"
    if slot.kind == "fuse":
        # Caffe2 names the lateral after the Fast layer it reads: the stem's pool, or the last block's c BN.
        if slot.stage == 1:
            return f"t_pool1_subsample_{suffix}"
        last = model.config.stage_depths[slot.stage - 2] - 1
        return f"t_res{slot.stage}_{last}_branch2c_bn_subsample_{suffix}"
    branch = "branch1" if slot.layer == "branch1" else f"branch2{slot.layer}"
    return f"{fast}res{slot.stage}_{slot.block}_{branch}_{suffix}"


def _render_mmaction2(slot: Slot, model: SlowFast) -> Optional[str]:
    if slot.kind == "head":
        return f"cls_head.fc_cls.{slot.param}"
    part = slot.part
    if model.config.slow_only:
        root = "backbone."
    else:
        root = "backbone.slow_path." if slot.pathway == 0 or slot.kind == "fuse" else "backbone.fast_path."
    if slot.kind == "stem":
        return f"{root}conv1.{part}.{slot.param}"
    if slot.kind == "fuse":
        name = "conv1_lateral" if slot.stage == 1 else f"layer{slot.stage - 1}_lateral"
        return f"{root}{name}.{part}.{slot.param}"
    module = "downsample" if slot.layer == "branch1" else f"conv{'abc'.index(slot.layer) + 1}"
    return f"{root}layer{slot.stage - 1}.{slot.block}.{module}.{part}.{slot.param}"


_RENDERERS = {"pyslowfast": _render_pyslowfast, "pyslowfast-caffe2": _render_caffe2, "mmaction2": _render_mmaction2}

_C2_PATTERNS = (
    # (Caffe2 blob name, PySlowFast key); {bn} is one of s|b|rm|riv, {wb} one of w|b.
    (r"(?P<t>t_)?conv1_(?P<wb>[wb])", "s1.pathway{p}_stem.conv.{wb}"),
    (r"(?P<t>t_)?res_conv1_bn_(?P<bn>s|b|rm|riv)", "s1.pathway{p}_stem.bn.{bn}"),
    (r"t_pool1_subsample_(?P<wb>[wb])", "s1_fuse.conv_f2s.{wb}"),
    (r"t_pool1_subsample_bn_(?P<bn>s|b|rm|riv)", "s1_fuse.bn.{bn}"),
    (r"t_res(?P<s>\d+)_\d+_branch2c_bn_subsample_(?P<wb>[wb])", "s{s}_fuse.conv_f2s.{wb}"),
    (r"t_res(?P<s>\d+)_\d+_branch2c_bn_subsample_bn_(?P<bn>s|b|rm|riv)", "s{s}_fuse.bn.{bn}"),
    (r"(?P<t>t_)?res(?P<s>\d+)_(?P<i>\d+)_branch1_(?P<wb>[wb])", "s{s}.pathway{p}_res{i}.branch1.{wb}"),
    (r"(?P<t>t_)?res(?P<s>\d+)_(?P<i>\d+)_branch1_bn_(?P<bn>s|b|rm|riv)", "s{s}.pathway{p}_res{i}.branch1_bn.{bn}"),
    (r"(?P<t>t_)?res(?P<s>\d+)_(?P<i>\d+)_branch2(?P<l>[a-z])_(?P<wb>[wb])", "s{s}.pathway{p}_res{i}.branch2.{l}.{wb}"),
    (r"(?P<t>t_)?res(?P<s>\d+)_(?P<i>\d+)_branch2(?P<l>[a-z])_bn_(?P<bn>s|b|rm|riv)",
     "s{s}.pathway{p}_res{i}.branch2.{l}_bn.{bn}"),
    (r"pred_(?P<wb>[wb])", "head.projection.{wb}"),
)
_C2_COMPILED = tuple((re.compile(src), dst) for src, dst in _C2_PATTERNS)
# Optimizer and solver blobs that PySlowFast skips without a warning.
_C2_SOLVER_BLOBS = ("momentum", "lr", "model_iter")
_LATERAL_BN = re.compile(r"multipathway_fusion\.norm\.|_fuse\.bn\.|subsample_bn_|_lateral\.bn\.")


def caffe2_to_pyslowfast(name: str) -> Optional[str]:
    """A Caffe2 SlowFast blob name -> PySlowFast state-dict key (None for names outside the network)."""
    for pattern, dst in _C2_COMPILED:
        m = pattern.fullmatch(name)
        if m is not None:
            g = m.groupdict()
            wb = {"w": "weight", "b": "bias"}.get(g.get("wb") or "", "")
            bn = _C2_SUFFIX_BN.get(g.get("bn") or "", "")
            return dst.format(p=1 if g.get("t") else 0, s=g.get("s"), i=g.get("i"), l=g.get("l"), wb=wb, bn=bn)
    return None


def _check_model(model: Any, fmt: str) -> SlowFast:
    if not isinstance(model, SlowFast):
        raise TypeError(f"model: expected a slowfast_reference.SlowFast, got {type(model).__name__}")
    if fmt in ("pyslowfast", "pyslowfast-caffe2", "mmaction2") and not model.config.slow_only:
        if model.lateral_mode != "time_strided_conv" or model.fusion != "concat":
            raise ValueError(
                f"format={fmt!r} holds time-strided conv laterals fused by concatenation only; the model has "
                f"lateral={model.lateral_mode!r}, fusion={model.fusion!r}"
            )
    return model


def _key_table(model: SlowFast, fmt: str, bare_laterals: bool = False) -> Dict[str, str]:
    """Our key -> the key in `fmt` (PySlowFast's for the Caffe2 layout), every model tensor that has one."""
    slow_only = model.config.slow_only
    ours = model.state_dict()
    if bare_laterals:
        ours = {k: v for k, v in ours.items() if not re.search(r"multipathway_fusion\.norm\.", k)}
    if fmt == "pytorchvideo":
        return {k: k for k in ours}
    render = _RENDERERS["pyslowfast" if fmt == "pyslowfast-caffe2" else fmt]
    table = {}
    for key in ours:
        name = render(_parse_ours(key, slow_only), model)
        if name is not None:
            table[key] = name
    return table


def _head_permutation(model: SlowFast) -> Optional[torch.Tensor]:
    """MMAction2's fc reads [fast, slow] features, ours [slow, fast]: column order from ours to theirs."""
    if model.config.slow_only:
        return None
    in_features = model.blocks[-1].proj.in_features
    slow = in_features * model.config.beta_inv // (model.config.beta_inv + 1)
    return torch.cat([torch.arange(slow, in_features), torch.arange(slow)])


def export_state_dict(model: SlowFast, format: str) -> Dict[str, Any]:
    """The model's weights in a foreign layout: the state dict that framework's model would have.

    format: pytorchvideo | pyslowfast | pyslowfast-caffe2 | mmaction2. Tensors for the PyTorch
    layouts (aliasing the model's storage where no reordering is needed, like ``state_dict()``);
    float32 numpy arrays keyed by blob name for the Caffe2 layout (no ``num_batches_tracked``). A
    model with bare laterals exports bare MMAction2 laterals; the PySlowFast layouts need lateral BN.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    model = _check_model(model, format)
    if format in ("pyslowfast", "pyslowfast-caffe2") and not model.config.slow_only and not model.lateral_norm:
        raise ValueError(f"format={format!r} has BN + ReLU in every lateral; the model's laterals are bare")
    state = model.state_dict()
    out: Dict[str, Any] = {}
    perm = _head_permutation(model) if format == "mmaction2" else None
    for key, name in _key_table(model, format).items():
        tensor = state[key]
        if perm is not None and name == "cls_head.fc_cls.weight":
            tensor = tensor[:, perm]
        if format == "pyslowfast-caffe2":
            blob = _render_caffe2(_parse_ours(key, model.config.slow_only), model)
            if blob is not None:
                out[blob] = tensor.detach().float().cpu().numpy().copy()
        else:
            out[name] = tensor
    return out


def detect_format(state: Mapping[str, Any]) -> str:
    """Which layout a flat state dict uses, from its keys."""
    keys = list(state)
    if any(k.startswith("blocks.") for k in keys):
        return "pytorchvideo"
    if any(k.startswith(("backbone.", "cls_head.")) for k in keys):
        return "mmaction2"
    if any(re.match(r"s\d+(_fuse)?\.|head\.projection\.", k) for k in keys):
        return "pyslowfast"
    if any(caffe2_to_pyslowfast(k) is not None for k in keys):
        return "pyslowfast-caffe2"
    sample = ", ".join(repr(k) for k in keys[:5]) or "no keys"
    raise CheckpointError(
        f"cannot tell the checkpoint format from its keys ({sample}); pass format= one of {FORMATS}"
    )


def read_state_dict(path_or_state_dict: Any, format: str = "auto", *,
                    weights_only: bool = True) -> Tuple[Dict[str, Any], str, str]:
    """(flat state dict, its layout, a description of where it came from) of a checkpoint file, a loaded
    checkpoint object or a model (any nn.Module, e.g. PyTorchVideo's); "module." prefixes removed."""
    if format not in FORMAT_CHOICES:
        raise ValueError(f"format must be one of {FORMAT_CHOICES}, got {format!r}")
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = f"checkpoint {os.fspath(path_or_state_dict)!r}"
        obj = read_checkpoint_file(path_or_state_dict, format, weights_only)
    elif isinstance(path_or_state_dict, torch.nn.Module):
        source, obj = f"{type(path_or_state_dict).__name__} model", path_or_state_dict.state_dict()
    elif isinstance(path_or_state_dict, Mapping):
        source, obj = "state dict", path_or_state_dict
    else:
        raise TypeError(
            "path_or_state_dict: expected a file path or a state dict (or a model object), got "
            f"{type(path_or_state_dict).__name__}"
        )
    state = _strip_prefix(dict(unwrap_container(obj, source, format)))
    fmt = detect_format(state) if format == "auto" else format
    if format != "auto":
        guessed = None
        try:
            guessed = detect_format(state)
        except CheckpointError:
            pass
        if guessed is not None and guessed != fmt:
            raise CheckpointError(f"{source}: format={fmt!r} was asked for, but the keys are in the {guessed} layout")
    return state, fmt, source

def _strip_prefix(state: Dict[str, Any]) -> Dict[str, Any]:
    # DistributedDataParallel checkpoints prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state
