"""conv3d_bn_act: Conv3d with BatchNorm folded into its weight and bias, then + residual, activation, cast,
and an optional store into a channel slice of a wider output buffer.

Public entry points: fold_bn, conv3d_bn_act, conv3d_bn_act_ref (same signature, eager PyTorch).
Backends: cpu = oneDNN's fused conv (native op, csrc/cpu/conv3d_bn_act.cpp); cuda = cuDNN's fused conv
(torch.cudnn_convolution_relu / _add_relu, registered below for the native op's CUDA key), except convs
with C_in <= 4 (the stems), which take the small-C_in Triton kernel by shape rule; triton = the implicit-GEMM
kernel (slowfast_kernels/triton/conv3d_bn_act.py); reference = eager conv3d + bias + residual + relu.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from slowfast_reference._args import is_int

from .. import _ext
from .._shapes import output_shape  # noqa: F401  (re-exported: ops import it from here)
from ..backends import choose_backend

ACTIVATIONS = ("relu", "none")
IntOr3 = Union[int, Sequence[int]]


def _triple(v: IntOr3, name: str, min_value: int) -> Tuple[int, int, int]:
    """An int or 3 ints as 3 Python ints: numpy integers (PyTorchVideo's np.int64 strides) count as ints,
    as they do for torch.nn.functional.conv3d; bool does not."""
    seq = isinstance(v, (tuple, list, torch.Size)) or (isinstance(v, np.ndarray) and v.ndim == 1)
    t = (v, v, v) if is_int(v) else tuple(v) if seq else ()
    if len(t) != 3 or not all(is_int(e) and e >= min_value for e in t):
        got = f"a {type(v).__name__}" if isinstance(v, torch.Tensor) else repr(v)
        hint = " (residual, activation, out, out_channel_offset and backend are keyword-only)" \
            if isinstance(v, torch.Tensor) else ""
        raise ValueError(f"conv3d_bn_act: {name}: expected an int or 3 ints >= {min_value}, got {got}{hint}")
    return tuple(int(e) for e in t)  # type: ignore[return-value]


def layout_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last_3d when t is stored NDHWC (and not also plain contiguous), else contiguous."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def fold_bn(conv: nn.Conv3d, bn: Optional[nn.BatchNorm3d]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact inference folding, in fp32 whatever the model dtype: returns (weight, bias) with
    weight = w * gamma / sqrt(var + eps) ([C_out, C_in, kd, kh, kw]) and
    bias = beta + (b_conv - mean) * gamma / sqrt(var + eps) ([C_out]). bn=None folds nothing."""
    w = conv.weight.detach().float()
    b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(w.shape[0], device=w.device)
    if bn is None:
        return w.clone(), b.clone()
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn: bn: needs running statistics (track_running_stats=True)")
    if bn.num_features != w.shape[0]:
        raise ValueError(f"fold_bn: bn has {bn.num_features} features, conv has {w.shape[0]} output channels")
    var, mean = bn.running_var.detach().float(), bn.running_mean.detach().float()
    gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma * torch.rsqrt(var + bn.eps)
    return w * scale.view(-1, 1, 1, 1, 1), beta + (b - mean) * scale


def _store(y: torch.Tensor, out: Optional[torch.Tensor], out_channel_offset: int) -> torch.Tensor:
    if out is None:
        return y
    view = out.narrow(1, out_channel_offset, y.shape[1])
    view.copy_(y)
    return view


def conv3d_bn_act_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: IntOr3 = 1,
    padding: IntOr3 = 0,
    dilation: IntOr3 = 1,
    residual: Optional[torch.Tensor] = None,
    activation: str = "relu",
    out: Optional[torch.Tensor] = None,
    out_channel_offset: int = 0,
) -> torch.Tensor:
    """Eager PyTorch in x's dtype: conv3d + bias, + residual, relu; stored into out's slice when given."""
    b = None if bias is None else bias.to(x.dtype)
    # The weight in x's layout: eager conv picks its output layout from both operands (and a 1x1x1
    # weight is "contiguous" in both, hence the final contiguous()).
    fmt = layout_of(x)
    y = torch.nn.functional.conv3d(x, weight.to(x.dtype).contiguous(memory_format=fmt), b, stride, padding, dilation)
    y = y.contiguous(memory_format=fmt)
    if residual is not None:
        y = y + residual
    if activation == "relu":
        y = torch.relu(y)
    return _store(y, out, out_channel_offset)


