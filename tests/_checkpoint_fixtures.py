"""Foreign checkpoint files for the checkpoint tests, written in each framework's own container.

The weights come from ``export_state_dict`` (the documented key layouts); the containers mimic what
each framework's save function writes: PySlowFast's ``save_checkpoint`` dict, its Caffe2 model zoo
pickles (protocol 2, with optimizer blobs beside the weights), MMAction2's ``{"meta", "state_dict"}``
and PyTorchVideo's hub files (``{"model_state": ...}``).
"""
from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import torch

import slowfast_reference as R
from slowfast_kernels.checkpoints import export_state_dict

SUFFIX = {"pytorchvideo": ".pyth", "pyslowfast": ".pyth", "pyslowfast-caffe2": ".pkl", "mmaction2": ".pth"}


class NotAWeight:
    """Stands for the Python objects training checkpoints carry beside the weights (loggers, configs)."""

    def __init__(self, value=0):
        self.value = value


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BN statistics, so a mixed-up key cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 1000, (), generator=g)))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.rand(t.shape, generator=g) - 0.5)
            elif t.dim() == 1:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
    return model


def scramble(model: torch.nn.Module) -> None:
    """Overwrite every tensor, so a later load has to write all of them."""
    with torch.no_grad():
        for t in model.state_dict().values():
            t.fill_(7)


def inputs(model: R.SlowFast, size: int = 32, seed: int = 1):
    """A small clip: 2 slow frames (1 for alpha 8, Slow-only: 4 frames)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    if cfg.slow_only:
        return [torch.randn(1, 3, 4, size, size, generator=g)]
    frames = 2 * cfg.alpha if cfg.alpha < 8 else cfg.alpha
    return R.pack_pathways(torch.randn(1, 3, frames, size, size, generator=g), cfg.alpha)


def logits(model: R.SlowFast, x) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model([t.clone() for t in x])


def save_foreign(model: R.SlowFast, path, fmt: str, wrapped: bool = True, legacy: bool = False) -> None:
    """The model's weights in `fmt`'s layout, in the file container that framework writes.

    Caffe2 pickles here use protocol 4: protocol 2 (Python 2's) from Python 3 stores bytes through
    _codecs.encode, ~10x slower for a whole R50; the protocols have their own small test.
    """
    sd = export_state_dict(model, fmt)
    if fmt == "pyslowfast-caffe2":
        blobs = dict(sd)
        # Solver state that Caffe2 model zoo files carry and PySlowFast skips.
        blobs["conv1_w_momentum"] = np.zeros_like(blobs["conv1_w"])
        blobs["lr"] = np.array([0.1], dtype=np.float32)
        blobs["model_iter"] = np.array([196000], dtype=np.int64)
        with open(path, "wb") as f:
            pickle.dump({"blobs": blobs}, f, protocol=4)
        return
    if not wrapped:
        obj = sd
    elif fmt == "pyslowfast":
        obj = {
            "epoch": 196, "model_state": sd,
            "optimizer_state": {
                "state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}],
            },
            "cfg": "MODEL:\n  ARCH: slowfast\n",
        }
    elif fmt == "mmaction2":
        obj = {"meta": {"epoch": 256, "mmaction_version": "1.2.0", "time": "20240101_000000"}, "state_dict": sd}
    else:
        obj = {"model_state": sd}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def pytorchvideo_builders():
    """(create_slowfast, create_resnet) from PyTorchVideo, or None when it cannot be imported.

    PyTorchVideo imports torchvision only for its detection head (RoIAlign); no torchvision CPU build
    exists for this torch, so that one import is stubbed.
    """
    try:
        import fvcore  # noqa: F401
    except ImportError:
        return None
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
            ops.RoIAlign = object
            tv.ops = ops
            sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
    try:
        from pytorchvideo.models.resnet import create_resnet
        from pytorchvideo.models.slowfast import create_slowfast
    except ImportError:
        return None
    return create_slowfast, create_resnet
