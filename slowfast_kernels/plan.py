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

Memory: each layer keeps the runners of its last ``max_cached_shapes`` input signatures (least recently
used first out; default DEFAULT_MAX_CACHED_SHAPES, fuse(..., max_cached_shapes=N) sets it). What does not
depend on the input shape (the Winograd transformed filters, the small-C_in kernel's weight) is prepared
once per layer, dtype and device and shared by every shape's runner; oneDNN's packed weights are per shape
(oneDNN picks the packing for the input size it is given), so they are what the bound bounds: up to one
copy of the model's conv weights per cached signature (R50: ~130 MB fp32). The fused model returns what an
eviction frees to the system (release_cpu_buffers, trim_heap).

NaN and inf propagate as in eager PyTorch: our kernels' ReLU keeps NaN, and oneDNN's ReLU post-op (which
drops it) runs only on inputs known to be finite; otherwise oneDNN runs the conv alone and torch's relu_
follows. The fused model checks its inputs once per forward (a sum per input: ~1 ms of a ~450 ms R50
forward, and what is finite there stays finite layer to layer unless fp32 overflows); a runner called on
its own checks its x and residual (one sum each).
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import contextvars
import threading
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from . import _ext, cpu_isa, tuning
from .ops.conv3d_bn_act import conv3d_bn_act, fold_bn, layout_of, resolve_backend
from .ops.conv3d_small_cin import conv3d_small_cin, small_cin_wins
from .ops.conv3d_winograd import (WinogradBf16Conv, WinogradConv, winograd_bf16_supports, winograd_bf16_wins,
                                  winograd_supports, winograd_wins)
from .ops.conv3d_winograd_time import WinogradTimeConv, winograd_time_supports, winograd_time_wins

Runner = Callable[..., torch.Tensor]

# Runners kept per layer (and per K-range of a split layer): input signatures, least recently used first out.
DEFAULT_MAX_CACHED_SHAPES = 4

# True / False: the caller (the fused model) checked that this forward's inputs are all finite / are not;
# None: unknown, each oneDNN ReLU call checks its own operands.
# Counts of runners made (make_runner) and of layers' runners dropped (FoldedConv.reset) in this process. An op
# program (replay.py) holds the runners' constants, so it is stale once a reset came after its recording; and a
# recording during which a runner was made logged that runner's preparation too, so it is not kept.
_runner_counts = {"made": 0, "reset": 0}


def runner_changes() -> Tuple[int, int]:
    """(runners made, runner resets) so far in this process (see _runner_counts)."""
    return _runner_counts["made"], _runner_counts["reset"]


def _note_runner_change(kind: str) -> None:
    _runner_counts[kind] += 1


_inputs_finite: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar("inputs_finite", default=None)


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf in t: one sum (NaN or inf in makes it non-finite; a finite sum that overflows only costs
    the NaN-exact path)."""
    return bool(torch.isfinite(t.sum(dtype=torch.float32)))


@contextlib.contextmanager
def inputs_known_finite(finite: bool) -> Iterator[None]:
    """Within: the runners take this forward's inputs as checked (finite or not) instead of checking each call."""
    token = _inputs_finite.set(finite)
    try:
        yield
    finally:
        _inputs_finite.reset(token)


def _finite_operands(x: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
    known = _inputs_finite.get()
    if known is not None:
        return known
    return all_finite(x) and (residual is None or all_finite(residual))


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last(_3d) when x is stored channels-innermost (and not also plain contiguous), else contiguous."""
    if x.dim() == 5:
        return layout_of(x)
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class OneDNNConv:
    """oneDNN's fused conv (bias, residual add, ReLU in the epilogue) with a weight packed for one input shape;
    3D or 2D (weight and x of the same rank).

    Packed weights: summed over the R50 8x8 layers (batch 1, 2 cores) 1.59 s vs 2.02 s with a plain
    channels_last_3d weight."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation,
                 activation: str, x: torch.Tensor) -> None:
        fmt = memory_format(x)
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
        # oneDNN's ReLU post-op is max(x, 0) in the operand order that turns NaN into 0: with a non-finite
        # operand the conv runs alone and torch's relu_ (NaN-propagating) follows.
        relu_after = self.activation == "relu" and not _finite_operands(x, residual)
        activation, unary = ("none", None) if relu_after else (self.activation, self.unary)
        if residual is None:
            y = torch.ops.mkldnn._convolution_pointwise(x, self.packed, self.bias, *self.args, activation, [], None)
        else:
            r = residual.to(x.dtype).contiguous(memory_format=self.fmt)
            if residual_is_scratch and r is residual:
                y = torch.ops.mkldnn._convolution_pointwise_.binary(r, x, self.packed, self.bias_x, *self.args,
                                                                    "add", 1.0, unary, [], None)
            else:
                y = torch.ops.mkldnn._convolution_pointwise.binary(x, r, self.packed, self.bias_x, *self.args,
                                                                   "add", 1.0, unary, [], None)
        return y.relu_() if relu_after else y


class SmallCinConv:
    """The stems' CPU conv (ops/conv3d_small_cin.py: vectorized along output rows), bias and ReLU fused."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation,
                 activation: str, x: torch.Tensor, shared: Optional[Dict[tuple, torch.Tensor]] = None) -> None:
        self.weight = _shared(shared, ("small_cin", x.device), lambda: weight.float().contiguous())
        self.bias = None if bias is None else bias.float().contiguous()
        self.stride, self.padding, self.activation = list(stride), list(padding), activation

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                 residual_is_scratch: bool = False) -> torch.Tensor:
        y = conv3d_small_cin(x, self.weight, self.bias, self.stride, self.padding, activation="none"
                             if residual is not None else self.activation)
        if residual is None:
            return y
        y.add_(residual)
        return y.relu_() if self.activation == "relu" else y


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


class CudnnConv2D:
    """cuDNN's fused 2D conv (bias, residual add, ReLU), for the 2D views of NDHWC convs (View2D)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation,
                 activation: str, x: torch.Tensor) -> None:
        self.weight = weight.to(device=x.device, dtype=x.dtype).contiguous(memory_format=memory_format(x))
        self.bias = None if bias is None else bias.to(device=x.device, dtype=x.dtype)
        self.geometry = (list(stride), list(padding), list(dilation), 1)
        self.activation = activation

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                 residual_is_scratch: bool = False) -> torch.Tensor:
        # fp32 means fp32 (no TF32), as in conv3d_bn_act's cuDNN path.
        with torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic,
                                        allow_tf32=x.dtype != torch.float32):
            if self.activation == "relu" and residual is not None:
                return torch.cudnn_convolution_add_relu(x, self.weight, residual, 1.0, self.bias, *self.geometry)
            if self.activation == "relu":
                return torch.cudnn_convolution_relu(x, self.weight, self.bias, *self.geometry)
            y = torch.nn.functional.conv2d(x, self.weight, self.bias, *self.geometry)
            return y if residual is None else y.add_(residual)


