"""Fast -> Slow lateral connections (SlowFast paper, section 3.3), pure PyTorch.

These functions are the single definition of the three lateral modes: the reference model uses
them, and every kernel backend of ``slowfast_kernels.lateral_fuse`` is tested against them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ._args import as_int

LATERAL_MODES = ("time_strided_conv", "time_to_channel", "time_strided_sampling")
FUSIONS = ("concat", "sum")


def time_to_channel(fast: torch.Tensor, alpha: int) -> torch.Tensor:
    """out[n, c*alpha + a, t] = fast[n, c, t*alpha + a]: [N, Cf, T, H, W] -> [N, Cf*alpha, T/alpha, H, W]."""
    alpha = as_int(alpha, "alpha", 1, "time_to_channel: ")
    n, c, t, h, w = fast.shape
    return fast.reshape(n, c, t // alpha, alpha, h, w).transpose(2, 3).reshape(n, c * alpha, t // alpha, h, w)


def time_strided_sampling(fast: torch.Tensor, alpha: int) -> torch.Tensor:
    """out[n, c, t] = fast[n, c, t*alpha]: [N, Cf, T, H, W] -> [N, Cf, T/alpha, H, W]."""
    return fast[:, :, ::as_int(alpha, "alpha", 1, "time_strided_sampling: ")]


def lateral_channels(mode: str, fast_channels: int, alpha: int, fusion_channel_ratio: int = 2) -> int:
    """Channels the lateral connection adds to (or sums into) the Slow pathway."""
    fast_channels, alpha = int(fast_channels), int(alpha)
    fusion_channel_ratio = int(fusion_channel_ratio)
    if mode == "time_strided_conv":
        return fast_channels * fusion_channel_ratio
    if mode == "time_to_channel":
        return fast_channels * alpha
    if mode == "time_strided_sampling":
        return fast_channels
    raise ValueError(f"lateral mode must be one of {LATERAL_MODES}, got {mode!r}")


class FuseFastToSlow(nn.Module):
    """One lateral connection: transforms the Fast tensor and fuses it into the Slow one.

    Attribute names follow PyTorchVideo (``conv_fast_to_slow``, ``norm``, ``activation``) so its
    state dicts load unchanged. ``lateral_norm=False`` gives MMAction2's bare lateral conv.
    """

    def __init__(
        self,
        mode: str,
        fast_channels: int,
        alpha: int,
        kernel_size: int = 5,
        fusion: str = "concat",
        fusion_channel_ratio: int = 2,
        lateral_norm: bool = True,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        where = "FuseFastToSlow: "
        fast_channels, alpha = as_int(fast_channels, "fast_channels", 1, where), as_int(alpha, "alpha", 1, where)
        kernel_size = as_int(kernel_size, "kernel_size", 1, where)
        fusion_channel_ratio = as_int(fusion_channel_ratio, "fusion_channel_ratio", 1, where)
        if mode not in LATERAL_MODES:
            raise ValueError(f"lateral must be one of {LATERAL_MODES}, got {mode!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.mode, self.alpha, self.fusion = mode, alpha, fusion
        self.conv_fast_to_slow: Optional[nn.Conv3d] = None
        self.norm: Optional[nn.BatchNorm3d] = None
        self.activation: Optional[nn.ReLU] = None
        if mode == "time_strided_conv":
            out_channels = fast_channels * fusion_channel_ratio
            self.conv_fast_to_slow = nn.Conv3d(
                fast_channels, out_channels, kernel_size=(kernel_size, 1, 1), stride=(alpha, 1, 1),
                padding=(kernel_size // 2, 0, 0), bias=False,
            )
            if lateral_norm:
                self.norm = nn.BatchNorm3d(out_channels, eps=eps, momentum=momentum)
                self.activation = nn.ReLU()

    def lateral(self, fast: torch.Tensor) -> torch.Tensor:
        if self.mode == "time_to_channel":
            return time_to_channel(fast, self.alpha)
        if self.mode == "time_strided_sampling":
            return time_strided_sampling(fast, self.alpha)
        y = self.conv_fast_to_slow(fast)
        if self.norm is not None:
            y = self.norm(y)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def forward(self, x: list) -> list:
        slow, fast = x
        if fast.shape[2] != slow.shape[2] * self.alpha:
            raise ValueError(
                f"lateral connection: fast has {fast.shape[2]} frames, expected alpha * slow frames "
                f"= {self.alpha} * {slow.shape[2]} = {self.alpha * slow.shape[2]}"
            )
        y = self.lateral(fast)
        fused = torch.cat([slow, y], dim=1) if self.fusion == "concat" else slow + y
        return [fused, fast]
