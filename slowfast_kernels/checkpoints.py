"""Checkpoint loading: PyTorchVideo, PySlowFast (.pyth and Caffe2 .pkl) and MMAction2 weights.

``load_checkpoint(model, path_or_state_dict, format="auto")`` loads into a reference model
(``slowfast_reference.SlowFast``); ``export_state_dict(model, format)`` is its inverse, writing the
model's weights in a foreign key layout. Every key goes through one canonical address (stage,
pathway, block, layer, parameter), rendered per format, so loading and exporting share one table.

Layouts (the frameworks' own module trees):

- pytorchvideo: the reference's own keys (``blocks.0.multipathway_blocks.0.conv.weight``).
- pyslowfast: ``s1.pathway0_stem.conv.weight``, ``s1_fuse.conv_f2s.weight``, ``s2.pathway1_res0.
  branch2.a_bn.running_mean``, ``head.projection.weight``; ``{"model_state": ...}`` in .pyth files.
- pyslowfast-caffe2: Detectron blob names (``conv1_w``, ``t_res2_0_branch2a_bn_riv``,
  ``t_pool1_subsample_w``, ``pred_w``) in a pickled ``{"blobs": {name: ndarray}}``; names go to
  PySlowFast's keys by the rules of PySlowFast's ``c2_model_loading.get_name_convert_func``.
- mmaction2: ``backbone.slow_path.layer1.0.conv1.conv.weight``, ``backbone.slow_path.conv1_lateral.
  conv.weight``, ``cls_head.fc_cls.weight``; its head concatenates the Fast features before the
  Slow ones, so the fc columns are permuted here.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch

from slowfast_reference.lateral import FuseFastToSlow
from slowfast_reference.models import SlowFast

FORMATS = ("pytorchvideo", "pyslowfast", "pyslowfast-caffe2", "mmaction2")
_FORMAT_CHOICES = ("auto",) + FORMATS

__all__ = [
    "FORMATS", "ArchInfo", "CheckpointError", "caffe2_to_pyslowfast", "detect_arch", "detect_format",
    "export_state_dict", "load_checkpoint", "read_checkpoint_file", "read_state_dict", "to_reference_model",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that holds no SlowFast state dict."""


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts of numpy arrays and nothing else: a Caffe2 .pkl cannot run code on load."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
        ("_codecs", "encode"), ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        canonical = module.replace("numpy._core", "numpy.core")
        if (canonical, name) not in self._ALLOWED:
            raise _ForbiddenGlobal(f"{module}.{name} (only numpy arrays are rebuilt)")
        if canonical.startswith("numpy.core"):
            import importlib

            # numpy 2 moved numpy.core to numpy._core; pickles name either.
            for candidate in (canonical.replace("numpy.core", "numpy._core"), canonical):
                try:
                    return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a pre-zip torch.save file


def _last_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[-1]}" if text else type(e).__name__


def _truncated(path: str, fmt: str, e: BaseException) -> "CheckpointError":
    return CheckpointError(f"truncated or corrupt checkpoint file {path} ({fmt}): {_last_line(e)}")


# What torch.load / pickle raise when a file ends early: the zip reader's, the legacy reader's, pickle's own.
_TRUNCATION_SIGNS = ("truncated", "persistent_load", "unexpected end", "failed finding central directory",
                     "ran out of input", "eof", "pytorchstreamreader failed")


def _looks_truncated(e: BaseException) -> bool:
    if isinstance(e, EOFError):
        return True
    text = f"{type(e).__name__} {e}".lower()
    return any(sign in text for sign in _TRUNCATION_SIGNS)


def _torch_load(path: str, fmt: str, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if _looks_truncated(e):
            raise _truncated(path, fmt, e) from e
        if weights_only:
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"checkpoint {path!r} ({fmt}): torch.load(weights_only=True) refused an object in it ({reason}); "
                "if you trust the file, pass weights_only=False"
            ) from e
        raise CheckpointError(f"checkpoint {path!r} ({fmt}) is corrupt or not a checkpoint: {e}") from e
    except Exception as e:
        if _looks_truncated(e):
            raise _truncated(path, fmt, e) from e
        raise CheckpointError(
            f"checkpoint {path!r} ({fmt}) is corrupt or not a checkpoint: {type(e).__name__}: {e}"
        ) from e


