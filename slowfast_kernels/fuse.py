"""fuse(model): a reference SlowFast turned into a fast inference model.

What changes against the reference (and why it is faster):
- every Conv3d + BatchNorm3d (+ ReLU) pair becomes one Conv3dBNAct running conv3d_bn_act with BN folded into
  the weights; a bottleneck's conv c carries the shortcut add and the final ReLU in its epilogue;
- channels_last_3d end to end (oneDNN and cuDNN's fastest layout; the channel slices of the lateral buffer
  are then row-strided views);
- concat fusion without torch.cat: one preallocated [N, Cs + Cl, T, H, W] buffer per lateral site;
  lateral_fuse writes channels [Cs, Cs + Cl) straight from the Fast tensor and the Slow pathway's last conv
  of the stage stores its output in channels [0, Cs) (the Triton kernel stores there directly; oneDNN and
  cuDNN return a tensor that is copied into the slice, one write of the Slow output instead of torch.cat's
  read and write of both pathways);
- optional CUDA graphs for fixed input shapes (small batches are launch-bound: ~100+ layers).
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from slowfast_reference.lateral import FuseFastToSlow, lateral_channels
from slowfast_reference.models import (
    MultiPathWayWithFuse,
    ResBlock,
    ResNetBasicHead,
    ResNetBasicStem,
    ResStage,
    SlowFast,
    check_inputs,
    head_pool,
)

from .modules import Conv3dBNAct
from .ops.conv3d_bn_act import fold_bn
from .ops.lateral_fuse import lateral_fuse

CL = torch.channels_last_3d


class FusedStem(nn.Module):
    def __init__(self, stem: ResNetBasicStem, backend: str) -> None:
        super().__init__()
        self.conv = Conv3dBNAct.from_conv_bn(stem.conv, stem.norm, activation="relu", backend=backend)
        pool = stem.pool
        self.pool_args = (pool.kernel_size, pool.stride, pool.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = self.pool_args
        return torch.nn.functional.max_pool3d(self.conv(x), k, s, p)


class FusedResBlock(nn.Module):
    """conv a (ReLU) -> conv b (ReLU) -> conv c with shortcut add + ReLU in its epilogue."""

    def __init__(self, block: ResBlock, backend: str) -> None:
        super().__init__()
        b = block.branch2
        self.a = Conv3dBNAct.from_conv_bn(b.conv_a, b.norm_a, activation="relu", backend=backend)
        self.b = Conv3dBNAct.from_conv_bn(b.conv_b, b.norm_b, activation="relu", backend=backend)
        self.c = Conv3dBNAct.from_conv_bn(b.conv_c, b.norm_c, activation="relu", backend=backend)
        self.shortcut = None
        if block.branch1_conv is not None:
            self.shortcut = Conv3dBNAct.from_conv_bn(block.branch1_conv, block.branch1_norm, activation="none",
                                                     backend=backend)

    def forward(self, x: torch.Tensor, out: Optional[torch.Tensor] = None, x_is_scratch: bool = False) -> torch.Tensor:
        """x_is_scratch: x is an intermediate of this model that nothing reads after this block."""
        residual = x if self.shortcut is None else self.shortcut(x)
        y = self.b(self.a(x))
        scratch = self.shortcut is not None or x_is_scratch
        return self.c(y, residual=residual, out=out, out_channel_offset=0, residual_is_scratch=scratch)


class FusedStage(nn.Module):
    def __init__(self, stage: ResStage, backend: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(FusedResBlock(b, backend) for b in stage.res_blocks)

    def forward(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Block 0 reads the stage input (the caller's, or a lateral buffer); later blocks read the previous
        # block's output, which only they use: their residual add may overwrite it.
        for i, block in enumerate(self.blocks[:-1]):
            x = block(x, x_is_scratch=i > 0)
        return self.blocks[-1](x, out=out, x_is_scratch=len(self.blocks) > 1)


class FusedLateral(nn.Module):
    """lateral_fuse with BN folded into the time-strided conv (or the parameter-free modes)."""

    def __init__(self, fuse: FuseFastToSlow, backend: str) -> None:
        super().__init__()
        self.mode, self.alpha, self.fusion, self.backend = fuse.mode, fuse.alpha, fuse.fusion, backend
        self.activation = "none"
        self.out_channels = 0
        w = b = None
        if fuse.mode == "time_strided_conv":
            conv = fuse.conv_fast_to_slow
            if fuse.norm is not None:
                w, b = fold_bn(conv, fuse.norm)
            else:
                w = conv.weight.detach().float()
                b = torch.zeros(conv.out_channels) if conv.bias is None else conv.bias.detach().float()
            self.activation = "relu" if fuse.activation is not None else "none"
            self.out_channels = conv.out_channels
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)

    def lateral_channels(self, fast_channels: int) -> int:
        if self.mode == "time_strided_conv":
            return self.out_channels
        return lateral_channels(self.mode, fast_channels, self.alpha)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        weight = bias = None
        if self.weight is not None:
            weight, bias = self._cast(fast.dtype, fast.device)
        return lateral_fuse(slow, fast, self.mode, self.alpha, weight, bias, fusion=self.fusion,
                            activation=self.activation, out=out, backend=self.backend)

    def _cast(self, dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        # Weights in the activations' dtype, cast once, not once per call; recast when the buffers change
        # (load_state_dict, in-place edits: storage or version differ).
        if torch.compiler.is_compiling():
            return self.weight.to(device=device, dtype=dtype), self.bias.to(device=device, dtype=dtype)
        key = (dtype, device) + tuple((t.data_ptr(), t._version) for t in (self.weight, self.bias))
        if getattr(self, "_cast_key", None) != key:
            self._cast_cache = (self.weight.to(device=device, dtype=dtype), self.bias.to(device=device, dtype=dtype))
            self._cast_key = key
        return self._cast_cache

    def _apply(self, fn, *args, **kwargs):
        self._cast_key = None
        return super()._apply(fn, *args, **kwargs)


def _run_into(stage: FusedStage, x: torch.Tensor, buf: Optional[torch.Tensor]) -> torch.Tensor:
    return stage(x, out=buf)


class FusedSlowFast(nn.Module):
    """Inference-only drop-in for a reference SlowFast: ``fused([slow, fast])`` (or ``fused([x])``).

    Inputs may be any layout; they are cast to the model dtype and channels_last_3d. Returns float32
    logits (or probabilities with head_act="softmax") like the reference.
    """

    def __init__(self, model: SlowFast, dtype: torch.dtype, backend: str) -> None:
        super().__init__()
        self.config, self.dtype, self.backend = model.config, dtype, backend
        self.slow_only = model.config.slow_only
        blocks = list(model.blocks)
        if self.slow_only:
            stem, stages, head = blocks[0], blocks[1:5], blocks[5]
            self.stems = nn.ModuleList([FusedStem(stem, backend)])
            self.stages = nn.ModuleList(nn.ModuleList([FusedStage(s, backend)]) for s in stages)
            self.laterals = nn.ModuleList()
        else:
            first, stages, head = blocks[0], blocks[1:5], blocks[6]
            self.stems = nn.ModuleList(FusedStem(s, backend) for s in first.multipathway_blocks)
            self.stages = nn.ModuleList(
                nn.ModuleList(FusedStage(p, backend) for p in s.multipathway_blocks) for s in stages)
            fusions = [first.multipathway_fusion] + [s.multipathway_fusion for s in stages[:3]]
            self.laterals = nn.ModuleList(FusedLateral(f, backend) for f in fusions)
        assert isinstance(head, ResNetBasicHead)
        self.head_act = head.head_act
        self.head_kernels = model.head_pool_kernels() or [None] * model.num_pathways
        self.register_buffer("head_weight", head.proj.weight.detach().float().clone())
        self.register_buffer("head_bias", head.proj.bias.detach().float().clone())
        # Parameters stay fp32 (folding is exact in fp32); each op computes in the activations' dtype
        # (Conv3dBNAct caches its cast weights). The head runs in fp32: a [N, 2304] x [2304, classes]
        # GEMM is negligible and keeps the logits as exact as the features allow.

    # -- one lateral site: allocate the concat buffer, let both producers write into it ---------------
    def _fuse(self, site: int, produce_slow, slow_channels: int, fast: torch.Tensor) -> torch.Tensor:
        lateral = self.laterals[site]
        if lateral.fusion == "sum":
            return lateral(produce_slow(None), fast)
        n, _, t_fast, h, w = fast.shape
        total = slow_channels + lateral.lateral_channels(fast.shape[1])
        buf = torch.empty((n, total, t_fast // self.config.alpha, h, w), dtype=fast.dtype,
                          device=fast.device, memory_format=CL)
        slow = produce_slow(buf)
        return lateral(slow, fast, out=buf)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype=self.dtype).contiguous(memory_format=CL)

    def features(self, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if self.slow_only:
            x = self.stems[0](self._prepare(inputs[0]))
            for stage in self.stages:
                x = stage[0](x)
            return [x]
        slow_in, fast = (self._prepare(t) for t in inputs)
        fast = self.stems[1](fast)

        def stem_slow(buf):
            y = self.stems[0](slow_in)
            if buf is None:
                return y
            # max-pool has no out= into a channel slice: the stem site copies its 64 channels (small).
            view = buf[:, : y.shape[1]]
            view.copy_(y)
            return view

        x = self._fuse(0, stem_slow, self.stems[0].conv.out_channels, fast)
        for site, (slow_stage, fast_stage) in enumerate(self.stages[:3], start=1):  # res2..res4: a lateral each
            fast = fast_stage(fast)
            produce = functools.partial(_run_into, slow_stage, x)
            x = self._fuse(site, produce, slow_stage.blocks[-1].c.out_channels, fast)
        slow_stage, fast_stage = self.stages[3]  # res5: no lateral
        return [slow_stage(x), fast_stage(fast)]

    def head(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The reference head in eval mode, in fp32: each pathway pooled with its fixed window (stride 1),
        the classifier at every remaining position, softmax per position (head_act), mean over positions.
        Without softmax the mean of the logits is the logits of the mean feature (the classifier is
        linear), so the positions are averaged first."""
        pooled = []
        for f, kernel in zip(feats, self.head_kernels):
            if kernel is None or all(k >= size for k, size in zip(kernel, f.shape[2:])):
                # one position: a global mean, accumulated in fp32 without a widened copy of f
                pooled.append(f.mean(dim=(2, 3, 4), keepdim=True, dtype=torch.float32))
            else:
                pooled.append(head_pool(f.float(), kernel))
        x = torch.cat(pooled, dim=1)
        if self.head_act != "softmax":
            return torch.nn.functional.linear(x.mean(dim=(2, 3, 4)), self.head_weight, self.head_bias)
        logits = torch.nn.functional.linear(x.permute(0, 2, 3, 4, 1), self.head_weight, self.head_bias)
        return logits.softmax(dim=-1).mean(dim=(1, 2, 3))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        check_inputs(self.config, inputs)
        return self.head(self.features(inputs))

    def from_video(self, video: torch.Tensor, fast_index: torch.Tensor, **pack_kwargs) -> torch.Tensor:
        """Raw decoded uint8 video [V, H, W, 3] (or [N, V, H, W, 3]) -> logits, through pack_pathways."""
        return self(_pack_for(self, video, fast_index, pack_kwargs))


