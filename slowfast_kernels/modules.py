"""Conv3dBNAct: one module for Conv3d + BatchNorm3d + activation (+ residual) in training and inference.

Train mode runs eager conv, batch-statistics BN and autograd, so the module trains like the reference
layers it replaces. Eval mode runs conv3d_bn_act with BN folded into the weights. Everything the fused
call needs besides x (folding, the cast to x's dtype, the weight layout, oneDNN's packed weight on CPU,
the backend choice) is computed once and cached; the cache is dropped when the module changes mode and
rebuilt when any parameter or BN statistic changes (storage or in-place version).
"""
from __future__ import annotations

import copy
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .ops.conv3d_bn_act import (
    ACTIVATIONS, _store, conv3d_bn_act, fold_bn, layout_of, output_shape, resolve_backend,
)
from .plan import Runner, make_runner

# oneDNN runners (packed weights) are kept per input shape (the packing is tuned to it); a model sees one or two.
_MAX_PACKED_SHAPES = 8


class Conv3dBNAct(nn.Module):
    """act(BN(conv(x)) + residual), with ``forward(x, residual=None, out=None, out_channel_offset=0)``.

    Parameters live in ``conv`` (nn.Conv3d) and ``norm`` (nn.BatchNorm3d, or None for a bare conv), so
    state dicts match a reference ``conv``/``norm`` pair. Keep them in float32: the eval path folds in
    fp32 and computes in x's dtype. With out, the result is written into out[:, offset : offset + C_out]
    and that view is returned.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        activation: str = "relu",
        norm: bool = True,
        bias: bool = False,
        eps: float = 1e-5,
        momentum: float = 0.1,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"Conv3dBNAct: activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias)
        self.norm: Optional[nn.BatchNorm3d] = nn.BatchNorm3d(out_channels, eps, momentum) if norm else None
        self.activation = activation
        self.backend = backend
        self._cache: Dict[tuple, object] = {}

    @classmethod
    def from_conv_bn(
        cls,
        conv: nn.Conv3d,
        bn: Optional[nn.BatchNorm3d] = None,
        activation: str = "relu",
        backend: str = "auto",
        copy_modules: bool = True,
    ) -> "Conv3dBNAct":
        """Wrap a reference conv (+ BN) pair; copies them unless copy_modules=False (then shares them)."""
        if not isinstance(conv, nn.Conv3d) or conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError(f"Conv3dBNAct.from_conv_bn: conv: expected an nn.Conv3d with groups=1 and zero "
                             f"padding, got {conv!r}")
        if bn is not None and (not isinstance(bn, nn.BatchNorm3d) or bn.num_features != conv.out_channels):
            raise ValueError(f"Conv3dBNAct.from_conv_bn: bn: expected BatchNorm3d({conv.out_channels}), got {bn!r}")
        if isinstance(conv.padding, str):
            raise ValueError(f"Conv3dBNAct.from_conv_bn: conv: padding={conv.padding!r} is not supported; "
                             "give explicit padding")
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.conv = copy.deepcopy(conv) if copy_modules else conv
        module.norm = (copy.deepcopy(bn) if copy_modules else bn) if bn is not None else None
        if activation not in ACTIVATIONS:
            raise ValueError(f"Conv3dBNAct: activation must be one of {ACTIVATIONS}, got {activation!r}")
        module.activation = activation
        module.backend = backend
        module._cache = {}
        module.train(conv.training)
        return module

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, backend={self.backend!r}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}  # prepared weights and runners (oneDNN's are opaque tensors): rebuilt on the next call
        return state

    def train(self, mode: bool = True) -> "Conv3dBNAct":
        self._cache = {}
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._cache = {}
        return super()._apply(fn, *args, **kwargs)

    # -- train mode ----------------------------------------------------------------------------------
    def _eager(self, x, residual, out, out_channel_offset):
        y = self.conv(x)
        if self.norm is not None:
            y = self.norm(y)
        if residual is not None:
            y = y + residual
        if self.activation == "relu":
            y = torch.relu(y)
        return _store(y, out, out_channel_offset)

    # -- eval mode -----------------------------------------------------------------------------------
    def _state_signature(self) -> tuple:
        tensors = list(self.conv.parameters())
        if self.norm is not None:
            tensors += list(self.norm.parameters()) + [self.norm.running_mean, self.norm.running_var]
        # Inference tensors (made under torch.inference_mode) have no version counter; they cannot be
        # modified outside inference mode, and inside it their storage is the signature.
        return tuple((t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype) for t in tensors
                     if t is not None)

    def _folded(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """fold_bn's fp32 (weight, bias), cached until a parameter or BN statistic changes (the cache is
        reset then, with everything prepared from it)."""
        sig = self._state_signature()
        if self._cache.get("signature") != sig:
            self._cache = {"signature": sig}
        if "folded" not in self._cache:
            with torch.no_grad():
                self._cache["folded"] = fold_bn(self.conv, self.norm)
        return self._cache["folded"]  # type: ignore[return-value]

    def _prepared(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, str]:
        """(weight in x's dtype and layout, fp32 bias, backend) for inputs like x, cached."""
        w32, b32 = self._folded()
        key = ("prepared", x.device, x.dtype, layout_of(x))
        hit = self._cache.get(key)
        if hit is None:
            w = w32.to(device=x.device, dtype=x.dtype).contiguous(memory_format=layout_of(x))
            chosen = resolve_backend(self.backend, str(x.device), x.dtype)
            hit = (w, b32.to(x.device).contiguous(), chosen)
            self._cache[key] = hit
        return hit  # type: ignore[return-value]

    def _cpu_runner(self, w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> Runner:
        """The fused model's CPU runner for this input shape (slowfast_kernels.plan.make_runner: oneDNN's fused
        conv with a packed weight, its 2D views, or our small-C_in / temporal Winograd kernels)."""
        key = ("runner", tuple(x.shape), x.dtype, layout_of(x))
        hit = self._cache.get(key)
        if hit is None:
            if sum(1 for k in self._cache if k[0] == "runner") >= _MAX_PACKED_SHAPES:
                self._cache = {k: v for k, v in self._cache.items() if k[0] != "runner"}
            c = self.conv
            hit = make_runner(w, b, c.stride, c.padding, c.dilation, self.activation, x, "cpu")
            self._cache[key] = hit
        return hit  # type: ignore[return-value]

    def _fused(self, x, residual, out, out_channel_offset, residual_is_scratch=False):
        c = self.conv
        if torch.compiler.is_compiling():
            # Tracing (torch.compile / torch.export): no cache lookups keyed on data pointers; the fold is
            # traced as ordinary ops on the parameters (constant-folded by freezing).
            w, b = fold_bn(c, self.norm)
            w = w.to(x.dtype).contiguous(memory_format=layout_of(x))
            return conv3d_bn_act(x, w, b.to(x.device), c.stride, c.padding, c.dilation, residual=residual,
                                 activation=self.activation, out=out, out_channel_offset=out_channel_offset,
                                 backend=self.backend)
        if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"Conv3dBNAct: x: expected float32, bfloat16 or float16 in eval mode, got {x.dtype}")
        w, b, chosen = self._prepared(x)
        if chosen != "cpu":
            return conv3d_bn_act(x, w, b, c.stride, c.padding, c.dilation, residual=residual,
                                 activation=self.activation, out=out, out_channel_offset=out_channel_offset,
                                 backend=chosen)
        if x.dim() != 5 or x.shape[1] != c.in_channels:
            raise ValueError(f"Conv3dBNAct: x: expected [N, {c.in_channels}, T, H, W], got {tuple(x.shape)}")
        fmt = layout_of(x)
        x = x.contiguous(memory_format=fmt)
        shape = output_shape(x.shape, w.shape, c.stride, c.padding, c.dilation)
        if residual is not None and tuple(residual.shape) != shape:
            raise ValueError(f"Conv3dBNAct: residual: expected shape {shape}, got {tuple(residual.shape)}")
        y = self._cpu_runner(w, b, x)(x, residual, residual_is_scratch)
        return _store(y.contiguous(memory_format=fmt), out, out_channel_offset)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None,
                out_channel_offset: int = 0, *, residual_is_scratch: bool = False) -> torch.Tensor:
        """residual_is_scratch: the caller no longer needs residual, so the eval path may accumulate into
        its memory (its contents are then undefined)."""
        if self.training:
            return self._eager(x, residual, out, out_channel_offset)
        return self._fused(x, residual, out, out_channel_offset, residual_is_scratch)


