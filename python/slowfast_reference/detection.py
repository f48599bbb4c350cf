"""SlowFast action detectors (AVA) in pure PyTorch: a backbone with a dilated res5 and an RoI head.

``SlowFastDetector(config)([slow, fast], boxes) -> [K, num_classes]`` scores, boxes [K, 5] (batch index, x1,
y1, x2, y2 in input pixels). Three heads, as the frameworks build them (res5 at 1/16 of the input: spatial
stride 1, conv b dilation 2):

- "pytorchvideo" (``create_slowfast_with_roi_head``, hub ``slowfast_r50_detection``): the backbone ends in
  a per pathway temporal AvgPool3d (T, 1, 1) and the concat; the head runs RoIAlign 7x7 (spatial_scale 1/16,
  sampling_ratio 0, aligned=False), MaxPool2d(7, stride 1), dropout, Linear(2304, 80), Sigmoid. The module
  tree and state dict keys are PyTorchVideo's (``model.blocks.N...``, ``detection_head.proj.weight``).
- "pyslowfast" (``head_helper.ResNetRoIHead``): per pathway temporal AvgPool3d, RoIAlign, MaxPool2d, then
  the concat; ``aligned`` per config (DETECTION.ALIGNED, True by default). RoIAlign acts on each channel
  alone, so this is the same function as the first head when aligned agrees; it is kept as PySlowFast
  writes it. Sigmoid for AVA.
- "mmaction2" (``SingleRoIExtractor3D`` + ``BBoxHeadAVA``): both pathways resized (nearest) to the larger T,
  temporal mean (or max), concat, RoIAlign 8x8 aligned=True, spatial max, dropout, Linear(2304, 81) whose
  output 0 is the background class. Nearest resizing repeats each Slow frame alpha times, which changes
  neither the mean nor the max over time, so the pool runs on each pathway as it is.

All three heads reduce to ``pool_rois``: temporal pool + RoIAlign + spatial max per pathway, concatenated,
[K, sum C] (the fused op slowfast_kernels.roi_align_pool computes exactly that), then the classifier.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._args import as_int
from .models import CONFIGS, PoolConcatPathway, SlowFast, SlowFastConfig, check_inputs
from .roi_align import RoIAlign, roi_align

HEADS = ("pytorchvideo", "pyslowfast", "mmaction2")
TEMPORAL_POOLS = ("avg", "max")


@dataclass(frozen=True)
class RoIHeadSpec:
    """What the RoI pooling of a head computes (the arguments of slowfast_kernels.roi_align_pool)."""

    resolution: Tuple[int, int] = (7, 7)
    spatial_scale: float = 1.0 / 16.0
    sampling_ratio: int = 0
    aligned: bool = False
    temporal_pool: str = "avg"


HEAD_SPECS = {
    "pytorchvideo": RoIHeadSpec(),
    "pyslowfast": RoIHeadSpec(aligned=True),
    "mmaction2": RoIHeadSpec(resolution=(8, 8), aligned=True),
}


def detection_config(arch: str, res5_dilation: int = 2) -> SlowFastConfig:
    """The classification architecture `arch` with the detection res5: spatial stride 1 and conv b dilation
    res5_dilation (2: PyTorchVideo, PySlowFast; 1: MMAction2's AVA configs, spatial_strides (1, 2, 2, 1) only)."""
    if arch not in CONFIGS:
        raise ValueError(f"arch must be one of {sorted(CONFIGS)}, got {arch!r}")
    if CONFIGS[arch].slow_only:
        raise ValueError(f"arch: the detectors are two-pathway SlowFast models, got the Slow-only {arch!r}")
    if res5_dilation not in (1, 2):
        raise ValueError(f"res5_dilation: expected 1 or 2, got {res5_dilation!r}")
    return dataclasses.replace(CONFIGS[arch], res5_spatial_stride=1, res5_dilation=res5_dilation)


def temporal_pool(x: torch.Tensor, mode: str) -> torch.Tensor:
    """[N, C, T, H, W] -> [N, C, H, W]: the mean (AvgPool3d((T, 1, 1))) or the max over time."""
    if mode == "avg":
        return x.mean(dim=2)
    return x.amax(dim=2)


def pool_rois(features: Sequence[torch.Tensor], boxes: torch.Tensor, spec: RoIHeadSpec) -> torch.Tensor:
    """The RoI feature of every box: per pathway temporal pool, RoIAlign, max over the bins, concatenated.

    features: [N, C_p, T_p, H, W] per pathway (one H, W); boxes [K, 5] -> [K, sum C_p] in float32."""
    out = []
    for f in features:
        pooled = temporal_pool(f.float(), spec.temporal_pool)
        rois = roi_align(pooled, boxes, spec.resolution, spec.spatial_scale, spec.sampling_ratio, spec.aligned)
        out.append(rois.amax(dim=(2, 3)))
    return torch.cat(out, dim=1)


def _activation(name: Optional[str]) -> Optional[nn.Module]:
    if name is None:
        return None
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "softmax":
        return nn.Softmax(dim=1)
    raise ValueError(f"activation must be 'sigmoid', 'softmax' or None, got {name!r}")


class ResNetRoIHead(nn.Module):
    """PyTorchVideo's ResNetRoIHead (pool=None, output_pool=None): [N, C, 1, H, W] and boxes [K, 5] ->
    RoIAlign -> MaxPool2d -> dropout -> Linear -> activation -> [K, num_classes, 1, 1, 1]."""

    def __init__(self, in_features: int, num_classes: int, spec: RoIHeadSpec, dropout: float,
                 activation: Optional[str]) -> None:
        super().__init__()
        self.spec = spec
        self.roi_layer = RoIAlign(spec.resolution, spec.spatial_scale, spec.sampling_ratio, spec.aligned)
        self.pool_spatial = nn.MaxPool2d(spec.resolution, stride=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.proj = nn.Linear(in_features, num_classes)
        self.activation = _activation(activation)

    def forward(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != 1:
            raise ValueError(f"ResNetRoIHead: x: expected temporal size 1 (pooled), got {tuple(x.shape)}")
        x = self.pool_spatial(self.roi_layer(x.squeeze(2), boxes)).unsqueeze(2)
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.proj(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return x if self.activation is None else self.activation(x)


class PathwayRoIHead(nn.Module):
    """PySlowFast's ResNetRoIHead and MMAction2's RoI extractor + BBoxHeadAVA: per pathway temporal pool,
    RoIAlign and spatial max, concat, dropout, Linear, activation. [N, C_p, T_p, H, W] per pathway and
    boxes [K, 5] -> [K, num_classes]."""

    def __init__(self, in_features: int, num_classes: int, spec: RoIHeadSpec, dropout: float,
                 activation: Optional[str]) -> None:
        super().__init__()
        if spec.temporal_pool not in TEMPORAL_POOLS:
            raise ValueError(f"temporal_pool must be one of {TEMPORAL_POOLS}, got {spec.temporal_pool!r}")
        self.spec = spec
        self.roi_layer = RoIAlign(spec.resolution, spec.spatial_scale, spec.sampling_ratio, spec.aligned)
        self.pool_spatial = nn.MaxPool2d(spec.resolution, stride=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.proj = nn.Linear(in_features, num_classes)
        self.activation = _activation(activation)

    def forward(self, x: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        pooled = [self.pool_spatial(self.roi_layer(temporal_pool(f, self.spec.temporal_pool), boxes)) for f in x]
        y = torch.cat(pooled, dim=1).flatten(1)
        if self.dropout is not None:
            y = self.dropout(y)
        y = self.proj(y)
        return y if self.activation is None else self.activation(y)


class DetectionBackbone(nn.Module):
    """PyTorchVideo's ``Net`` of a detector: ``blocks`` = stem, res2..res5 (+ the temporal pool and concat
    for the "pytorchvideo" head)."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: List[torch.Tensor]):
        for block in self.blocks:
            x = block(x)
        return x


class SlowFastDetector(nn.Module):
    """SlowFast with an RoI head (see the module docstring). ``model([slow, fast], boxes) -> [K, num_classes]``.

    slow [N, 3, T/alpha, H, W], fast [N, 3, T, H, W]; boxes [K, 5] (batch index, x1, y1, x2, y2) in the input's
    pixels. config: a detection config (detection_config(arch)); head: one of HEADS; aligned overrides the
    head's RoIAlign alignment (PySlowFast's DETECTION.ALIGNED)."""

    def __init__(self, config: SlowFastConfig, num_classes: int = 80, head: str = "pytorchvideo",
                 aligned: Optional[bool] = None, dropout: float = 0.5, activation: Optional[str] = "sigmoid",
                 temporal_pool: str = "avg") -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if config.slow_only:
            raise ValueError("config: the detectors are two-pathway SlowFast models, got a Slow-only config")
        if temporal_pool not in TEMPORAL_POOLS:
            raise ValueError(f"temporal_pool must be one of {TEMPORAL_POOLS}, got {temporal_pool!r}")
        if head != "mmaction2" and temporal_pool != "avg":
            raise ValueError(f"temporal_pool: the {head} head pools time by its mean ('avg'), got {temporal_pool!r}")
        num_classes = as_int(num_classes, "num_classes", 1)
        spec = dataclasses.replace(HEAD_SPECS[head], temporal_pool=temporal_pool)
        if aligned is not None:
            spec = dataclasses.replace(spec, aligned=bool(aligned))
        self.config, self.head_type, self.spec, self.num_classes = config, head, spec, num_classes
        classifier = SlowFast(config, num_classes=num_classes)
        blocks = list(classifier.blocks[:5])
        width = 2048 + 2048 // config.beta_inv
        if head == "pytorchvideo":
            t_fast = config.num_frames
            blocks.append(PoolConcatPathway([(t_fast // config.alpha, 1, 1), (t_fast, 1, 1)]))
        self.model = DetectionBackbone(blocks)  # registered first: PyTorchVideo's key order
        head_class = ResNetRoIHead if head == "pytorchvideo" else PathwayRoIHead
        self.detection_head: nn.Module = head_class(width, num_classes, spec, dropout, activation)

    @property
    def num_pathways(self) -> int:
        return 2

    def check_inputs(self, x: Sequence[torch.Tensor], boxes: torch.Tensor) -> None:
        check_inputs(self.config, x)
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
            got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise ValueError(f"boxes: expected a [K, 5] tensor (batch index, x1, y1, x2, y2), got {got}")

    def backbone(self, x: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The res5 output per pathway, [N, C_p, T_p, H/16, W/16]."""
        y = list(x)
        for block in self.model.blocks[:5]:
            y = block(y)
        return y

    def forward(self, x: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x, boxes)
        if self.head_type == "pytorchvideo":
            out = self.detection_head(self.model(list(x)), boxes)
            return out.flatten(1)  # [K, classes] (PyTorchVideo's view(K, -1) fails at K = 0)
        return self.detection_head(self.backbone(x), boxes)


def build_detector(arch: str = "slowfast_r50_8x8", res5_dilation: Optional[int] = None, **kwargs) -> SlowFastDetector:
    """SlowFastDetector(detection_config(arch, res5_dilation), **kwargs); the default is PyTorchVideo's
    slowfast_r50_detection. res5_dilation None: 1 for the mmaction2 head, 2 otherwise (each framework's own)."""
    if res5_dilation is None:
        res5_dilation = 1 if kwargs.get("head") == "mmaction2" else 2
    return SlowFastDetector(detection_config(arch, res5_dilation), **kwargs)
