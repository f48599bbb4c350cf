"""fuse_detector(model): a reference SlowFastDetector turned into a fast inference model.

The backbone goes through fuse.py's building blocks unchanged (FusedStem, FusedStage, FusedLateral: BN
folded, per-shape runners, channels_last_3d, concat without a concatenated tensor); the dilated res5 (spatial
stride 1, conv b dilation 2) is one more conv geometry for the plan's runners (oneDNN on CPU, cuDNN on
CUDA). The head is one roi_align_pool call (temporal pool + RoIAlign + max over the bins of both pathways,
[K, 2304] in fp32) and the classifier in fp32, then the activation.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Optional, Sequence

import torch
from torch import nn

from slowfast_reference.detection import SlowFastDetector

from .fuse import FusedLateral, FusedSlowFast, FusedStage, FusedStem
from .ops.roi_align_pool import roi_align_pool
from .plan import DEFAULT_MAX_CACHED_SHAPES, FoldedConv, check_max_cached_shapes


class FusedSlowFastDetector(nn.Module):
    """Inference-only drop-in for a reference SlowFastDetector: ``fused([slow, fast], boxes) -> [K, classes]``
    (float32). Inputs may be any layout; they are cast to the model dtype and channels_last_3d."""

    def __init__(self, model: SlowFastDetector, dtype: torch.dtype, backend: str,
                 max_cached_shapes: int = DEFAULT_MAX_CACHED_SHAPES) -> None:
        super().__init__()
        self.config, self.dtype, self.backend = model.config, dtype, backend
        self.slow_only = False
        self.spec = model.spec
        blocks = list(model.model.blocks)
        first, stages = blocks[0], blocks[1:5]
        self.stems = nn.ModuleList(FusedStem(s, backend) for s in first.multipathway_blocks)
        self.stages = nn.ModuleList(
            nn.ModuleList(FusedStage(p, backend) for p in s.multipathway_blocks) for s in stages)
        fusions = [first.multipathway_fusion] + [s.multipathway_fusion for s in stages[:3]]
        self.laterals = nn.ModuleList(FusedLateral(f, backend) for f in fusions)
        head = model.detection_head
        self.activation = None if head.activation is None else type(head.activation).__name__.lower()
        # fp32 classifier: [K, 2304] x [2304, classes] is negligible next to the backbone
        self.register_buffer("head_weight", head.proj.weight.detach().float().clone())
        self.register_buffer("head_bias", head.proj.bias.detach().float().clone())
        self._signatures_lock = threading.Lock()
        self.cpu_replay = True  # as FusedSlowFast's: the backbone's op program replayed (replay.py)
        self._programs: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
        self.set_max_cached_shapes(max_cached_shapes)

    # The backbone runs exactly as FusedSlowFast's (same attributes: stems, stages, laterals).
    _prepare = FusedSlowFast._prepare
    _stem = FusedSlowFast._stem
    _cpu_stems = FusedSlowFast._cpu_stems
    backbone = FusedSlowFast.backbone
    _backbone_then = FusedSlowFast._backbone_then  # the CPU forward: caches, one finiteness check
    _cpu_backbone = FusedSlowFast._cpu_backbone
    # The runner cache as FusedSlowFast's: the last max_cached_shapes input signatures keep their runners; a
    # signature pushing one out returns the CPU buffer cache's idle blocks and the heap's free pages.
    set_max_cached_shapes = FusedSlowFast.set_max_cached_shapes
    _note_signature = FusedSlowFast._note_signature
    __getstate__ = FusedSlowFast.__getstate__
    __setstate__ = FusedSlowFast.__setstate__

    def reset(self) -> None:
        """Forget every prepared runner (after editing weights in place)."""
        self._programs.clear()
        for m in self.modules():
            if isinstance(m, FoldedConv):
                m.reset()

    def head(self, feats: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        s = self.spec
        backend = "auto" if self.backend in ("auto", "cuda") else self.backend
        pooled = roi_align_pool(list(feats), boxes, s.resolution, s.spatial_scale, s.sampling_ratio, s.aligned,
                                s.temporal_pool, backend=backend)
        logits = torch.nn.functional.linear(pooled, self.head_weight, self.head_bias)
        if self.activation == "sigmoid":
            return torch.sigmoid(logits)
        if self.activation == "softmax":
            return torch.softmax(logits, dim=1)
        return logits

    def forward(self, inputs: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        SlowFastDetector.check_inputs(self, inputs, boxes)
        return self._backbone_then(inputs, lambda maps: self.head(maps, boxes))


def fuse_detector(model: SlowFastDetector, dtype: torch.dtype = torch.float32,
                  device: Optional[torch.device] = None, backend: str = "auto",
                  max_cached_shapes: int = DEFAULT_MAX_CACHED_SHAPES) -> FusedSlowFastDetector:
    """Turn an eval-mode reference SlowFastDetector (or a PyTorchVideo detector object, read into the reference
    of its architecture) into a fused inference model (see module docstring).

    fused(inputs, boxes) equals model(inputs, boxes) within 1e-4 in fp32. The reference is not modified.
    max_cached_shapes: as fuse's (the backbone's input signatures keeping their runners; boxes do not count)."""
    if not isinstance(model, SlowFastDetector):
        if not isinstance(model, nn.Module):
            raise TypeError(f"fuse_detector: model must be a slowfast_reference SlowFastDetector or a PyTorchVideo "
                            f"detector, got {type(model).__name__}")
        from .checkpoints import CheckpointError
        from .detection_checkpoints import load_detector

        try:  # a PyTorchVideo detector object (create_slowfast_with_roi_head): its weights in the reference
            model = load_detector(model)
        except CheckpointError as exc:
            raise TypeError(f"fuse_detector: model must be a slowfast_reference SlowFastDetector or a PyTorchVideo "
                            f"detector; a {type(model).__name__} holds no detector weights ({exc})") from None
    if model.training:
        raise ValueError("fuse_detector: model is in train mode; call model.eval() first")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"fuse_detector: dtype must be float32, bfloat16 or float16, got {dtype}")
    check_max_cached_shapes(max_cached_shapes, "fuse_detector")
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"fuse_detector: model weight {name} has non-finite values (NaN or inf)")
        device = torch.device(device) if device is not None else next(model.parameters()).device
        fused = FusedSlowFastDetector(model, dtype, backend, max_cached_shapes).to(device)
    return fused.eval()