def _check_inputs(x, weight, bias, stride, padding, dilation, residual, activation, out, out_channel_offset):
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"conv3d_bn_act: x: expected a [N, C_in, T, H, W] tensor, got {got}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"conv3d_bn_act: x: expected float32, bfloat16 or float16, got {x.dtype}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5 or weight.shape[1] != x.shape[1]:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"conv3d_bn_act: weight: expected [C_out, {x.shape[1]}, kd, kh, kw] (groups=1), got {got}")
    if weight.device != x.device:
        raise ValueError(f"conv3d_bn_act: weight is on {weight.device}, x on {x.device}: expected one device")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0] or bias.device != x.device):
        raise ValueError(f"conv3d_bn_act: bias: expected a [{weight.shape[0]}] tensor on {x.device}, "
                         f"got {tuple(bias.shape)} on {bias.device}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"conv3d_bn_act: activation must be one of {ACTIVATIONS}, got {activation!r}")
    shape = output_shape(x.shape, weight.shape, stride, padding, dilation)
    if min(shape[2:]) <= 0:
        raise ValueError(f"conv3d_bn_act: x: spatial size {tuple(x.shape[2:])} is smaller than the kernel "
                         f"{tuple(weight.shape[2:])} (padding {padding}, dilation {dilation})")
    if residual is not None and (tuple(residual.shape) != shape or residual.device != x.device):
        raise ValueError(f"conv3d_bn_act: residual: expected shape {shape} on {x.device}, "
                         f"got {tuple(residual.shape)} on {residual.device}")
    if out is None:
        if out_channel_offset != 0:
            raise ValueError("conv3d_bn_act: out_channel_offset: needs out")
        return shape
    if out.dim() != 5 or out.device != x.device or out.dtype != x.dtype:
        raise ValueError(f"conv3d_bn_act: out: expected a 5-d {x.dtype} tensor on {x.device}, "
                         f"got {tuple(out.shape)} {out.dtype} on {out.device}")
    if not 0 <= out_channel_offset or out_channel_offset + shape[1] > out.shape[1]:
        raise ValueError(f"conv3d_bn_act: out_channel_offset: channels [{out_channel_offset}, "
                         f"{out_channel_offset + shape[1]}) do not fit in out's {out.shape[1]} channels")
    if out.shape[0] != shape[0] or tuple(out.shape[2:]) != shape[2:]:
        raise ValueError(f"conv3d_bn_act: out: expected [{shape[0]}, >= {shape[1]}, {shape[2]}, {shape[3]}, "
                         f"{shape[4]}], got {tuple(out.shape)}")
    return shape


# -- Triton ops: Python-defined schemas (Triton is Python-only) ---------------------------------------

def _triton_prep(x, weight, bias, residual):
    """NDHWC operands for the kernel: x and residual in channels_last_3d, weight in x's dtype with c innermost."""
    cl = torch.channels_last_3d
    x = x.contiguous(memory_format=cl)
    weight = weight.to(x.dtype).contiguous(memory_format=cl)
    bias = None if bias is None else bias.float().contiguous()
    residual = None if residual is None else residual.contiguous(memory_format=cl)
    return x, weight, bias, residual


@torch.library.custom_op("slowfast_kernels::conv3d_bn_act_triton", mutates_args=())
def conv3d_bn_act_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: Sequence[int],
                         padding: Sequence[int], dilation: Sequence[int], residual: Optional[torch.Tensor],
                         activation: str) -> torch.Tensor:
    from ..triton.conv3d_bn_act import _conv3d_bn_act_triton

    shape = output_shape(x.shape, weight.shape, stride, padding, dilation)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout_of(x))
    xs, w, b, r = _triton_prep(x, weight, bias, residual)
    return _conv3d_bn_act_triton(xs, w, b, stride, padding, dilation, r, activation == "relu", y, 0)


@conv3d_bn_act_triton.register_fake
def _conv3d_bn_act_triton_fake(x, weight, bias, stride, padding, dilation, residual, activation):
    shape = output_shape(x.shape, weight.shape, stride, padding, dilation)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout_of(x))