def _pack_for(model: FusedSlowFast, video: torch.Tensor, fast_index, pack_kwargs) -> List[torch.Tensor]:
    """pack_pathways in the fused model's dtype and layout; a single clip gets a batch dimension."""
    from .ops.pack_pathways import pack_pathways

    pack_kwargs.setdefault("dtype", model.dtype)
    pack_kwargs.setdefault("channels_last", True)
    pack_kwargs.setdefault("backend", model.backend)
    slow, fast = pack_pathways(video, fast_index, model.config.alpha, **pack_kwargs)
    if video.dim() == 4:
        slow, fast = slow.unsqueeze(0), fast.unsqueeze(0)
    return [fast] if model.slow_only else [slow, fast]


class CUDAGraphRunner(nn.Module):
    """Captures the fused model once per input signature (shapes, dtypes) and replays it."""

    def __init__(self, model: FusedSlowFast) -> None:
        super().__init__()
        self.model = model
        self._graphs: Dict[Tuple, Tuple[torch.cuda.CUDAGraph, List[torch.Tensor], torch.Tensor]] = {}

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        check_inputs(self.model.config, inputs)
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        if key not in self._graphs:
            static_in = [t.detach().clone() for t in inputs]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside capture: lazy init, cuDNN/Triton choices
                    self.model(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        for dst, src in zip(static_in, inputs):
            dst.copy_(src)
        graph.replay()
        return static_out.clone()

    def from_video(self, video: torch.Tensor, fast_index: torch.Tensor, **pack_kwargs) -> torch.Tensor:
        return self(_pack_for(self.model, video, fast_index, pack_kwargs))


def fuse(
    model: SlowFast,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
    backend: str = "auto",
    cuda_graph: bool = False,
) -> nn.Module:
    """Turn an eval-mode reference SlowFast into a fused inference model (see module docstring).

    fused(inputs) equals model(inputs) within 1e-4 relative in fp32 (2x eager's own error in bf16/fp16).
    The reference model is not modified.
    """
    if not isinstance(model, SlowFast):
        raise TypeError(f"fuse: model must be a slowfast_reference.SlowFast, got {type(model).__name__}")
    if model.training:
        raise ValueError("fuse: model is in train mode; fuse() builds an inference model: call model.eval() first")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"fuse: dtype must be float32, bfloat16 or float16, got {dtype}")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"fuse: model weight {name} has non-finite values (NaN or inf); refusing to fuse")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"fuse: cuda_graph=True needs a CUDA device, got {device}")
    with torch.no_grad():
        fused = FusedSlowFast(model, dtype, backend).to(device)
    fused.eval()
    return CUDAGraphRunner(fused) if cuda_graph else fused
