"""How each folded convolution of a fused model runs: one runner per (layer, input signature), built once.

A runner is everything a conv needs besides its input, prepared when the layer first sees an input of a
given shape, dtype, device and layout: the BN-folded weight cast to the input's dtype and layout, oneDNN's
packed weight on CPU (inductor's freezing makes the same), the backend choice. Calls then go straight to
the kernel: no folding, casting, cache-signature or backend-resolution work per forward (that work was
~10 ms of Python per R50 forward when every call redid it).

Runners take ``(x, residual=None, residual_is_scratch=False)`` and return act(conv(x) + bias + residual).
``residual_is_scratch`` says the caller no longer needs residual: oneDNN then accumulates into its memory
(no fresh output pages: they cost ~9% of the R50 8x8 CPU forward, 2 cores, fp32).

FoldedConv is the layer: an inference-only conv with BN folded into fp32 buffers (``weight``, ``bias``),
so state dicts, ``.to()`` and torch.compile see plain tensors. ``part`` splits its input channels in two
K-ranges, conv(concat(a, b), W) = conv(a, W[:, :Ca]) + conv(b, W[:, Ca:]): the fused model feeds a
lateral site's Slow output and lateral tensor to the next stage without concatenating them.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from . import _ext
from .ops.conv3d_bn_act import conv3d_bn_act, fold_bn, layout_of, resolve_backend

Runner = Callable[..., torch.Tensor]


class OneDNNConv:
    """oneDNN's fused conv (bias, residual add, ReLU in the epilogue) with a weight packed for one input shape.

    Packed weights: summed over the R50 8x8 layers (batch 1, 2 cores) 1.59 s vs 2.02 s with a plain
    channels_last_3d weight."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation,
                 activation: str, x: torch.Tensor) -> None:
        fmt = layout_of(x)
        w = weight.to(dtype=x.dtype).contiguous(memory_format=fmt)
        self.args = (list(padding), list(stride), list(dilation), 1)
        self.packed = torch.ops.mkldnn._reorder_convolution_weight(w, *self.args[:3], 1, list(x.shape))
        self.bias = None if bias is None else bias.float().contiguous()
        # oneDNN's binary (residual) fusion wants the bias in x's dtype; the unary one takes fp32.
        self.bias_x = None if bias is None else bias.to(x.dtype).contiguous()
        self.activation = activation
        self.unary = "relu" if activation == "relu" else None
        self.fmt = fmt

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                 residual_is_scratch: bool = False) -> torch.Tensor:
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x, self.packed, self.bias, *self.args, self.activation,
                                                           [], None)
        r = residual.to(x.dtype).contiguous(memory_format=self.fmt)
        if residual_is_scratch and r is residual:
            return torch.ops.mkldnn._convolution_pointwise_.binary(r, x, self.packed, self.bias_x, *self.args,
                                                                   "add", 1.0, self.unary, [], None)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, r, self.packed, self.bias_x, *self.args, "add",
                                                              1.0, self.unary, [], None)