class TimeGemmConv:
    """A Kx1x1 conv (K odd; stride 1, padding ((K-1)/2, 0, 0), dilation 1) on a channels_last_3d input as K
    GEMMs over the [N, T*H*W, C] view (torch.mm -> oneDNN's matmul, AMX tiles in bf16): output frame t gets
    x[t + k - p] @ W_k; a tap whose frame lies outside [0, T) is left out (zero padding). Bias in the first
    GEMM, then residual add and NaN-propagating ReLU; a scratch residual in x's dtype and layout (the
    lateral K-range's partial sum) is itself the output the GEMMs accumulate into (no add pass: 0.77 ms
    for the res4 512->256 layer's, 0.50 ms for res5's, batch 1).

    On AMX in bf16 (2 cores, batch 1, timed inside the R50 8x8 forward, its warm caches) oneDNN's matmul
    runs the Slow pathway's wide temporal convs faster than its conv (3x1x1 or the (3, 1) 2D view):
    1024->256 3x1x1 at 8x14x14 1.58 -> 1.07 ms (x5), 1024->512 3.29 -> 2.40 ms, 512->256 at 8x28x28
    3.49 -> 2.76 ms (lateral as residual). The 1x1 convs (256->64 at 8x56x56: 0.54 vs 0.85 ms), the Fast
    pathway's (64->16 3x1x1 at 32x28x28: 0.22 vs 0.49 ms) and the 392-row 2048->512 layers (microbenchmark
    0.93x) stay on oneDNN's conv: see time_gemm_wins. Taps accumulate in x's dtype: one extra bf16
    rounding per tap."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], padding, activation: str,
                 x: torch.Tensor) -> None:
        self.pad, self.activation = int(padding[0]), activation
        # W_k as [C_in, C_out] (the GEMM's right operand), one per tap.
        self.taps = [weight[:, :, k, 0, 0].t().to(dtype=x.dtype).contiguous() for k in range(weight.shape[2])]
        self.bias = None if bias is None else bias.to(dtype=x.dtype).contiguous()

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                 residual_is_scratch: bool = False) -> torch.Tensor:
        n, c, t, h, w = x.shape
        hw, co = h * w, self.taps[0].shape[1]
        xv = x.permute(0, 2, 3, 4, 1).reshape(n, t * hw, c)  # a view of channels_last_3d memory
        # A scratch residual in x's dtype and layout (the lateral K-range's partial sum) is the output: the
        # GEMMs accumulate into it (no separate add pass).
        rv = None if residual is None else residual.permute(0, 2, 3, 4, 1)
        into = (rv is not None and residual_is_scratch and residual.dtype == x.dtype
                and residual.shape == (n, co, t, h, w) and rv.is_contiguous())
        if into:
            y = rv.view(n, t * hw, co)
        else:
            y = torch.empty(n, t * hw, co, dtype=x.dtype, device=x.device)
        centre = self.taps[self.pad]  # the one tap that covers every output frame
        for i in range(n):
            xi, yi = xv[i], y[i]
            if into:
                yi.addmm_(xi, centre)
            elif self.bias is None:
                torch.mm(xi, centre, out=yi)
            else:
                torch.addmm(self.bias, xi, centre, out=yi)
            for k, wk in enumerate(self.taps):
                d = k - self.pad
                t0, t1 = max(0, -d), min(t, t - d)
                if d == 0 or t1 <= t0:
                    continue
                yi[t0 * hw:t1 * hw].addmm_(xi[(t0 + d) * hw:(t1 + d) * hw], wk)
        if into and self.bias is not None:
            y.add_(self.bias)
        out = y.view(n, t, h, w, co).permute(0, 4, 1, 2, 3)  # [N, C_out, T, H, W], channels_last_3d
        if residual is not None and not into:
            out.add_(residual)
        return out.relu_() if self.activation == "relu" else out


def time_gemm_supports(x: torch.Tensor, weight_shape, stride, padding, dilation) -> bool:
    """TimeGemmConv computes this conv: CPU, channels_last_3d x, Kx1x1 kernel with K odd, stride 1, padding
    ((K-1)/2, 0, 0) (T kept), dilation 1."""
    k = weight_shape[2]
    return (x.device.type == "cpu" and _view2d_ok(x) and tuple(weight_shape[3:]) == (1, 1) and k % 2 == 1
            and padding[0] == (k - 1) // 2
            and tuple(stride) == (1, 1, 1) and tuple(padding[1:]) == (0, 0) and tuple(dilation) == (1, 1, 1))


def time_gemm_wins(x: torch.Tensor, weight_shape, stride, padding, dilation) -> bool:
    """The plan's rule (measured, see TimeGemmConv): AMX tier, bf16, a temporal kernel (K > 1),
    C_in >= max(512, C_out), T*H*W >= 1024."""
    c_out, c_in, k = weight_shape[:3]
    rows = x.shape[2] * x.shape[3] * x.shape[4]
    return (x.dtype == torch.bfloat16 and k > 1 and c_in >= max(512, c_out) and rows >= 1024
            and time_gemm_supports(x, weight_shape, stride, padding, dilation) and cpu_isa.tier() == "amx")


def _shared(cache: Optional[Dict[tuple, torch.Tensor]], key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """make() once per key in cache (a layer's shape-independent prepared weights), or every time without one."""
    if cache is None:
        return make()
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = make()
    return hit


def view2d_kind(weight_shape, stride, padding, dilation) -> Optional[str]:
    """Which 2D conv over a view of NDHWC memory computes this conv3d, or None.

    "frames": a 1xKxK conv is a KxK conv over the N*T frames, x.transpose(1, 2).reshape(N*T, C, H, W);
    "time": a Kx1x1 conv (K > 1) is a (K, 1) conv over x.flatten(3), [N, C, T, H*W]. Both are views of a
    channels_last_3d tensor (no copy), channels_last in 2D."""
    kd, kh, kw = weight_shape[2:]
    if kd == kh == kw == 1:
        return None  # a plain GEMM either way: oneDNN's 3D kernel measured as fast or faster
    if kd == 1 and stride[0] == 1 and padding[0] == 0:
        return "frames"
    if kh == kw == 1 and tuple(stride[1:]) == (1, 1) and tuple(padding[1:]) == (0, 0) \
            and tuple(dilation[1:]) == (1, 1):
        return "time"
    return None


class View2D:
    """A 3D conv run as a 2D conv over a view of its NDHWC input (see view2d_kind); the output is viewed back."""

    def __init__(self, kind: str, make_2d: Callable[..., Runner], weight: torch.Tensor, bias, stride, padding,
                 dilation, activation: str, x: torch.Tensor) -> None:
        self.kind = kind
        if kind == "frames":
            w2, geometry = weight[:, :, 0], (stride[1:], padding[1:], dilation[1:])
        else:
            w2, geometry = weight[..., 0], ((stride[0], 1), (padding[0], 0), (dilation[0], 1))
        self.runner = make_2d(w2, bias, *geometry, activation, self._to2d(x))

    def _to2d(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "frames":
            n, c, d, h, w = t.shape
            return t.transpose(1, 2).reshape(n * d, c, h, w)
        return t.flatten(3)

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                 residual_is_scratch: bool = False) -> torch.Tensor:
        n, _, d, h, w = x.shape
        r2 = None if residual is None else self._to2d(residual)
        y2 = self.runner(self._to2d(x), r2, residual_is_scratch)
        if self.kind == "frames":
            return y2.reshape(n, d, *y2.shape[1:]).transpose(1, 2)
        return y2.unflatten(3, (h, w))


def _view2d_ok(x: torch.Tensor) -> bool:
    """The 2D views are copies unless x is channels_last_3d."""
    return x.dim() == 5 and layout_of(x) == torch.channels_last_3d


def make_runner(weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation, activation: str,
                x: torch.Tensor, backend: str, variant: str = "auto",
                shared: Optional[Dict[tuple, torch.Tensor]] = None) -> Runner:
    """The fastest runner for inputs like x (shape, dtype, device, layout) that `backend` allows.

    shared: a dict the caller keeps per layer (and weight): the runner's shape-independent prepared weights
    (transformed Winograd filters, the small-C_in weight) are taken from it or added to it, so runners of
    several input shapes hold one copy.

    variant: "3d", "2d" (View2D, where view2d_kind allows it), "winograd" (CPU 1x3x3 convs by F(4x4, 3x3), bf16 by
    F(2x2, 3x3)),
    "winograd_time" (CPU 3x1x1 convs by F(4, 3)), "time_gemm" (CPU Kx1x1 convs as K GEMMs, TimeGemmConv) or
    "auto": on CUDA the faster of 3d and 2d by one bounded measurement per layer shape (two cuDNN calls timed,
    cached by slowfast_kernels.tuning: on the H200 the 2D view of the Fast pathway's small-channel layers ran
    up to 2x faster or slower than conv3d depending on the layer); on CPU TimeGemmConv where time_gemm_wins
    (AMX, bf16), else the temporal views (measured faster for every such layer); else 3D.
    """
    _note_runner_change("made")
    chosen = resolve_backend(backend, str(x.device), x.dtype)
    geometry = (weight, bias, stride, padding, dilation, activation)
    kind = view2d_kind(weight.shape, stride, padding, dilation) if _view2d_ok(x) else None
    if variant == "2d":
        if kind is None or chosen not in ("cpu", "cuda"):
            raise ValueError(f"make_runner: variant '2d' needs a channels_last_3d input, a kernel a 2D view computes "
                             f"(got {tuple(weight.shape[2:])}, stride {tuple(stride)}, padding {tuple(padding)}) "
                             f"and the cpu or cuda backend (got {chosen!r})")
        return View2D(kind, OneDNNConv if chosen == "cpu" else CudnnConv2D, *geometry, x)
    if chosen == "cpu" and variant == "auto" and small_cin_wins(x, weight.shape, stride, padding, dilation):
        return SmallCinConv(*geometry, x, shared)
    if variant == "winograd_time":
        if chosen != "cpu" or not winograd_time_supports(x, weight.shape, stride, padding, dilation):
            raise ValueError(f"make_runner: variant 'winograd_time' needs the cpu backend (got {chosen!r}), a float32 "
                             f"input and a 3x1x1 kernel with stride 1 and padding (1, 0, 0) (got "
                             f"{tuple(weight.shape[2:])}, stride {tuple(stride)}, padding {tuple(padding)})")
        return WinogradTimeConv(*geometry, x, shared)
    if variant == "time_gemm":
        if chosen != "cpu" or not time_gemm_supports(x, weight.shape, stride, padding, dilation):
            raise ValueError(f"make_runner: variant 'time_gemm' needs the cpu backend (got {chosen!r}), a "
                             f"channels_last_3d input and a Kx1x1 kernel (K odd) with stride 1, padding "
                             f"((K-1)/2, 0, 0) and dilation 1 (got {tuple(weight.shape[2:])}, stride "
                             f"{tuple(stride)}, padding {tuple(padding)}, dilation {tuple(dilation)})")
        return TimeGemmConv(weight, bias, padding, activation, x)
    if variant == "winograd":
        bf16 = winograd_bf16_supports(x.shape, weight.shape, stride, padding, dilation, x.dtype)
        if chosen != "cpu" or not (bf16 or winograd_supports(x.shape, weight.shape, stride, padding, dilation, x.dtype)):
            raise ValueError(f"make_runner: variant 'winograd' needs the cpu backend (got {chosen!r}), a float32 "
                             f"or bfloat16 input and a 1x3x3 kernel with stride 1 and padding (0, 1, 1) (got "
                             f"{tuple(weight.shape[2:])}, stride {tuple(stride)}, padding {tuple(padding)})")
        return WinogradBf16Conv(weight, bias, activation, shared) if bf16 else \
            WinogradConv(weight, bias, activation, shared=shared)
    if chosen == "cpu" and variant == "auto":
        if winograd_supports(x.shape, weight.shape, stride, padding, dilation, x.dtype) \
                and winograd_wins(x.shape, weight.shape):
            return WinogradConv(weight, bias, activation, shared=shared)
        if winograd_bf16_supports(x.shape, weight.shape, stride, padding, dilation, x.dtype) \
                and winograd_bf16_wins(x.shape, weight.shape):
            return WinogradBf16Conv(weight, bias, activation, shared)
        if winograd_time_wins(x, weight.shape, stride, padding, dilation):
            return WinogradTimeConv(*geometry, x, shared)
        if time_gemm_wins(x, weight.shape, stride, padding, dilation):
            return TimeGemmConv(weight, bias, padding, activation, x)
    if chosen == "cpu":
        # oneDNN runs a temporal Kx1x1 conv faster as the (K, 1) 2D conv over [N, C, T, H*W] (2 cores, fp32,
        # batch 1: Slow 1024->256 3x1x1 at 8x14x14 8.86 -> 6.53 ms, 1280->512 22.3 -> 16.4 ms; every temporal
        # layer of R50 8x8 at 1.0-1.36x, 113 -> 94 ms summed); the 1xKxK frame views measured 0.88-1.05x.
        if variant == "auto" and kind == "time":
            return View2D(kind, OneDNNConv, *geometry, x)
        return OneDNNConv(*geometry, x)
    three_d = OpConv(*geometry, x, chosen)
    measured = chosen == "cuda" and kind is not None and weight.shape[1] > 4  # C_in <= 4: the stem kernel
    if variant == "3d" or not measured or torch.cuda.is_current_stream_capturing():
        return three_d
    two_d = View2D(kind, CudnnConv2D, *geometry, x)
    key = tuning.make_key("plan_conv_view", x.device, x.dtype, (tuple(x.shape), tuple(weight.shape), tuple(stride),
                                                               tuple(padding), tuple(dilation), activation))
    pick = tuning.choose(key, {"3d": lambda: three_d(x), "2d": lambda: two_d(x)}, x.device)
    return two_d if pick == "2d" else three_d


class _BufferCacheUsers:
    """How many reuse_cpu_buffers scopes are open, in any thread. The cache is c10's process-wide CPU
    allocator: the first scope to open enables it and the last to close restores the state found before
    the first (two threads each saving and restoring "the previous state" left it enabled in 4 of 10
    trials, and it then kept the user's own tensors)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.was_enabled = False

    def enter(self) -> bool:
        ops = torch.ops.slowfast_kernels
        with self.lock:
            if self.count == 0:
                self.was_enabled = ops.cpu_buffer_cache_enable(True)
            self.count += 1
            return ops.cpu_buffer_cache_enabled()

    def exit(self) -> None:
        with self.lock:
            self.count -= 1
            if self.count == 0:
                torch.ops.slowfast_kernels.cpu_buffer_cache_enable(self.was_enabled)


_buffer_cache_users = _BufferCacheUsers()


@contextlib.contextmanager
def reuse_cpu_buffers() -> Iterator[bool]:
    """Within: large CPU tensors come from the extension's buffer cache (csrc/cpu/buffer_cache.cpp), so a
    forward reuses the previous forward's activation memory instead of faulting fresh pages in (~24 ms of a
    357 ms R50 8x8 CPU forward). Yields whether the cache is active (False without the extension).
    Thread-safe: scopes are counted across threads; the cache is on while any is open and back to its
    earlier state when the last closes. release_cpu_buffers() returns the cached memory to the system."""
    if _ext.LOAD_ERROR is not None or torch.compiler.is_compiling():
        yield False
        return
    active = _buffer_cache_users.enter()
    try:
        yield active
    finally:
        _buffer_cache_users.exit()


def release_cpu_buffers(trim: bool = True) -> int:
    """Free the CPU buffer cache's idle blocks and, with trim, return the C heap's free pages to the system
    (trim_heap); returns the bytes the cache released."""
    if _ext.LOAD_ERROR is not None:
        return 0
    freed = int(torch.ops.slowfast_kernels.cpu_buffer_cache_clear())
    if trim:
        trim_heap()
    return freed


def _find_malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's malloc_trim, or None (another C library, or no C library reachable through ctypes)."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_malloc_trim = _find_malloc_trim()


def trim_heap() -> bool:
    """Return the C heap's free pages to the system (glibc's malloc_trim(0); False where there is none).

    Why: glibc raises its mmap threshold to the size of a freed mmapped block (up to 32 MB), so after the
    first large free, packed weights and buffers of up to 32 MB come from the heap, and freeing them leaves
    free pages inside it that glibc does not give back. A fused model cycling through more input shapes
    than it caches then grew its RSS shape after shape (R50 8x8, 2 cached, 12 shapes cycled: +65 MB over
    the 24 forwards after the first cycle, the heap's free bytes 5 -> 335 MB). The fused model calls this
    after a forward in which a new input signature pushed an old one out (the evicted runners are freed by
    then): one call walks the heap's free chunks, ~10-30 ms measured on a loaded 2-core machine (see
    DESIGN.md, "The fused model over its lifetime")."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def check_max_cached_shapes(n, who: str) -> int:
    """n as the runner cache bound, or a ValueError naming max_cached_shapes."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{who}: max_cached_shapes must be an int >= 1, got {n!r}")
    return n


def _triple(v) -> Tuple[int, int, int]:
    return tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else (int(v),) * 3


class FoldedConv(nn.Module):
    """act(conv(x, W) + b (+ residual)) with BN folded into W, b (fp32 buffers): an inference-only layer.

    ``run(x, residual=None, residual_is_scratch=False, part=None)`` with x [N, C_in, T, H, W] (or, with
    part, one K-range of it): part=("tail", n) convolves x with W[:, n:] and adds the bias (no activation):
    the partial sum a part=("head", n) call then takes as its residual, convolving x with W[:, :n] and adding
    the residual and the activation. (The bias goes with the tail, which runs first, so a head that
    accumulates into its residual needs no bias pass: TimeGemmConv.) Weights are snapshots: after editing
    the buffers in place call reset() (load_state_dict, .to() and friends reset by themselves).

    Runners are kept for the last ``max_cached_shapes`` input signatures per part (LRU); copies, pickles
    and torch.save leave them out (oneDNN's packed weights are opaque tensors) and the next call rebuilds them.
    """

    def __init__(self, conv: nn.Conv3d, bn: Optional[nn.BatchNorm3d], activation: str, backend: str,
                 max_cached_shapes: int = DEFAULT_MAX_CACHED_SHAPES) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FoldedConv: conv: expected groups=1 and explicit zero padding, got {conv!r}")
        weight, bias = fold_bn(conv, bn)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding = _triple(conv.stride), _triple(conv.padding)
        self.dilation = _triple(conv.dilation)
        self.activation, self.backend = activation, backend
        self.max_cached_shapes = check_max_cached_shapes(max_cached_shapes, "FoldedConv")
        self.reset()

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
        _note_runner_change("reset")
        # part -> {input signature: runner}, least recently used first; part -> shape-independent weights
        self._runners: Dict[Optional[tuple], "collections.OrderedDict[tuple, Runner]"] = {}
        self._shared: Dict[Optional[tuple], Dict[tuple, torch.Tensor]] = {}

    def cached_shapes(self) -> int:
        """The most input signatures any part of this layer holds runners for."""
        return max((len(r) for r in self._runners.values()), default=0)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_runners"], state["_shared"] = {}, {}
        return state

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
            return self.weight[:, :n], None, self.activation
        return self.weight[:, n:], self.bias, "none"

    def run(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, residual_is_scratch: bool = False,
            part: Optional[Tuple[str, int]] = None) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Traced (torch.compile / torch.export): the public op on the buffers, no caches keyed on inputs.
            w, b, act = self._part(part)
            return conv3d_bn_act(x, w.to(x.dtype).contiguous(memory_format=layout_of(x)), b, self.stride,
                                 self.padding, self.dilation, residual=residual, activation=act,
                                 backend=self.backend)
        key = (x.shape, x.dtype, x.device, layout_of(x))
        runners = self._runners.get(part)
        if runners is None:
            runners = self._runners[part] = collections.OrderedDict()
        runner = runners.get(key)
        if runner is None:
            w, b, act = self._part(part)
            runner = make_runner(w, b, self.stride, self.padding, self.dilation, act, x, self.backend,
                                 shared=self._shared.setdefault(part, {}))
            runners[key] = runner
            # (another thread running this model may evict too: pop and move without failing)
            while len(runners) > self.max_cached_shapes:
                runners.pop(next(iter(runners), None), None)
        else:
            with contextlib.suppress(KeyError):
                runners.move_to_end(key)
        return runner(x, residual, residual_is_scratch)
