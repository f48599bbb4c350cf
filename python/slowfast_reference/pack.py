"""PySlowFast's PackPathway: split one clip of T fast frames into [slow, fast]; and the pixel value range
of a float clip (what maps to [0, 1] before mean/std normalization)."""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple

import torch

from ._args import is_int

UINT8_RANGE = (0.0, 255.0)
FLOAT_RANGE = (0.0, 1.0)
# Float frames may stray this fraction of the range outside value_range (e.g. an unclamped YUV -> RGB
# conversion) before they are refused; 0-255 frames read as 0-1 exceed it unless every pixel is <= 1.5.
VALUE_RANGE_MARGIN = 0.5


SLOW_RULES = ("linspace", "stride")


def slow_frame_indices(num_fast_frames: int, alpha: int, device=None, *, rule: str = "linspace") -> torch.Tensor:
    """The T // alpha fast frames the Slow pathway takes.

    rule "linspace" (PySlowFast, datasets/utils.py pack_pathway_output): linspace(0, T - 1, T // alpha).long(),
    T=32, alpha=4 -> 0,4,8,13,17,22,26,31. rule "stride" (MMAction2, models/backbones/resnet3d_slowfast.py
    ResNet3dSlowFast.forward: interpolate(mode="nearest", scale_factor=1 / alpha) over time, source frame
    floor(i * alpha)): 0,4,...,28.
    """
    num_fast_frames, alpha = int(num_fast_frames), int(alpha)
    if rule not in SLOW_RULES:
        raise ValueError(f"slow_rule: expected one of {SLOW_RULES}, got {rule!r}")
    if num_fast_frames // alpha < 1:
        raise ValueError(f"alpha={alpha} leaves no slow frame out of {num_fast_frames} fast frames")
    if rule == "stride":
        return torch.arange(num_fast_frames // alpha, device=device) * alpha
    return torch.linspace(0, num_fast_frames - 1, num_fast_frames // alpha, device=device).long()


def pack_pathways(frames: torch.Tensor, alpha: int, *, slow_rule: str = "linspace") -> List[torch.Tensor]:
    """frames [C, T, H, W] or [N, C, T, H, W] -> [slow, fast] with slow = frames at slow_frame_indices
    (slow_rule "linspace": PySlowFast, "stride": MMAction2). alpha: an int (numpy integers too)."""
    if not isinstance(frames, torch.Tensor) or frames.dim() not in (4, 5):
        raise ValueError(f"frames: expected a [C, T, H, W] or [N, C, T, H, W] tensor, got "
                         f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
    if not is_int(alpha) or alpha < 1:
        raise ValueError(f"alpha: expected a positive int, got {alpha!r}")
    t_dim = frames.dim() - 3
    index = slow_frame_indices(frames.shape[t_dim], int(alpha), frames.device, rule=slow_rule)
    return [torch.index_select(frames, t_dim, index), frames]


def parse_value_range(value_range: Optional[Sequence[float]], dtype: torch.dtype,
                      where: str = "pack_pathways: ") -> Tuple[float, float]:
    """(lo, hi): the pixel values that map to 0 and 1 before normalization. uint8 frames are always 0-255;
    float frames default to (0, 1); pass (0, 255) for float frames holding 0-255 values."""
    if dtype == torch.uint8:
        if value_range is not None and _pair(value_range, where) != UINT8_RANGE:
            raise ValueError(f"{where}value_range: uint8 frames are always 0-255; expected None or (0, 255), "
                             f"got {value_range!r}")
        return UINT8_RANGE
    return FLOAT_RANGE if value_range is None else _pair(value_range, where)


def _pair(value_range, where: str) -> Tuple[float, float]:
    if isinstance(value_range, torch.Tensor):
        value_range = value_range.tolist()
    try:
        lo, hi = (float(v) for v in value_range)
        ok = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value_range)
    except (TypeError, ValueError):
        ok = False
    if not ok or not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{where}value_range: expected (lo, hi), two finite numbers with lo < hi, "
                         f"e.g. (0, 1) or (0, 255), got {value_range!r}")
    return lo, hi


def value_range_error(lo_seen: float, hi_seen: float, value_range: Tuple[float, float],
                      name: str = "frames", where: str = "pack_pathways: ") -> Optional[str]:
    """The message refusing float frames whose values [lo_seen, hi_seen] leave value_range by more than
    VALUE_RANGE_MARGIN of its width, or None when they fit (NaN compares as fitting)."""
    lo, hi = value_range
    margin = VALUE_RANGE_MARGIN * (hi - lo)
    if hi_seen > hi + margin or lo_seen < lo - margin:
        if 16 <= hi_seen <= 255.5 and lo_seen >= -0.5:  # a 0-255 video's brightest pixel is rarely below 16
            hint = " (0-255 values: pass value_range=(0, 255))"
        elif lo_seen < lo - margin:
            hint = " (frames already normalized? pass the raw pixels: pack_pathways normalizes them)"
        else:
            hint = ""
        return (f"{where}{name}: float frames hold values in [{lo_seen:g}, {hi_seen:g}], outside value_range="
                f"({lo:g}, {hi:g}){hint}; value_range gives the pixel values that map to 0 and 1")
    return None


def check_value_range(frames: torch.Tensor, value_range: Tuple[float, float], name: str = "frames",
                      where: str = "pack_pathways: ") -> None:
    """Raise a ValueError (value_range_error) unless float frames fit value_range. One read of the frames,
    one device sync."""
    if frames.dtype == torch.uint8 or frames.numel() == 0:
        return
    lo_seen, hi_seen = torch.stack(torch.aminmax(frames)).double().tolist()
    message = value_range_error(lo_seen, hi_seen, value_range, name, where)
    if message:
        raise ValueError(message)


def scale_to_unit(frames: torch.Tensor, value_range: Tuple[float, float]) -> torch.Tensor:
    """frames (already in the arithmetic dtype) mapped from value_range to [0, 1]: (x - lo) / (hi - lo);
    (0, 1) is the identity (no op at all)."""
    lo, hi = value_range
    if (lo, hi) == FLOAT_RANGE:
        return frames
    if lo != 0.0:
        frames = frames - lo
    return frames / (hi - lo)