class OpConv:
    """The public conv3d_bn_act op (cuDNN / our Triton kernels / reference) with the weight pre-cast."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation,
                 activation: str, x: torch.Tensor, backend: str) -> None:
        self.weight = weight.to(device=x.device, dtype=x.dtype).contiguous(memory_format=layout_of(x))
        self.bias = None if bias is None else bias.to(device=x.device, dtype=torch.float32).contiguous()
        self.geometry = (tuple(stride), tuple(padding), tuple(dilation))
        self.activation, self.backend = activation, backend

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                 residual_is_scratch: bool = False) -> torch.Tensor:
        return conv3d_bn_act(x, self.weight, self.bias, *self.geometry, residual=residual,
                             activation=self.activation, backend=self.backend)


def make_runner(weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation, activation: str,
                x: torch.Tensor, backend: str) -> Runner:
    """The fastest runner for inputs like x (shape, dtype, device, layout) that `backend` allows."""
    chosen = resolve_backend(backend, str(x.device), x.dtype)
    if chosen == "cpu":
        return OneDNNConv(weight, bias, stride, padding, dilation, activation, x)
    return OpConv(weight, bias, stride, padding, dilation, activation, x, chosen)


@contextlib.contextmanager
def reuse_cpu_buffers() -> Iterator[bool]:
    """Within: large CPU tensors come from the extension's buffer cache (csrc/cpu/buffer_cache.cpp), so a
    forward reuses the previous forward's activation memory instead of faulting fresh pages in (~24 ms of a
    357 ms R50 8x8 CPU forward). Yields whether the cache is active (False without the extension).
    release_cpu_buffers() returns the cached memory to the system."""
    if _ext.LOAD_ERROR is not None or torch.compiler.is_compiling():
        yield False
        return
    ops = torch.ops.slowfast_kernels
    was = ops.cpu_buffer_cache_enable(True)
    try:
        yield ops.cpu_buffer_cache_enabled()
    finally:
        ops.cpu_buffer_cache_enable(was)


def release_cpu_buffers() -> int:
    """Free the CPU buffer cache's idle blocks; returns the bytes released."""
    if _ext.LOAD_ERROR is not None:
        return 0
    return int(torch.ops.slowfast_kernels.cpu_buffer_cache_clear())


def _triple(v) -> Tuple[int, int, int]:
    return tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else (int(v),) * 3


class FoldedConv(nn.Module):
    """act(conv(x, W) + b (+ residual)) with BN folded into W, b (fp32 buffers): an inference-only layer.

    ``run(x, residual=None, residual_is_scratch=False, part=None)`` with x [N, C_in, T, H, W] (or, with
    part, one K-range of it): part=("head", n) convolves x with W[:, :n] and adds the bias, the residual and
    the activation; part=("tail", n) convolves x with W[:, n:] alone (no bias, no activation): the partial
    sum a "head" call then takes as its residual. Weights are snapshots: after editing the buffers in place
    call reset() (load_state_dict, .to() and friends reset by themselves).
    """

    def __init__(self, conv: nn.Conv3d, bn: Optional[nn.BatchNorm3d], activation: str, backend: str) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FoldedConv: conv: expected groups=1 and explicit zero padding, got {conv!r}")
        weight, bias = fold_bn(conv, bn)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding = _triple(conv.stride), _triple(conv.padding)
        self.dilation = _triple(conv.dilation)
        self.activation, self.backend = activation, backend
        self._runners: Dict[tuple, Runner] = {}

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def extra_repr(self) -> str:
        k = tuple(self.weight.shape[2:])
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={k}, stride={self.stride}, "
                f"padding={self.padding}, activation={self.activation!r}, backend={self.backend!r}")

    def reset(self) -> None:
        """Forget every prepared runner (they are rebuilt from the buffers on the next call)."""
        self._runners = {}

    def _apply(self, fn, *args, **kwargs):
        self.reset()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.reset()
        return super()._load_from_state_dict(*args, **kwargs)

    def _part(self, part) -> Tuple[torch.Tensor, Optional[torch.Tensor], str]:
        if part is None:
            return self.weight, self.bias, self.activation
        which, n = part
        if which == "head":
            return self.weight[:, :n], self.bias, self.activation
        return self.weight[:, n:], None, "none"

    def run(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, residual_is_scratch: bool = False,
            part: Optional[Tuple[str, int]] = None) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Traced (torch.compile / torch.export): the public op on the buffers, no caches keyed on inputs.
            w, b, act = self._part(part)
            return conv3d_bn_act(x, w.to(x.dtype).contiguous(memory_format=layout_of(x)), b, self.stride,
                                 self.padding, self.dilation, residual=residual, activation=act,
                                 backend=self.backend)
        key = (part, x.shape, x.dtype, x.device, layout_of(x))
        runner = self._runners.get(key)
        if runner is None:
            w, b, act = self._part(part)
            runner = make_runner(w, b, self.stride, self.padding, self.dilation, act, x, self.backend)
            self._runners[key] = runner
        return runner(x, residual, residual_is_scratch)
