"""Test-time presets: each checkpoint family's own preprocessing, head activation and view protocol.

A checkpoint only classifies correctly when its input is prepared the way its framework prepared it in
training and testing. A Preset names every choice that differs between the families, each reproduced
from the framework's own code (cited per field in docs/DESIGN.md, "Presets"):

  preset        pixels (mean / std)            resize + crop                 clips   Slow    head     views
  pyslowfast    0-1: 0.45 / 0.225              float, floor; uniform_crop   pyslowfast linspace softmax mean
  pytorchvideo  0-1: 0.45 / 0.225              float, floor; uniform_crop   pyslowfast linspace softmax mean
  mmaction2     0-255: ImageNet 123.675.. /    uint8, round; ThreeCrop /     mmaction2  stride  softmax mean
                58.395..                       CenterCrop (floor offsets)
  charades      0-1: 0.45 / 0.225              float, floor; uniform_crop   charades   linspace sigmoid max
  ssv2          0-1: 0.45 / 0.225              float, floor; uniform_crop   ssv2       linspace softmax mean

preset.pack(video, fast_index, alpha, crop_idx) -> (slow, fast) applies the pixel rules (through
pack_pathways, plus MMAction2's uint8 resize and crop boxes), preset.views(clips, crops) lists the
(clip, crop) pairs, and slowfast_kernels.scoring.ensemble combines the views' scores.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .sampling import RULES as TEMPORAL_RULES

ENSEMBLES = ("mean", "max", "sum")
HEAD_ACTS = ("softmax", "sigmoid")
CROP_RULES = ("pyslowfast", "mmaction2")
RESIZE_RULES = ("float-floor", "uint8-round")
CHANNEL_ORDERS = ("RGB", "BGR")

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


@dataclass(frozen=True)
class Preset:
    """How one checkpoint family prepares a test clip and combines its views.

    mean, std: per channel (R, G, B), in pixel units of `pixel_max` (1: pixels / 255 first; 255: raw 0-255).
    channel_order: the network input's channel order. resize: "float-floor" (PySlowFast: normalized float
    frames, short side -> size, long side floor(long / short * size), bilinear) or "uint8-round" (MMAction2
    Resize(-1, size) on the uint8 frames: long side int(long * size / short + 0.5), bilinear, rounded back to
    uint8 before normalization). crop_rule: "pyslowfast" (uniform_crop, offsets ceil((L - crop) / 2), crops
    start / centre / end of the long side) or "mmaction2" (ThreeCrop: start, 2 * ((L - crop) // 2), (L -
    crop) // 2; CenterCrop: floor offsets). temporal: a slowfast_kernels.sampling rule. slow_rule: pack_pathways'.
    head_act: applied by the head at each of its positions before their mean (PySlowFast ResNetBasicHead and
    PTVSlowFast; MMAction2's head pools globally, one position). ensemble: how the views' activations are
    combined (mean | max | sum). clips, crops: the family's test views. target_fps: the frame rate the
    sampling rate counts at (None: frames as they come).
    """

    name: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    pixel_max: float
    channel_order: str
    resize: str
    size: int
    crop: int
    crop_rule: str
    temporal: str
    slow_rule: str
    head_act: str
    ensemble: str
    clips: int
    crops: int
    multi_label: bool = False
    target_fps: Optional[float] = 30
    num_classes: Optional[int] = None
    description: str = ""

    def __post_init__(self) -> None:
        checks = (("channel_order", self.channel_order, CHANNEL_ORDERS), ("resize", self.resize, RESIZE_RULES),
                  ("crop_rule", self.crop_rule, CROP_RULES), ("temporal", self.temporal, TEMPORAL_RULES),
                  ("slow_rule", self.slow_rule, ("linspace", "stride")), ("head_act", self.head_act, HEAD_ACTS),
                  ("ensemble", self.ensemble, ENSEMBLES), ("crops", self.crops, (1, 3)))
        for field, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"Preset {self.name}: {field}: expected one of {allowed}, got {value!r}")
        if (self.resize == "uint8-round") != (self.crop_rule == "mmaction2"):
            raise ValueError(f"Preset {self.name}: resize {self.resize!r} and crop_rule {self.crop_rule!r}: "
                             "MMAction2's uint8 resize goes with its crops, PySlowFast's float resize with its own")
        if self.clips < 1:
            raise ValueError(f"Preset {self.name}: clips: expected a positive int, got {self.clips!r}")

    def with_views(self, clips: Optional[int] = None, crops: Optional[int] = None,
                   ensemble: Optional[str] = None) -> "Preset":
        """The same preset with other test views or another ensemble (None keeps the preset's)."""
        return replace(self, clips=self.clips if clips is None else clips, crops=self.crops if crops is None else crops,
                       ensemble=self.ensemble if ensemble is None else ensemble)

    def crop_indices(self, crops: Optional[int] = None) -> List[int]:
        """The crop positions of one clip: [1] (centre) for one crop, [0, 1, 2] (start, centre, end) for three."""
        return [1] if (self.crops if crops is None else crops) == 1 else [0, 1, 2]

    def views(self) -> List[Tuple[int, int]]:
        """(clip_idx, crop_idx) of every test view, clip-major as PySlowFast and MMAction2 order them."""
        return [(c, s) for c in range(self.clips) for s in self.crop_indices()]

    def pack(self, video: torch.Tensor, fast_index: torch.Tensor, alpha: int, crop_idx: int = 1, *,
             size: Optional[int] = None, crop: Optional[int] = None, **pack_kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
        """One view's (slow, fast) model inputs by this preset: video uint8 [V, H, W, 3] (or [N, V, H, W, 3])
        RGB as decoded, fast_index [T]; crop_idx 0 / 1 / 2 (start, centre, end of the long side). size /
        crop override the preset's; pack_kwargs go to pack_pathways (dtype, channels_last, out, backend)."""
        from .ops.pack_pathways import pack_pathways

        size = self.size if size is None else size
        crop = self.crop if crop is None else crop
        if crop_idx not in (0, 1, 2):
            raise ValueError(f"preset {self.name}: crop_idx: expected 0, 1 or 2, got {crop_idx!r}")
        mean, std = tuple(m / self.pixel_max for m in self.mean), tuple(s / self.pixel_max for s in self.std)
        if self.channel_order == "BGR":
            video = video.flip(-1)  # the network sees B, G, R: normalize each by its own channel's constants
            mean, std = mean[::-1], std[::-1]
        if self.resize == "float-floor":
            return pack_pathways(video, fast_index, alpha, size=size, crop=crop, spatial_idx=crop_idx, mean=mean,
                                 std=std, slow_rule=self.slow_rule, **pack_kwargs)
        frames = gather_frames(video, fast_index)
        frames = resize_uint8(frames, size)
        y0, x0 = mmaction2_crop_offset(frames.shape[-3], frames.shape[-2], crop, crop_idx, three=self.crops == 3)
        frames = frames[..., y0:y0 + crop, x0:x0 + crop, :].contiguous()
        index = torch.arange(frames.shape[-4], device=frames.device)
        return pack_pathways(frames, index, alpha, mean=mean, std=std, slow_rule=self.slow_rule, **pack_kwargs)


def gather_frames(video: torch.Tensor, fast_index: torch.Tensor) -> torch.Tensor:
    """video [V, H, W, 3] or [N, V, H, W, 3] at fast_index [T] -> [T, H, W, 3] or [N, T, H, W, 3]."""
    index = torch.as_tensor(fast_index, dtype=torch.long, device=video.device)
    if index.dim() != 1:
        raise ValueError(f"fast_index: expected a [T] index for this preset, got shape {tuple(index.shape)}")
    if video.dim() not in (4, 5) or video.shape[-1] != 3:
        raise ValueError(f"video: expected uint8 [V, H, W, 3] or [N, V, H, W, 3], got {tuple(video.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= video.shape[-4]):
        raise ValueError(f"fast_index: values must lie in [0, {video.shape[-4]}), got {index.min()}..{index.max()}")
    return video.index_select(video.dim() - 4, index)


def mmaction2_resize_shape(height: int, width: int, size: int) -> Tuple[int, int]:
    """MMAction2 Resize(scale=(-1, size)) (mmcv rescale_size, keep_ratio): scale = size / short side,
    new (h, w) = (int(h * scale + 0.5), int(w * scale + 0.5))."""
    scale = min(math.inf / max(height, width), size / min(height, width))
    return int(height * float(scale) + 0.5), int(width * float(scale) + 0.5)


def resize_uint8(frames: torch.Tensor, size: int) -> torch.Tensor:
    """MMAction2's Resize(-1, size) of uint8 frames [..., H, W, 3] -> uint8 [..., h, w, 3]: bilinear with
    half-pixel centres and no antialiasing (mmcv.imresize, cv2.INTER_LINEAR), rounded to the nearest level.
    cv2 interpolates in 11-bit fixed point: its pixels may differ from these by one level."""
    if frames.dtype != torch.uint8:
        raise ValueError(f"video: this preset resizes uint8 frames (MMAction2 Resize), got {frames.dtype}")
    h, w = frames.shape[-3], frames.shape[-2]
    nh, nw = mmaction2_resize_shape(h, w, size)
    if (nh, nw) == (h, w):
        return frames
    lead = frames.shape[:-3]
    x = frames.reshape(-1, h, w, 3).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return x.reshape(*lead, nh, nw, 3)


def mmaction2_crop_offset(height: int, width: int, crop: int, crop_idx: int, three: bool) -> Tuple[int, int]:
    """(y0, x0) of MMAction2's ThreeCrop(crop) view crop_idx (0 start, 1 centre, 2 end: ThreeCrop's
    offsets 0, 2 * step, step with step = (L - crop) // 2) or of CenterCrop(crop) (three=False:
    ((H - crop) // 2, (W - crop) // 2)), v0.24 datasets/pipelines/augmentations.py."""
    if crop > height or crop > width:
        raise ValueError(f"crop: {crop} is larger than the {height}x{width} frame after resizing")
    if not three:
        return (height - crop) // 2, (width - crop) // 2
    if crop != height and crop != width:
        raise ValueError(f"crop: MMAction2's ThreeCrop needs the crop ({crop}) to equal a side of the "
                         f"{height}x{width} resized frame (crop = size)")
    if crop == height:
        step = (width - crop) // 2
        return 0, (0, step, 2 * step)[crop_idx]
    step = (height - crop) // 2
    return (0, step, 2 * step)[crop_idx], 0


_PYSLOWFAST = dict(mean=KINETICS_MEAN, std=KINETICS_STD, pixel_max=1.0, channel_order="RGB", resize="float-floor",
                   size=256, crop=256, crop_rule="pyslowfast", slow_rule="linspace")

PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("pyslowfast", temporal="pyslowfast", head_act="softmax", ensemble="mean", clips=10, crops=3,
           description="PySlowFast Kinetics test: 10 clips x 3 crops at 256, softmax per head position, "
                       "probabilities summed over views (ENSEMBLE_METHOD sum; the mean ranks alike)",
           **_PYSLOWFAST),
    Preset("pytorchvideo", temporal="pyslowfast", head_act="softmax", ensemble="mean", clips=10, crops=3,
           description="PyTorchVideo model zoo weights as PySlowFast tests them (PTVSlowFast: softmax per "
                       "position, then the mean)", **_PYSLOWFAST),
    Preset("mmaction2", mean=IMAGENET_MEAN_255, std=IMAGENET_STD_255, pixel_max=255.0, channel_order="RGB",
           resize="uint8-round", size=256, crop=256, crop_rule="mmaction2", temporal="mmaction2", slow_rule="stride",
           head_act="softmax", ensemble="mean", clips=10, crops=3, target_fps=None,
           description="MMAction2 test_pipeline: SampleFrames(32, 2, 10, test_mode=True), Resize(-1, 256), "
                       "ThreeCrop(256), ImageNet mean/std on 0-255, average_clips='prob'"),
    Preset("charades", temporal="charades", head_act="sigmoid", ensemble="max", clips=10, crops=3, multi_label=True,
           target_fps=None, num_classes=157,
           description="PySlowFast Charades: 157 labels, sigmoid per view, views combined by max "
                       "(ENSEMBLE_METHOD max), mAP", **_PYSLOWFAST),
    Preset("ssv2", temporal="ssv2", head_act="softmax", ensemble="mean", clips=1, crops=3, target_fps=None,
           num_classes=174, description="PySlowFast Something-Something v2: segment sampling, 1 clip x 3 crops",
           **_PYSLOWFAST),
)}

# Class counts that name a dataset (Charades 157, Something-Something v2 174), and the file names that do.
_PRESET_BY_CLASSES = {157: "charades", 174: "ssv2"}
_PRESET_BY_NAME = (("charades", re.compile(r"charades", re.I)),
                   ("ssv2", re.compile(r"ssv2|something[-_ ]?something|sthv2", re.I)))
_PRESET_BY_FORMAT = {"pyslowfast": "pyslowfast", "pyslowfast-caffe2": "pyslowfast", "pytorchvideo": "pytorchvideo",
                     "mmaction2": "mmaction2"}


def get_preset(name) -> Preset:
    """PRESETS[name] (a Preset passes through); a ValueError naming the presets otherwise."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def preset_for(fmt: str, num_classes: int, source: str = "") -> str:
    """The preset a checkpoint's weights imply: Charades (157 classes) and SSv2 (174) by class count or by
    their name in the file name; otherwise the family of the key layout (PySlowFast .pyth and Caffe2 .pkl
    -> pyslowfast, PyTorchVideo -> pytorchvideo, MMAction2 -> mmaction2)."""
    if num_classes in _PRESET_BY_CLASSES:
        return _PRESET_BY_CLASSES[num_classes]
    for name, pattern in _PRESET_BY_NAME:
        if pattern.search(source or ""):
            return name
    return _PRESET_BY_FORMAT.get(fmt, "pyslowfast")


def describe(names: Optional[Sequence[str]] = None) -> List[str]:
    """One line per preset: its name and what it reproduces."""
    return [f"{n}: {PRESETS[n].description}" for n in (names or PRESETS)]