@torch.library.custom_op("slowfast_kernels::conv3d_bn_act_triton_into", mutates_args=("out",))
def conv3d_bn_act_triton_into(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                              stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                              residual: Optional[torch.Tensor], activation: str, out: torch.Tensor,
                              out_channel_offset: int) -> None:
    """The same, stored straight into out[:, out_channel_offset : out_channel_offset + C_out] (any strides)."""
    from ..triton.conv3d_bn_act import _conv3d_bn_act_triton

    xs, w, b, r = _triton_prep(x, weight, bias, residual)
    _conv3d_bn_act_triton(xs, w, b, stride, padding, dilation, r, activation == "relu", out, out_channel_offset)


@conv3d_bn_act_triton_into.register_fake
def _conv3d_bn_act_triton_into_fake(x, weight, bias, stride, padding, dilation, residual, activation, out,
                                    out_channel_offset):
    return None


# -- native op: fake kernel, and cuDNN's fused conv as its CUDA kernel -------------------------------

def _cudnn_fused(x, weight, bias, stride, padding, dilation, residual, activation):
    if x.dtype == torch.float32:
        # fp32 means fp32: cuDNN would otherwise use TF32 (torch's default), and which layers did would
        # depend on the per-shape choice between cuDNN and the (IEEE fp32) Triton kernel.
        cudnn = torch.backends.cudnn
        with cudnn.flags(enabled=True, benchmark=cudnn.benchmark, benchmark_limit=cudnn.benchmark_limit,
                         deterministic=cudnn.deterministic, allow_tf32=False):
            return _cudnn_fused_call(x, weight, bias, stride, padding, dilation, residual, activation)
    return _cudnn_fused_call(x, weight, bias, stride, padding, dilation, residual, activation)


def _cudnn_fused_call(x, weight, bias, stride, padding, dilation, residual, activation):
    fmt = layout_of(x)
    w = weight.to(x.dtype).contiguous(memory_format=fmt)
    b = None if bias is None else bias.to(x.dtype)
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    if activation == "relu" and residual is not None:
        return torch.cudnn_convolution_add_relu(x, w, residual.to(x.dtype).contiguous(memory_format=fmt), 1.0, b,
                                                stride, padding, dilation, 1)
    if activation == "relu":
        return torch.cudnn_convolution_relu(x, w, b, stride, padding, dilation, 1)
    y = torch.nn.functional.conv3d(x, w, b, stride, padding, dilation)
    return y if residual is None else y.add_(residual)


if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("slowfast_kernels::conv3d_bn_act")
    def _conv3d_bn_act_fake(x, weight, bias, stride, padding, dilation, residual, activation):
        shape = output_shape(x.shape, weight.shape, stride, padding, dilation)
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout_of(x))

    torch.library.impl("slowfast_kernels::conv3d_bn_act", "CUDA")(_cudnn_fused)


def _cpu_support(x: torch.Tensor):
    def check():
        if x.dtype == torch.float16 and not torch.ops.mkldnn._is_mkldnn_fp16_supported():
            return "oneDNN float16 convolution needs a CPU with avx512_fp16 or avx_ne_convert"
        if x.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "oneDNN bfloat16 convolution needs a CPU with avx512bw/avx512_bf16"
        return None
    return check


@torch.compiler.assume_constant_result
def resolve_backend(backend: str, device: str, dtype: torch.dtype) -> str:
    """The backend for inputs on `device` of `dtype` (a constant for torch.compile: the dispatcher
    queries behind it are not traceable)."""
    device_ = torch.device(device)
    priority = ("cuda", "triton", "reference") if device_.type == "cuda" else ("cpu", "reference")
    probe = torch.empty(0, dtype=dtype)
    return choose_backend("conv3d_bn_act", backend, device_, {"cpu": _cpu_support(probe)}, priority=priority)


def _cuda(x, weight, bias, stride, padding, dilation, residual, activation, out, out_channel_offset):
    """cuDNN's fused conv. The general Triton conv is not on the automatic path: measured on an H200 it won
    1 of the 48 SlowFast R50 layer shapes, after autotuning that cost over 150 s per input shape at the
    first forward (backend="triton" still runs it; the stems' small-C_in kernel is chosen by shape rule)."""
    y = torch.ops.slowfast_kernels.conv3d_bn_act(x, weight, bias, stride, padding, dilation, residual, activation)
    return _store(y, out, out_channel_offset)


