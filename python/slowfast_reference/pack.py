"""PySlowFast's PackPathway: split one clip of T fast frames into [slow, fast]."""
from __future__ import annotations

from typing import List

import torch


def slow_frame_indices(num_fast_frames: int, alpha: int, device=None) -> torch.Tensor:
    """linspace(0, T - 1, T // alpha).long(): T=32, alpha=4 -> 0,4,8,13,17,22,26,31 (not a plain stride)."""
    if num_fast_frames // alpha < 1:
        raise ValueError(f"alpha={alpha} leaves no slow frame out of {num_fast_frames} fast frames")
    return torch.linspace(0, num_fast_frames - 1, num_fast_frames // alpha, device=device).long()


def pack_pathways(frames: torch.Tensor, alpha: int) -> List[torch.Tensor]:
    """frames [C, T, H, W] or [N, C, T, H, W] -> [slow, fast] with slow = frames at slow_frame_indices."""
    if not isinstance(frames, torch.Tensor) or frames.dim() not in (4, 5):
        raise ValueError(f"frames: expected a [C, T, H, W] or [N, C, T, H, W] tensor, got "
                         f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
    if not isinstance(alpha, int) or alpha < 1:
        raise ValueError(f"alpha: expected a positive int, got {alpha!r}")
    t_dim = frames.dim() - 3
    index = slow_frame_indices(frames.shape[t_dim], alpha, frames.device)
    return [torch.index_select(frames, t_dim, index), frames]