class Conv3dBNActMaxPool(Conv3dBNAct):
    """The SlowFast stem as one module: max_pool3d(act(BN(conv(x)))), ``forward(x)``.

    Shapes (stems at 224x224; Fast: C_out 8, kernel 5x7x7, padding (2,3,3); Slow: C_out 64, 1x7x7, (0,3,3)):
      input        x  [N, C_in, T, H, W]           e.g. [N, 3, T, 224, 224], NCDHW or channels_last_3d
      weight          [C_out, C_in, kd, kh, kw]     conv.weight; BN folded into it in eval (fp32)
      conv output     [N, C_out, To, Ho, Wo]        Ho = (H + 2 ph - kh) // sh + 1 = 112; not stored when the
                                                    triton/cuda backends fuse the pool
      pooled output   [N, C_out, To', Ho', Wo']     Ho' = (Ho + 2 pool_ph - pool_kh) // pool_sh + 1 = 56;
                                                    channels_last_3d in eval, x's dtype
    Parameters live in ``conv`` and ``norm`` as in Conv3dBNAct (state dicts match a reference conv/norm
    pair); the pool's kernel, stride and padding are plain attributes. Train mode is eager with autograd;
    eval runs conv3d_bn_act_maxpool with the fold cached.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 pool_kernel=(1, 3, 3), pool_stride=(1, 2, 2), pool_padding=(0, 1, 1), activation: str = "relu",
                 norm: bool = True, bias: bool = False, eps: float = 1e-5, momentum: float = 0.1,
                 backend: str = "auto") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, 1, activation, norm, bias, eps,
                         momentum, backend)
        self._set_pool(pool_kernel, pool_stride, pool_padding)

    def _set_pool(self, kernel, stride, padding) -> None:
        def triple(v):  # validated by conv3d_bn_act_maxpool, which names the argument
            return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)

        self.pool_kernel, self.pool_stride, self.pool_padding = triple(kernel), triple(stride), triple(padding)

    @classmethod
    def from_conv_bn_pool(cls, conv: nn.Conv3d, bn: Optional[nn.BatchNorm3d], pool: nn.MaxPool3d,
                          activation: str = "relu", backend: str = "auto",
                          copy_modules: bool = True) -> "Conv3dBNActMaxPool":
        """Wrap a reference stem's conv (+ BN) and its MaxPool3d (dilation 1, ceil_mode False, no indices)."""
        if (not isinstance(pool, nn.MaxPool3d) or pool.ceil_mode or pool.return_indices
                or pool.dilation not in (1, (1, 1, 1))):
            raise ValueError(f"Conv3dBNActMaxPool.from_conv_bn_pool: pool: expected an nn.MaxPool3d with dilation 1, "
                             f"ceil_mode=False and return_indices=False, got {pool!r}")
        if tuple(conv.dilation) != (1, 1, 1):
            raise ValueError(f"Conv3dBNActMaxPool.from_conv_bn_pool: conv: expected dilation 1, got {conv.dilation}")
        module = super().from_conv_bn(conv, bn, activation, backend, copy_modules)
        module.__class__ = cls
        module._set_pool(pool.kernel_size, pool.stride if pool.stride is not None else pool.kernel_size,
                         pool.padding)
        return module

    def extra_repr(self) -> str:
        return (f"pool_kernel={self.pool_kernel}, pool_stride={self.pool_stride}, pool_padding={self.pool_padding}, "
                + super().extra_repr())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .ops.conv3d_bn_act_maxpool import conv3d_bn_act_maxpool

        pool = dict(pool_kernel=self.pool_kernel, pool_stride=self.pool_stride, pool_padding=self.pool_padding)
        if self.training:
            return torch.nn.functional.max_pool3d(self._eager(x, None, None, 0), self.pool_kernel, self.pool_stride,
                                                  self.pool_padding)
        c = self.conv
        w, b = fold_bn(c, self.norm) if torch.compiler.is_compiling() else self._folded()
        return conv3d_bn_act_maxpool(x, w.to(x.device), b.to(x.device), c.stride, c.padding,
                                     activation=self.activation, backend=self.backend, **pool)
