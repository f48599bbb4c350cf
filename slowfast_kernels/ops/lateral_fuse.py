"""lateral_fuse: the Fast -> Slow lateral connection fused into the Slow pathway's input.

Public entry point, reference implementation (same signature) and the native op's fake kernel.
"""
from __future__ import annotations

from typing import Optional

import torch

from slowfast_reference.lateral import FUSIONS, LATERAL_MODES, time_strided_sampling, time_to_channel

from .. import _ext  # noqa: F401  (loads the native op schemas when the extension is built)
from ..backends import choose_backend

ACTIVATIONS = ("relu", "none")


def lateral_fuse_ref(
    slow: torch.Tensor,
    fast: torch.Tensor,
    mode: str,
    alpha: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    fusion: str = "concat",
    activation: str = "relu",
) -> torch.Tensor:
    """Eager PyTorch: the lateral tensor by the reference definitions, then torch.cat (or +)."""
    if mode == "time_to_channel":
        lat = time_to_channel(fast, alpha)
    elif mode == "time_strided_sampling":
        lat = time_strided_sampling(fast, alpha)
    else:
        k = weight.shape[2]
        lat = torch.nn.functional.conv3d(fast, weight, bias, stride=(alpha, 1, 1), padding=(k // 2, 0, 0))
        if activation == "relu":
            lat = torch.relu(lat)
    return torch.cat([slow, lat], dim=1) if fusion == "concat" else slow + lat


def _check_inputs(slow, fast, mode, alpha, weight, bias, fusion, activation) -> None:
    for name, t in (("slow", slow), ("fast", fast)):
        if not isinstance(t, torch.Tensor) or t.dim() != 5:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"lateral_fuse: {name}: expected a [N, C, T, H, W] tensor, got {got}")
    if mode not in LATERAL_MODES:
        raise ValueError(f"lateral_fuse: mode must be one of {LATERAL_MODES}, got {mode!r}")
    if fusion not in FUSIONS:
        raise ValueError(f"lateral_fuse: fusion must be one of {FUSIONS}, got {fusion!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"lateral_fuse: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(alpha, int) or alpha < 1:
        raise ValueError(f"lateral_fuse: alpha: expected a positive int, got {alpha!r}")
    if slow.device != fast.device:
        raise ValueError(f"lateral_fuse: slow is on {slow.device}, fast on {fast.device}: expected one device")
    if slow.dtype != fast.dtype:
        raise ValueError(f"lateral_fuse: slow is {slow.dtype}, fast is {fast.dtype}: expected one dtype")
    if fast.shape[2] != alpha * slow.shape[2]:
        raise ValueError(
            f"lateral_fuse: fast has {fast.shape[2]} frames, expected alpha * T_slow = {alpha} * {slow.shape[2]}"
            f" = {alpha * slow.shape[2]}")
    if slow.shape[0] != fast.shape[0] or slow.shape[3:] != fast.shape[3:]:
        raise ValueError(f"lateral_fuse: slow {tuple(slow.shape)} and fast {tuple(fast.shape)}: batch, H and W must match")
    if mode == "time_strided_conv":
        if weight is None or weight.dim() != 5 or weight.shape[1] != fast.shape[1] or weight.shape[3:] != (1, 1):
            got = None if weight is None else tuple(weight.shape)
            raise ValueError(f"lateral_fuse: weight: time_strided_conv needs a [C_out, {fast.shape[1]}, K, 1, 1] "
                             f"tensor, got {got}")
    elif weight is not None or bias is not None:
        raise ValueError(f"lateral_fuse: weight/bias: mode {mode!r} takes none")


def lateral_fuse(
    slow: torch.Tensor,
    fast: torch.Tensor,
    mode: str,
    alpha: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    fusion: str = "concat",
    activation: str = "relu",
    backend: str = "auto",
) -> torch.Tensor:
    """Fuse the Fast pathway into the Slow one.

    slow [N, Cs, T, H, W], fast [N, Cf, alpha*T, H, W] -> [N, Cs + Cl, T, H, W] (concat, slow channels
    first) or [N, Cs, T, H, W] (sum, needs Cl == Cs). Cl = Cf*alpha (time_to_channel), Cf
    (time_strided_sampling), C_out of weight (time_strided_conv: conv Kx1x1, stride alpha, pad K//2,
    BN already folded into weight/bias, then `activation`).
    """
    _check_inputs(slow, fast, mode, alpha, weight, bias, fusion, activation)

    def native_support():
        if mode != "time_to_channel" or fusion != "concat":
            return f"the native kernel implements time_to_channel + concat only (got {mode} + {fusion})"
        return None

    chosen = choose_backend("lateral_fuse", backend, slow.device, {"cpu": native_support, "cuda": native_support},
                            priority=None)
    if chosen == "reference":
        return lateral_fuse_ref(slow, fast, mode, alpha, weight, bias, fusion, activation)
    return torch.ops.slowfast_kernels.lateral_fuse(slow, fast, mode, alpha, weight, bias, fusion, activation)


if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("slowfast_kernels::lateral_fuse")
    def _lateral_fuse_fake(slow, fast, mode, alpha, weight, bias, fusion, activation):
        if mode == "time_to_channel":
            lat = fast.shape[1] * alpha
        elif mode == "time_strided_sampling":
            lat = fast.shape[1]
        else:
            lat = weight.shape[0]
        channels = slow.shape[1] + lat if fusion == "concat" else slow.shape[1]
        return slow.new_empty((slow.shape[0], channels, *slow.shape[2:]))
