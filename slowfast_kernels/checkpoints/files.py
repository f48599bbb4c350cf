"""Reading checkpoint files without running code from them: torch.save zips and legacy files, Caffe2
pickles of numpy arrays, and the containers ({"model_state": ...}, {"state_dict": ...}, ...) around the
flat state dict."""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, Mapping

import torch

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


# The line of torch.load(weights_only=True)'s refusal that names what it refused ("Trying to load unsupported
# GLOBAL posix.system whose module posix is blocked."; older torch: "Unsupported global: GLOBAL ..."): the
# last line is a link to the documentation.
_REFUSAL_SIGNS = ("global", "unsupported", "weightsunpickler error", "not an allowed")


def _refusal_reason(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    named = [line for line in lines if any(sign in line.lower() for sign in _REFUSAL_SIGNS)
             and not line.lower().startswith("check the documentation")]
    if named:
        return named[-1]
    return lines[-1] if lines else type(e).__name__


def _torch_load(path: str, fmt: str, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if _looks_truncated(e):
            raise _truncated(path, fmt, e) from e
        if weights_only:
            reason = _refusal_reason(e)
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
