"""lateral_fuse: the Fast -> Slow lateral connection fused into the Slow pathway's input.

Public entry point, the eager reference (same signature), the torch.library registrations (fake and
autograd of the native ops, the Triton custom ops) and the backend choice.

Zero-copy concat: the result is one [N, Cs + Cl, T, H, W] buffer; the lateral channels are written into
out[:, Cs:]. With ``out=`` given and ``slow`` already the view out[:, :Cs] (its producer wrote it there),
the slow copy is skipped, so a model never runs torch.cat. Which slices are contiguous:
  - NCDHW (torch.contiguous_format): out[n, :Cs] and out[n, Cs:] are each one contiguous block per
    sample n (the slices as a whole are strided over n).
  - channels_last_3d: each slice is a set of strided rows, one per (n, t, h, w) voxel, Cs or Cl channels
    contiguous, row stride Cs + Cl. The fast path for convs that produce the slow part in NDHWC.
Both layouts (and any other strides) are accepted by every backend.
"""
from __future__ import annotations

from typing import Optional

import torch

from slowfast_reference._args import is_int
from slowfast_reference.lateral import FUSIONS, LATERAL_MODES, lateral_channels, time_strided_sampling, time_to_channel

from .. import _ext
from ..backends import choose_backend

ACTIVATIONS = ("relu", "none")
NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def lateral_fuse_ref(
    slow: torch.Tensor,
    fast: torch.Tensor,
    mode: str,
    alpha: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    fusion: str = "concat",
    activation: str = "relu",
    out: Optional[torch.Tensor] = None,
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
    result = torch.cat([slow, lat], dim=1) if fusion == "concat" else slow + lat
    if out is None:
        return result
    return out.copy_(result)


def _lateral_channels(mode: str, fast: torch.Tensor, alpha: int, weight: Optional[torch.Tensor]) -> int:
    if mode == "time_strided_conv":
        return weight.shape[0]
    return lateral_channels(mode, fast.shape[1], alpha)


def _result_shape(slow, fast, mode, alpha, weight, fusion):
    channels = slow.shape[1] + _lateral_channels(mode, fast, alpha, weight) if fusion == "concat" else slow.shape[1]
    return (slow.shape[0], channels, *slow.shape[2:])


def _empty_result(slow, fast, mode, alpha, weight, fusion):
    """The functional result: channels_last_3d when slow's channels are innermost (the C++ kernels' rule)."""
    channels_last = slow.shape[1] > 1 and slow.stride(1) == 1 and slow.stride(4) > 1
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    return torch.empty(_result_shape(slow, fast, mode, alpha, weight, fusion), dtype=slow.dtype, device=slow.device,
                       memory_format=fmt)


def _check_tensor(name, t, like):
    if t.dtype != like.dtype:
        raise ValueError(f"lateral_fuse: {name} is {t.dtype}, fast is {like.dtype}: expected one dtype")
    if t.device != like.device:
        raise ValueError(f"lateral_fuse: {name} is on {t.device}, fast on {like.device}: expected one device")


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
    if not is_int(alpha) or alpha < 1:
        raise ValueError(f"lateral_fuse: alpha: expected a positive int, got {alpha!r}")
    if slow.device != fast.device:
        raise ValueError(f"lateral_fuse: slow is on {slow.device}, fast on {fast.device}: expected one device")
    if slow.dtype != fast.dtype:
        raise ValueError(f"lateral_fuse: slow is {slow.dtype}, fast is {fast.dtype}: expected one dtype")
    if not fast.dtype.is_floating_point:
        raise ValueError(f"lateral_fuse: fast: expected a floating-point tensor, got {fast.dtype}")
    if fast.shape[2] != alpha * slow.shape[2]:
        raise ValueError(
            f"lateral_fuse: fast has {fast.shape[2]} frames, expected alpha * T_slow = {alpha} * {slow.shape[2]}"
            f" = {alpha * slow.shape[2]}")
    if slow.shape[0] != fast.shape[0] or slow.shape[3:] != fast.shape[3:]:
        raise ValueError(
            f"lateral_fuse: slow {tuple(slow.shape)} and fast {tuple(fast.shape)}: batch, H and W must match")
    if mode == "time_strided_conv":
        if weight is None or weight.dim() != 5 or weight.shape[1] != fast.shape[1] or weight.shape[3:] != (1, 1):
            got = None if weight is None else tuple(weight.shape)
            raise ValueError(f"lateral_fuse: weight: time_strided_conv needs a [C_out, {fast.shape[1]}, K, 1, 1] "
                             f"tensor, got {got}")
        if weight.shape[2] % 2 != 1:
            raise ValueError(f"lateral_fuse: weight: the temporal kernel K must be odd (pad K//2 keeps T), "
                             f"got K={weight.shape[2]}")
        _check_tensor("weight", weight, fast)
        if bias is not None:
            if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
                raise ValueError(f"lateral_fuse: bias: expected [{weight.shape[0]}], got {tuple(bias.shape)}")
            _check_tensor("bias", bias, fast)
    elif weight is not None or bias is not None:
        raise ValueError(f"lateral_fuse: weight/bias: mode {mode!r} takes none")
    if fusion == "sum":
        cl = _lateral_channels(mode, fast, alpha, weight)
        if cl != slow.shape[1]:
            raise ValueError(f"lateral_fuse: fusion='sum' needs as many lateral channels as slow channels: "
                             f"mode {mode!r} gives {cl}, slow has {slow.shape[1]} (use fusion='concat')")


def _check_out(out, slow, fast, mode, alpha, weight, bias, fusion) -> None:
    shape = _result_shape(slow, fast, mode, alpha, weight, fusion)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"lateral_fuse: out: expected shape {shape}, got {got}")
    if out.dtype != slow.dtype or out.device != slow.device:
        raise ValueError(f"lateral_fuse: out is {out.dtype} on {out.device}, expected {slow.dtype} on {slow.device}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (slow, fast, weight, bias, out)):
        raise RuntimeError("lateral_fuse: out= does not support autograd (an input requires grad); "
                           "call without out= to train, or under torch.no_grad()")


# -- autograd (shared by the native and the Triton ops) ---------------------------------------------------

def _setup_context(ctx, inputs, output):
    slow, fast, mode, alpha, weight, bias, fusion, activation = inputs
    ctx.mode, ctx.alpha, ctx.fusion, ctx.activation = mode, alpha, fusion, activation
    ctx.slow_channels = slow.shape[1]
    ctx.fast_shape = fast.shape
    ctx.has_bias = bias is not None
    conv = mode == "time_strided_conv"
    # concat + relu: the ReLU mask is in the output's lateral slice; sum needs the conv redone.
    keep_out = conv and activation == "relu" and fusion == "concat"
    ctx.save_for_backward(fast if conv else None, weight if conv else None, bias if conv else None,
                          output if keep_out else None)


def _backward(ctx, grad):
    fast, weight, bias, output = ctx.saved_tensors
    cs, alpha = ctx.slow_channels, ctx.alpha
    if ctx.fusion == "concat":
        g_slow, g_lat = grad[:, :cs], grad[:, cs:]
    else:
        g_slow, g_lat = grad, grad
    g_fast = g_weight = g_bias = None
    n, cf, tf, h, w = ctx.fast_shape
    t = tf // alpha
    if ctx.mode == "time_to_channel":
        g_fast = g_lat.reshape(n, cf, alpha, t, h, w).transpose(2, 3).reshape(n, cf, tf, h, w)
    elif ctx.mode == "time_strided_sampling":
        zeros = g_lat.new_zeros((n, cf, t, alpha - 1, h, w))
        g_fast = torch.cat([g_lat.unsqueeze(3), zeros], dim=3).reshape(n, cf, tf, h, w)
    else:
        k = weight.shape[2]
        stride, padding = [alpha, 1, 1], [k // 2, 0, 0]
        if ctx.activation == "relu":
            if output is not None:
                positive = output[:, cs:] > 0
            else:
                positive = torch.nn.functional.conv3d(fast, weight, bias, stride=stride, padding=padding) > 0
            g_lat = torch.where(positive, g_lat, torch.zeros_like(g_lat))
        needs = ctx.needs_input_grad
        g_fast, g_weight, g_bias = torch.ops.aten.convolution_backward(
            g_lat, fast, weight, [weight.shape[0]] if ctx.has_bias else None, stride, padding, [1, 1, 1], False,
            [0, 0, 0], 1, [needs[1], needs[4], needs[5] and ctx.has_bias])
    return g_slow, g_fast, None, None, g_weight, g_bias if ctx.has_bias else None, None, None


def _fake(slow, fast, mode, alpha, weight, bias, fusion, activation):
    return _empty_result(slow, fast, mode, alpha, weight, fusion)


def _fake_out(slow, fast, mode, alpha, weight, bias, fusion, activation, out):
    return None


if _ext.LOAD_ERROR is None:
    torch.library.register_fake("slowfast_kernels::lateral_fuse")(_fake)
    torch.library.register_fake("slowfast_kernels::lateral_fuse_out")(_fake_out)
    torch.library.register_autograd("slowfast_kernels::lateral_fuse", _backward, setup_context=_setup_context)


# -- Triton: custom ops (their schema lives here, Python-only); triton itself is imported on first call ----
# The schemas name the public `mode` argument `lateral`, as the native ones do: an argument named `mode`
# collides with a keyword of torch.compile's AOT dispatch.

@torch.library.custom_op("slowfast_kernels::lateral_fuse_triton", mutates_args=())
def lateral_fuse_triton(slow: torch.Tensor, fast: torch.Tensor, lateral: str, alpha: int,
                        weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], fusion: str,
                        activation: str) -> torch.Tensor:
    from ..triton.lateral_fuse import _lateral_fuse_triton

    out = _empty_result(slow, fast, lateral, alpha, weight, fusion)
    _lateral_fuse_triton(slow, fast, lateral, alpha, weight, bias, fusion, activation, out)
    return out


@torch.library.custom_op("slowfast_kernels::lateral_fuse_triton_out", mutates_args=("out",))
def lateral_fuse_triton_out(slow: torch.Tensor, fast: torch.Tensor, lateral: str, alpha: int,
                            weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], fusion: str, activation: str,
                            out: torch.Tensor) -> None:
    from ..triton.lateral_fuse import _lateral_fuse_triton

    _lateral_fuse_triton(slow, fast, lateral, alpha, weight, bias, fusion, activation, out)