def read_checkpoint_file(path: Any, fmt: str = "auto", weights_only: bool = True) -> Any:
    """Reads a torch.save file (zip or legacy) or a Caffe2 pickle, without running code from it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} ({fmt}) does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} ({fmt}) is a directory, expected a file")
    if zipfile.is_zipfile(path):
        return _torch_load(path, fmt, weights_only)
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # a zip's first entry without the directory at its end: cut short
        raise CheckpointError(f"truncated or corrupt checkpoint file {path} ({fmt}): a torch.save zip archive "
                              "without its central directory (the end of the file is missing)")
    # Not a zip: a Caffe2 pickle or a legacy torch.save file, both plain pickles underneath.
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobal as e:
        if weights_only:
            raise CheckpointError(
                f"checkpoint {path!r} ({fmt}) pickles {e}; if you trust the file, pass weights_only=False"
            ) from e
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:
        if _looks_truncated(e):
            raise _truncated(path, fmt, e) from e
        raise CheckpointError(
            f"checkpoint {path!r} ({fmt}) is corrupt or not a checkpoint (neither a torch.save file nor a pickle "
            f"of numpy arrays): {type(e).__name__}: {e}"
        ) from e
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load(path, fmt, weights_only)
    return obj


_CONTAINER_KEYS = ("model_state", "state_dict", "blobs", "model")


def _is_array(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return False
    return isinstance(value, (np.ndarray, np.generic))


def unwrap_container(obj: Any, source: str, fmt: str = "auto") -> Mapping[str, Any]:
    """The flat state dict inside a checkpoint object: itself, or its model_state / state_dict / blobs / model."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} ({fmt}) holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    for key in _CONTAINER_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not obj:
        raise CheckpointError(f"{source} ({fmt}) holds an empty state dict")
    for key, value in obj.items():
        if not isinstance(key, str) or not _is_array(value):
            raise CheckpointError(
                f"{source} ({fmt}) is not a state dict: entry {key!r} holds a {type(value).__name__}, expected "
                f"tensors (or a checkpoint dict with one of {_CONTAINER_KEYS}); keys: {sorted(map(str, obj))[:8]}"
            )
    return obj


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


def read_state_dict(path_or_state_dict: Any, format: str = "auto", *,
                    weights_only: bool = True) -> Tuple[Dict[str, Any], str, str]:
    """(flat state dict, its layout, a description of where it came from) of a checkpoint file, a loaded
    checkpoint object or a model (any nn.Module, e.g. PyTorchVideo's); "module." prefixes removed."""
    if format not in _FORMAT_CHOICES:
        raise ValueError(f"format must be one of {_FORMAT_CHOICES}, got {format!r}")
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


def _strip_prefix(state: Dict[str, Any]) -> Dict[str, Any]:
    # DistributedDataParallel checkpoints prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


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
            mismatched.append(f"{label}: checkpoint {tuple(tensor.shape)} vs model {tuple(target.shape)} ({key})")
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


def _describe(problems, hints: List[str], model: SlowFast, fmt: str, source: str) -> str:
    missing, unexpected, mismatched = problems
    lines = [
        f"{source} ({fmt} layout) does not match the model (config {model.config}, "
        f"{model.num_classes} classes): {len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(mismatched)} shape-mismatched key(s); nothing was loaded"
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
    layouts come from PySlowFast's fixed-window head and leave it as built. Returns the model, loaded in place.
    """
    if format not in _FORMAT_CHOICES:
        raise ValueError(f"format must be one of {_FORMAT_CHOICES}, got {format!r}")
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
    if fmt == "mmaction2":
        model.set_head_pool("global")
    ours = model.state_dict()
    with torch.no_grad():
        for key, tensor in pairs:
            ours[key].copy_(tensor)
    return model


class ArchInfo(NamedTuple):
    """What a checkpoint holds: the reference architecture (a slowfast_reference factory name), the key
    layout, the number of classes of its classifier, and where it came from."""

    arch: str
    format: str
    num_classes: int
    source: str


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


def detect_arch(path_or_state_dict: Any, format: str = "auto", *, weights_only: bool = True) -> ArchInfo:
    """The architecture a checkpoint holds, read from its keys and shapes (nothing is loaded).

    The key layout gives the block counts per stage (R50: 3, 4, 6, 3; R101: 3, 4, 23, 3) and whether a
    Fast pathway exists (Slow-only); the lateral conv's temporal kernel separates R50 8x8 (7) from R50 4x16
    (5), conv a's temporal kernels in res4 R101 8x8 (all 23 blocks) from R101 16x8 (6 blocks). alpha and
    the clip length have no weights: each is the one of the released model with those weights.
    path_or_state_dict: anything load_checkpoint takes. Raises CheckpointError naming the closest known
    architecture when none matches every key and shape.
    """
    state, fmt, source = read_state_dict(path_or_state_dict, format, weights_only=weights_only)
    num_classes = _num_classes(state, fmt) or 400
    scored = []
    for arch in _DETECTION_ORDER:
        problems = _problems_as(arch, state, fmt, num_classes)
        if not any(problems):
            return ArchInfo(arch, fmt, num_classes, source)
        scored.append((sum(len(p) for p in problems), arch, problems))
    _, arch, (missing, unexpected, mismatched) = min(scored)
    raise CheckpointError(
        f"{source} ({fmt} layout) holds none of the known architectures ({', '.join(_DETECTION_ORDER)}); the "
        f"closest, {arch}, differs in {len(missing)} missing, {len(unexpected)} unexpected and {len(mismatched)} "
        "shape-mismatched key(s)"
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
            else:
                raise ValueError(f"{type(model).__name__}: head activation {type(act).__name__} has no counterpart "
                                 "in the reference (None or Softmax)")
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