def _triton_ok(device: torch.device) -> bool:
    from ..backends import backend_unavailable_reason

    return backend_unavailable_reason("triton", device) is None


def _run_triton(x, weight, bias, stride, padding, dilation, residual, activation, out, out_channel_offset):
    if out is None:
        return conv3d_bn_act_triton(x, weight, bias, stride, padding, dilation, residual, activation)
    conv3d_bn_act_triton_into(x, weight, bias, stride, padding, dilation, residual, activation, out,
                              out_channel_offset)
    return out.narrow(1, out_channel_offset, weight.shape[0])


def _small_cin_rule(c_in, dilation, has_residual) -> bool:
    from .conv3d_bn_act_maxpool import small_cin_triton_rule

    return small_cin_triton_rule(c_in, dilation, has_residual)


def _run_small_cin(x, weight, bias, stride, padding, activation, out, out_channel_offset):
    """The stems' Triton kernel (ops/conv3d_bn_act_maxpool.py), chosen by shape rule, not measured: cuDNN
    runs the Fast stem at 5 TFLOP/s (28.7 ms at batch 32, H200)."""
    from .conv3d_bn_act_maxpool import conv3d_small_cin_triton_into

    if out is None:
        y = torch.empty(output_shape(x.shape, weight.shape, stride, padding, (1, 1, 1)), dtype=x.dtype,
                        device=x.device, memory_format=layout_of(x))
        conv3d_small_cin_triton_into(x, weight, bias, list(stride), list(padding), activation, y, 0)
        return y
    conv3d_small_cin_triton_into(x, weight, bias, list(stride), list(padding), activation, out, out_channel_offset)
    return out.narrow(1, out_channel_offset, weight.shape[0])


def conv3d_bn_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: IntOr3 = 1,
    padding: IntOr3 = 0,
    dilation: IntOr3 = 1,
    *,
    residual: Optional[torch.Tensor] = None,
    activation: str = "relu",
    out: Optional[torch.Tensor] = None,
    out_channel_offset: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """act(conv3d(x, weight) + bias + residual), BN already folded into weight/bias (see fold_bn).

    x [N, C_in, T, H, W] (NCDHW or channels_last_3d; float32, bfloat16, float16); weight
    [C_out, C_in, kd, kh, kw] (any float dtype: cast to x's); bias [C_out] or None (added in fp32 by the
    Triton kernel and by oneDNN without a residual; cuDNN and oneDNN's residual fusion take it in x's
    dtype); residual [N, C_out, To, Ho, Wo] or None; activation "relu" | "none".
    Returns [N, C_out, To, Ho, Wo] in x's dtype and memory format, or, with out ([N, >= C_out + offset,
    To, Ho, Wo], x's dtype, any strides), writes out[:, offset : offset + C_out] and returns that view.
    """
    stride, padding = _triple(stride, "stride", 1), _triple(padding, "padding", 0)
    dilation = _triple(dilation, "dilation", 1)
    _check_inputs(x, weight, bias, stride, padding, dilation, residual, activation, out, out_channel_offset)
    chosen = resolve_backend(backend, str(x.device), x.dtype)
    if residual is not None:
        residual = residual.to(x.dtype)
    if chosen == "reference":
        return conv3d_bn_act_ref(x, weight, bias, stride, padding, dilation, residual, activation, out,
                                 out_channel_offset)
    if chosen == "triton":
        return _run_triton(x, weight, bias, stride, padding, dilation, residual, activation, out, out_channel_offset)
    if chosen == "cuda":
        if _small_cin_rule(x.shape[1], dilation, residual is not None) and _triton_ok(x.device):
            return _run_small_cin(x, weight, bias, stride, padding, activation, out, out_channel_offset)
        return _cuda(x, weight, bias, stride, padding, dilation, residual, activation, out, out_channel_offset)
    y = torch.ops.slowfast_kernels.conv3d_bn_act(x, weight, bias, stride, padding, dilation, residual, activation)
    return _store(y, out, out_channel_offset)