lateral_fuse_triton.register_fake(_fake)
lateral_fuse_triton_out.register_fake(_fake_out)
lateral_fuse_triton.register_autograd(_backward, setup_context=_setup_context)


# -- public entry point -----------------------------------------------------------------------------------

# A trace-time constant for torch.compile: the choice depends only on these arguments (and the environment).
@torch.compiler.assume_constant_result
def _choose_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    def native_support():
        if dtype not in NATIVE_DTYPES:
            return f"the kernels take float32, bfloat16 or float16, got {dtype}"
        return None

    checks = {"cpu": native_support, "cuda": native_support, "triton": native_support}
    return choose_backend("lateral_fuse", backend, device, checks)


def lateral_fuse(
    slow: torch.Tensor,
    fast: torch.Tensor,
    mode: str,
    alpha: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    fusion: str = "concat",
    *,
    activation: str = "relu",
    out: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Fuse the Fast pathway into the Slow one.

    slow [N, Cs, T, H, W], fast [N, Cf, alpha*T, H, W] -> [N, Cs + Cl, T, H, W] (concat, slow channels
    first) or [N, Cs, T, H, W] (sum, needs Cl == Cs). Cl = Cf*alpha (time_to_channel), Cf
    (time_strided_sampling), C_out of weight (time_strided_conv: weight [C_out, Cf, K, 1, 1], K odd,
    bias [C_out] or None; conv Kx1x1, stride alpha, pad K//2, BN already folded into weight/bias, then
    `activation`, relu or none). Copy modes take no weight/bias and ignore `activation`.

    out: optional result buffer of the result's shape, any strides. When `slow` is already out[:, :Cs]
    (concat) or out itself (sum) - same data pointer and strides - its copy is skipped. Not differentiable.
    backend: auto | cpu | cuda | triton | reference (see slowfast_kernels.backends).
    """
    _check_inputs(slow, fast, mode, alpha, weight, bias, fusion, activation)
    alpha = int(alpha)  # numpy integers pass the check; the op schemas take a Python int
    if out is not None:
        _check_out(out, slow, fast, mode, alpha, weight, bias, fusion)

    chosen = _choose_backend(backend, slow.device, fast.dtype)
    args = (slow, fast, mode, alpha, weight, bias, fusion, activation)
    if chosen == "reference":
        return lateral_fuse_ref(*args, out=out)
    if chosen == "triton":
        if out is None:
            return torch.ops.slowfast_kernels.lateral_fuse_triton(*args)
        torch.ops.slowfast_kernels.lateral_fuse_triton_out(*args, out)
        return out
    if out is None:
        return torch.ops.slowfast_kernels.lateral_fuse(*args)
    torch.ops.slowfast_kernels.lateral_fuse_out(*args, out)
    return out
