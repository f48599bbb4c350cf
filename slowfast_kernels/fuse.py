"""fuse(model): a reference SlowFast turned into a fast inference model.

What changes against the reference (and why it is faster):
- every Conv3d + BatchNorm3d (+ ReLU) pair becomes one FoldedConv: BN folded into fp32 weight and bias at
  fuse() time, a bottleneck's conv c carrying the shortcut add and the final ReLU in its epilogue (on CPU
  accumulated in place into the shortcut's memory);
- each layer's runner (cast and packed weights, backend) is prepared once per input shape
  (slowfast_kernels.plan), so a forward is a sequence of kernel calls; the last `max_cached_shapes` input
  signatures keep theirs (LRU), so a stream of mixed shapes runs in bounded memory;
- channels_last_3d end to end (oneDNN's and cuDNN's fastest layout for these convs);
- concat fusion without a concatenated tensor: the next stage's first convs (conv a and the shortcut of
  block 0) read the Slow output and the lateral tensor as two K-ranges of one conv,
  conv(concat(s, l), W) = conv(s, W_s) + conv(l, W_l), the lateral part's partial sum entering the Slow
  part's epilogue as its residual; neither pathway's activations are copied;
- on CPU, activation memory allocated once and reused by later forwards (plan.reuse_cpu_buffers: no
  fresh pages faulted in per forward);
- the stems as one conv3d_bn_act_maxpool call on CUDA (the small-C_in Triton kernels, pool fused where its
  rule says so); on CPU the small-C_in CPU kernel, and the wide temporal 3x1x1 convs by Winograd F(4, 3);
- CUDA graphs by default on CUDA (small batches are launch-bound: ~100+ kernels per forward).
"""
from __future__ import annotations

import collections
import threading
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from slowfast_reference.lateral import FuseFastToSlow, lateral_channels
from slowfast_reference.models import ResBlock, ResNetBasicHead, ResNetBasicStem, ResStage, SlowFast, cat_pooled, \
    check_inputs, head_pool

from .ops.conv3d_bn_act_maxpool import MAX_SMALL_CIN, conv3d_bn_act_maxpool
from .ops.conv3d_bn_act_maxpool import resolve_backend as resolve_stem_backend
from .ops.conv3d_bn_act import resolve_backend
from .ops.conv3d_stem_amx import conv3d_stem_amx, stem_amx_precision
from .ops.conv3d_stem_amx import supports as stem_amx_supports
from .ops.conv3d_small_cin import conv3d_small_cin_bf16, small_cin_bf16_wins
from .ops.lateral_fuse import lateral_fuse
from .ops.max_pool3d_cl import max_pool3d_cl
from .backends import BackendUnavailable
from . import replay
from .plan import (DEFAULT_MAX_CACHED_SHAPES, FoldedConv, _inputs_finite, _triple, all_finite,
                   check_max_cached_shapes, inputs_known_finite, release_cpu_buffers, reuse_cpu_buffers,
                   runner_changes)

CL = torch.channels_last_3d

# A stage input: one tensor, or (slow, lateral) read as two K-ranges of the consuming convs.
StageInput = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def _conv(x: StageInput, conv: FoldedConv) -> torch.Tensor:
    """conv over x, or over concat(slow, lateral) without building it."""
    if isinstance(x, torch.Tensor):
        return conv.run(x)
    slow, lat = x
    n = slow.shape[1]
    partial = conv.run(lat, part=("tail", n))
    return conv.run(slow, residual=partial, residual_is_scratch=True, part=("head", n))


class FusedStem(nn.Module):
    """conv (BN folded) + ReLU + max-pool. On CUDA (and the triton backend) one conv3d_bn_act_maxpool call:
    the small-C_in Triton kernels, cuDNN's slowest layer otherwise (the Fast stem: 28.7 ms of a 52 ms
    batch-32 forward on an H200), with the pool fused where its shape rule says so. On CPU the AMX kernel
    (conv and pool in one pass, `amx`) where it runs, else for a bf16 model on AVX512_BF16 the bf16
    small-C_in kernel on the raw clip (`bf16_from_raw`, both stems), else the plan's runner (the
    small-C_in CPU kernel or oneDNN); then the native channels_last pool (ops/max_pool3d_cl.py: no argmax)."""

    def __init__(self, stem: ResNetBasicStem, backend: str) -> None:
        super().__init__()
        self.conv = FoldedConv(stem.conv, stem.norm, "relu", backend)
        pool = stem.pool
        self.pool_args = tuple(_triple(a) for a in (pool.kernel_size, pool.stride, pool.padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = self.pool_args
        conv = self.conv
        if conv.in_channels <= MAX_SMALL_CIN and conv.dilation == (1, 1, 1) \
                and resolve_stem_backend(conv.backend, str(x.device), x.dtype) in ("cuda", "triton"):
            return conv3d_bn_act_maxpool(x, conv.weight, conv.bias, conv.stride, conv.padding, activation="relu",
                                         pool_kernel=k, pool_stride=s, pool_padding=p, backend=conv.backend)
        y = conv.run(x)
        if y.device.type == "cpu" and resolve_backend(conv.backend, "cpu", y.dtype) == "cpu":
            return max_pool3d_cl(y, k, s, p)
        return torch.nn.functional.max_pool3d(y, k, s, p)

    def bf16_from_raw(self, x: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """The stem of the raw input x for a bf16 model on a CPU with AVX512_BF16 and no AMX: the bf16
        small-C_in kernel reads x as given (no cast-and-layout pass; ops/conv3d_small_cin.py), then the
        native pool. None where its rule leaves the stem to the plan's runner (small_cin_bf16_wins: up to 64
        output channels, both stems, on the avx512 tier), or for another dtype or backend. Exact semantics (no zero-weight
        products: NaN and inf propagate), so no finiteness condition."""
        conv = self.conv
        if dtype != torch.bfloat16 or x.device.type != "cpu" or resolve_backend(conv.backend, "cpu", dtype) != "cpu":
            return None
        if not small_cin_bf16_wins(x, conv.weight.shape, conv.stride, conv.padding, conv.dilation):
            return None
        y = conv3d_small_cin_bf16(x, conv.weight, conv.bias, conv.stride, conv.padding, activation="relu")
        return max_pool3d_cl(y, *self.pool_args)

    def amx(self, x: torch.Tensor, dtype: torch.dtype,
            nonfinite: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The stem (conv, ReLU, pool) of the raw input x for a model of `dtype` in one AMX pass
        (ops/conv3d_stem_amx.py), or None where it does not run: no AMX, a dtype or shape its rule leaves to
        oneDNN, a backend other than the CPU one, or tracing. The kernel's zero weight columns would turn an
        inf into NaN, so either the inputs are known to be finite, or nonfinite (an int32 [1] tensor) is
        given: the kernel sets it when a value it read was NaN or inf, and the caller drops the result."""
        conv = self.conv
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return None
        if nonfinite is None and _inputs_finite.get() is not True:
            return None
        if resolve_backend(conv.backend, "cpu", dtype) != "cpu":
            return None
        precision = stem_amx_precision(dtype, conv.weight.shape)
        if precision is None or stem_amx_supports(x, conv.weight.shape, conv.stride, conv.padding,
                                                  conv.dilation) is not None:
            return None
        k, s, p = self.pool_args
        if k[0] != 1 or s[0] != 1 or p[0] != 0 or k[1] != k[2] or s[1] != s[2] or p[1] != p[2] or 2 * p[1] > k[1]:
            return None
        return conv3d_stem_amx(x, conv.weight, conv.bias, conv.stride, conv.padding, pool_kernel=k, pool_stride=s,
                               pool_padding=p, activation="relu", precision=precision, nonfinite=nonfinite)


class FusedResBlock(nn.Module):
    """conv a (ReLU) -> conv b (ReLU) -> conv c with the shortcut add + ReLU in its epilogue."""

    def __init__(self, block: ResBlock, backend: str) -> None:
        super().__init__()
        b = block.branch2
        self.a = FoldedConv(b.conv_a, b.norm_a, "relu", backend)
        self.b = FoldedConv(b.conv_b, b.norm_b, "relu", backend)
        self.c = FoldedConv(b.conv_c, b.norm_c, "relu", backend)
        self.shortcut = None
        if block.branch1_conv is not None:
            self.shortcut = FoldedConv(block.branch1_conv, block.branch1_norm, "none", backend)

    def forward(self, x: StageInput, x_is_scratch: bool = False) -> torch.Tensor:
        """x_is_scratch: x is an intermediate of this model that nothing reads after this block."""
        if self.shortcut is None:
            if not isinstance(x, torch.Tensor):
                raise ValueError("FusedResBlock: a block without a shortcut conv reads one tensor")
            residual, scratch = x, x_is_scratch
        else:
            residual, scratch = _conv(x, self.shortcut), True
        y = self.b.run(_conv(x, self.a))
        return self.c.run(y, residual=residual, residual_is_scratch=scratch)


class FusedStage(nn.Module):
    def __init__(self, stage: ResStage, backend: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(FusedResBlock(b, backend) for b in stage.res_blocks)

    def forward(self, x: StageInput) -> torch.Tensor:
        # Block 0 reads the stage input (the caller's, or a lateral site's pair); later blocks read the previous
        # block's output, which only they use: their residual add may overwrite it.
        for i, block in enumerate(self.blocks):
            x = block(x, x_is_scratch=i > 0)
        return x


class FusedLateral(nn.Module):
    """The lateral tensor of one site: the time-strided conv with BN folded (a FoldedConv), or the
    parameter-free gathers through lateral_fuse; fusion says how the Slow pathway takes it."""

    def __init__(self, fuse: FuseFastToSlow, backend: str) -> None:
        super().__init__()
        self.mode, self.alpha, self.fusion, self.backend = fuse.mode, fuse.alpha, fuse.fusion, backend
        self.conv = None
        if fuse.mode == "time_strided_conv":
            activation = "relu" if fuse.activation is not None else "none"
            self.conv = FoldedConv(fuse.conv_fast_to_slow, fuse.norm, activation, backend)

    def lateral(self, fast: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            return self.conv.run(fast)
        n, c, t, h, w = fast.shape
        channels = lateral_channels(self.mode, c, self.alpha)
        out = torch.empty((n, channels, t // self.alpha, h, w), dtype=fast.dtype, device=fast.device,
                          memory_format=CL)
        no_slow = out[:, :0]  # lateral_fuse concatenates after the Slow channels: there are none here
        return lateral_fuse(no_slow, fast, self.mode, self.alpha, out=out, backend=self.backend)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor, slow_is_scratch: bool = True) -> StageInput:
        lat = self.lateral(fast)
        if self.fusion == "concat":
            return slow, lat
        return slow.add_(lat) if slow_is_scratch else slow + lat


class FusedSlowFast(nn.Module):
    """Inference-only drop-in for a reference SlowFast: ``fused([slow, fast])`` (or ``fused([x])``).

    Inputs: floating-point tensors (normalized frames, as the reference takes) on the model's device, any
    layout; they are cast to the model dtype and channels_last_3d. Returns float32 logits (or probabilities
    with head_act="softmax") like the reference; NaN and inf propagate as in the reference. The weights stay
    float32 buffers whatever the compute dtype: casting the model (.half(), .to(dtype)) is refused, the
    dtype is chosen by fuse(model, dtype=...).

    Runners are kept for the last `max_cached_shapes` input signatures (set_max_cached_shapes); on CPU a
    signature that pushes one out also returns the buffer cache's idle blocks (sized for the old shapes, and
    the pushed-out packed weights) and the C heap's free pages to the system (plan.release_cpu_buffers).
    Copies, pickles and torch.save drop every runner; they are rebuilt at the next forward.
    """

    def __init__(self, model: SlowFast, dtype: torch.dtype, backend: str,
                 max_cached_shapes: int = DEFAULT_MAX_CACHED_SHAPES) -> None:
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
        self.preset = getattr(model, "preset", None)  # set by load_checkpoint: the weights' test preset
        self.head_kernels = model.head_pool_kernels() or [None] * model.num_pathways
        # The head runs in fp32: a [N, 2304] x [2304, classes] GEMM is negligible and keeps the logits as
        # exact as the features allow.
        self.register_buffer("head_weight", head.proj.weight.detach().float().clone())
        self.register_buffer("head_bias", head.proj.bias.detach().float().clone())
        self._signatures_lock = threading.Lock()
        # CPU: replay the backbone's recorded op program (replay.py) for an input signature seen before.
        self.cpu_replay = True
        self._programs: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
        self.set_max_cached_shapes(max_cached_shapes)

    def set_max_cached_shapes(self, n: int) -> None:
        """Keep the runners of the last n input signatures (n >= 1; fuse's max_cached_shapes). Runners beyond
        the new bound are dropped and their memory returned to the system (release_cpu_buffers)."""
        self.max_cached_shapes = check_max_cached_shapes(n, type(self).__name__)
        self._signatures: "collections.OrderedDict[tuple, None]" = collections.OrderedDict()
        self._programs.clear()
        dropped = False
        for m in self.modules():
            if isinstance(m, FoldedConv):
                m.max_cached_shapes = n
                for runners in m._runners.values():
                    while len(runners) > n:
                        runners.popitem(last=False)
                        dropped = True
        if dropped:
            release_cpu_buffers()

    def reset(self) -> None:
        """Forget every prepared runner (after editing weights in place; load_state_dict and .to() reset)."""
        self._programs.clear()
        for m in self.modules():
            if isinstance(m, FoldedConv):
                m.reset()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_signatures"] = collections.OrderedDict()
        state["_programs"] = collections.OrderedDict()
        del state["_signatures_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._signatures_lock = threading.Lock()
        # pickled by a version without op programs
        self.__dict__.setdefault("cpu_replay", True)
        self.__dict__.setdefault("_programs", collections.OrderedDict())

    def _apply(self, fn, *args, **kwargs):
        device = self.head_weight.device
        probe = fn(torch.zeros((), device=device))
        if probe.dtype != torch.float32:
            raise TypeError(f"fused model: cannot be cast to {probe.dtype}: its weights stay float32 and the compute "
                            f"dtype ({self.dtype}) is fixed when fusing: use fuse(model, dtype={probe.dtype})")
        return super()._apply(fn, *args, **kwargs)

    def _check_inputs(self, inputs: Sequence[torch.Tensor]) -> None:
        check_inputs(self.config, inputs)
        device = self.head_weight.device
        names = ("slow",) if self.slow_only else ("slow", "fast")
        for name, t in zip(names, inputs):
            if not t.is_floating_point():
                raise ValueError(f"inputs[{name}]: expected a floating-point tensor of normalized frames (as the "
                                 f"reference model takes), got {t.dtype}; decoded uint8 video goes through "
                                 "fused.from_video() or pack_pathways()")
            if t.device != device:
                raise ValueError(f"inputs[{name}]: is on {t.device}, the fused model on {device}: move the input "
                                 f"(.to('{device}')) or fuse the model for that device (fuse(model, device=...))")

    def _note_signature(self, inputs: Sequence[torch.Tensor]) -> bool:
        """Track the recent input signatures; returns whether one was pushed out. Then the CPU buffer cache's
        idle blocks are freed before the forward (their sizes are the old shape's: kept, a stream of mixed
        shapes would hold up to the cache's 4 GB bound), and again after it (the pushed-out runners' packed
        weights, freed during the forward, land in the cache), with the C heap trimmed (plan.trim_heap)."""
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        with self._signatures_lock:
            if key in self._signatures:
                self._signatures.move_to_end(key)
                return False
            self._signatures[key] = None
            evicted = len(self._signatures) > self.max_cached_shapes
            while len(self._signatures) > self.max_cached_shapes:
                self._signatures.popitem(last=False)
            if evicted:  # the programs hold the pushed-out runners' packed weights
                self._programs.clear()
        if evicted:
            release_cpu_buffers(trim=False)  # the forward reuses the heap's free memory; trimmed after it
        return evicted

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype=self.dtype).contiguous(memory_format=CL)

    def _stem(self, i: int, x: torch.Tensor, done: Optional[Sequence[Optional[torch.Tensor]]] = None
              ) -> torch.Tensor:
        """Pathway i's stem on its raw input: done[i] when the caller ran it already, else the AMX kernel where
        it runs, else the AVX512_BF16 one (both read x as given), else x cast to the model dtype and
        channels_last_3d, then the stem's conv and pool."""
        if done is not None and done[i] is not None:
            return done[i]
        stem = self.stems[i]
        y = stem.amx(x, self.dtype)
        if y is None:
            y = stem.bf16_from_raw(x, self.dtype)
        return y if y is not None else stem(self._prepare(x))

    def _cpu_stems(self, inputs: Sequence[torch.Tensor]) -> Tuple[List[Optional[torch.Tensor]], bool]:
        """The CPU forward's finiteness check, with the AMX stems run first: a pathway whose stem runs on AMX is
        checked by the kernel itself (it reads every value its windows use, as bf16: see conv3d_stem_amx's
        nonfinite), any other input by one sum (plan.all_finite). Returns the stems' outputs (None where not
        run; all None when an input is not finite: the AMX results are then not the convs', and the stems run
        again by the exact path) and whether the inputs are finite. Saves the sums over the raw clips (~1.2 ms
        of a ~85 ms bf16 R50 8x8 forward, batch 1, 2 cores)."""
        flag = torch.zeros(1, dtype=torch.int32)
        done = [stem.amx(t, self.dtype, nonfinite=flag) for stem, t in zip(self.stems, inputs)]
        finite = all(all_finite(t) for t, y in zip(inputs, done) if y is None) and not flag.item()
        return (done if finite else [None] * len(inputs)), finite

    def backbone(self, inputs: Sequence[torch.Tensor],
                 stems: Optional[Sequence[Optional[torch.Tensor]]] = None) -> List[torch.Tensor]:
        """Each pathway's res5 output (NDHWC, the model's dtype), from already checked inputs (stems: outputs
        of the stems already run, None where not)."""
        if self.slow_only:
            x = self._stem(0, inputs[0], stems)
            for stage in self.stages:
                x = stage[0](x)
            return [x]
        fast = self._stem(1, inputs[1], stems)
        x = self.laterals[0](self._stem(0, inputs[0], stems), fast)
        for lateral, (slow_stage, fast_stage) in zip(self.laterals[1:], self.stages[:3]):  # res2..res4
            fast = fast_stage(fast)
            x = lateral(slow_stage(x), fast)
        slow_stage, fast_stage = self.stages[3]  # res5: no lateral
        return [slow_stage(x), fast_stage(fast)]

    def _pooled(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """[N, sum C, t, h, w] fp32: each pathway pooled with its fixed head window (stride 1), concatenated."""
        pooled = []
        for f, kernel in zip(feats, self.head_kernels):
            if kernel is None or all(k >= size for k, size in zip(kernel, f.shape[2:])):
                # one position: a global mean, accumulated in fp32 without a widened copy of f
                pooled.append(f.mean(dim=(2, 3, 4), keepdim=True, dtype=torch.float32))
            else:
                pooled.append(head_pool(f.float(), kernel))
        return cat_pooled(pooled, self.head_kernels)

    def head(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The reference head in eval mode, in fp32: each pathway pooled with its fixed window (stride 1),
        the classifier at every remaining position, softmax or sigmoid per position (head_act), mean over
        positions.
        Without softmax the mean of the logits is the logits of the mean feature (the classifier is
        linear), so the positions are averaged first."""
        x = self._pooled(feats)
        if self.head_act is None:
            return torch.nn.functional.linear(x.mean(dim=(2, 3, 4)), self.head_weight, self.head_bias)
        logits = torch.nn.functional.linear(x.permute(0, 2, 3, 4, 1), self.head_weight, self.head_bias)
        probs = logits.softmax(dim=-1) if self.head_act == "softmax" else logits.sigmoid()
        return probs.mean(dim=(1, 2, 3))

    def _run(self, inputs: Sequence[torch.Tensor], after_backbone: Callable[[List[torch.Tensor]], Any]):
        self._check_inputs(inputs)
        return self._backbone_then(inputs, after_backbone)

    def _backbone_then(self, inputs: Sequence[torch.Tensor], after_backbone: Callable[[List[torch.Tensor]], Any]):
        """after_backbone(the backbone's maps) for checked inputs; on CPU inside the runner-cache bookkeeping
        (_note_signature), the buffer cache and one finiteness check (the detector's forward shares it)."""
        # no_grad: inference only; also lets weights made under inference_mode be used outside it.
        cpu = inputs[0].device.type == "cpu"
        if not cpu or torch.compiler.is_compiling():
            with torch.no_grad():
                return after_backbone(self.backbone(inputs))
        evicted = self._note_signature(inputs)
        try:
            with torch.no_grad(), reuse_cpu_buffers():
                # One finiteness check per input here spares every oneDNN ReLU layer its own (plan: NaN and inf).
                stems, finite = self._cpu_stems(inputs)
                with inputs_known_finite(finite):
                    maps = self._cpu_backbone(inputs, stems) if finite else self.backbone(inputs, stems)
                    return after_backbone(maps)
        finally:
            if evicted:  # the pushed-out runners' packed weights were freed into the cache during this forward
                release_cpu_buffers()

    def _cpu_backbone(self, inputs: Sequence[torch.Tensor], stems: Sequence[Optional[torch.Tensor]]
                      ) -> List[torch.Tensor]:
        """backbone(inputs, stems) for finite CPU inputs: the first call of a signature (shapes, strides,
        dtypes of the inputs and of the stems already run) runs it and makes the runners, the second records
        its op program (replay.record), later ones replay that (no module calls, runner lookups or views
        built in Python: ~2 ms of a forward). A program is dropped with its runners (a reset since its
        recording: plan.runner_changes; a signature pushed out), and not kept when a runner was made while it
        was recorded; cpu_replay = False runs backbone every time."""
        if not self.cpu_replay:
            return self.backbone(inputs, stems)
        args = list(inputs) + list(stems)
        key = tuple(None if t is None else (tuple(t.shape), t.stride(), t.storage_offset(), t.dtype) for t in args)
        changes = runner_changes()
        with self._signatures_lock:
            entry = self._programs.get(key)
            if isinstance(entry, tuple) and entry[1][1] != changes[1]:  # a reset since: every program is stale
                self._programs.clear()
                entry = "seen"
            elif entry is None:
                self._programs[key] = "seen"
        if isinstance(entry, tuple):
            return entry[0](args)
        if entry != "seen":  # first sight (None), or recording was refused (why): the Python path
            return self.backbone(inputs, stems)
        maps, program, why = replay.record(lambda: self.backbone(inputs, stems), args)
        with self._signatures_lock:
            if program is not None and runner_changes() == changes:
                self._programs[key] = (program, changes)
            elif program is None:
                self._programs[key] = why
        return maps

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self._run(inputs, self.head)

    def features(self, inputs: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The reference's SlowFast.features, fp32: {"slow": [N, 2048], "fast": [N, 256], "concat": [N, 2304]}
        (Slow-only: "slow", "concat"), the head's pooled map averaged over its positions, before the
        classifier (with head_act=None, linear(features["concat"], head_weight, head_bias) are the logits)."""
        return self._run(inputs, self._feature_vectors)

    def logits_and_features(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """forward's output and features(inputs) from one pass through the backbone."""
        return self._run(inputs, lambda maps: (self.head(maps), self._feature_vectors(maps)))

    def _feature_vectors(self, maps: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        concat = self._pooled(maps).mean(dim=(2, 3, 4))
        widths = [m.shape[1] for m in maps]
        out = dict(zip(("slow", "fast"), concat.split(widths, dim=1)))
        out["concat"] = concat
        return out

    def from_video(self, video: torch.Tensor, fast_index: torch.Tensor, **pack_kwargs) -> torch.Tensor:
        """Raw decoded uint8 video [V, H, W, 3] (or [N, V, H, W, 3]) -> logits, through pack_pathways.
        preset="name" (e.g. self.preset) prepares it by that checkpoint family's rules instead
        (slowfast_kernels.presets; spatial_idx then picks the preset's crop)."""
        return self(_pack_for(self, video, fast_index, pack_kwargs))


def _pack_for(model: FusedSlowFast, video: torch.Tensor, fast_index, pack_kwargs) -> List[torch.Tensor]:
    """pack_pathways in the fused model's dtype and layout; a single clip gets a batch dimension."""
    from .ops.pack_pathways import pack_pathways

    pack_kwargs.setdefault("dtype", model.dtype)
    pack_kwargs.setdefault("channels_last", True)
    pack_kwargs.setdefault("backend", model.backend)
    preset = pack_kwargs.pop("preset", None)
    if preset is not None:
        from .presets import get_preset

        crop_idx = pack_kwargs.pop("spatial_idx", 1)
        slow, fast = get_preset(preset).pack(video, fast_index, model.config.alpha, crop_idx, **pack_kwargs)
    else:
        slow, fast = pack_pathways(video, fast_index, model.config.alpha, **pack_kwargs)
    if video.dim() == 4:
        slow, fast = slow.unsqueeze(0), fast.unsqueeze(0)
    return [fast] if model.slow_only else [slow, fast]


class CUDAGraphRunner(nn.Module):
    """Captures the fused model once per input signature (shapes, dtypes) and replays it.

    strict=False (cuda_graph="auto"): where capture fails, says why once and runs the model without a graph
    for that signature; strict=True (cuda_graph=True) raises instead."""

    def __init__(self, model: FusedSlowFast, strict: bool = True) -> None:
        super().__init__()
        self.model = model
        self.strict = strict
        self._graphs: Dict[Tuple, Optional[Tuple[torch.cuda.CUDAGraph, List[torch.Tensor], torch.Tensor]]] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_graphs"] = {}  # captured graphs are process state: recaptured at the next forward
        return state

    @property
    def config(self):
        return self.model.config

    @property
    def preset(self):
        return self.model.preset

    def _capture(self, inputs: Sequence[torch.Tensor]):
        static_in = [t.detach().clone() for t in inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside capture: lazy init, runners, cuDNN algorithm choices
                self.model(static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.model(static_in)
        return graph, static_in, static_out

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        self.model._check_inputs(inputs)
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(inputs)
            except Exception as exc:  # capture is impossible here (e.g. a kernel that synchronizes)
                if self.strict:
                    raise RuntimeError(f"fuse: CUDA graph capture failed for inputs {[k[0] for k in key]}: {exc}; "
                                       "pass cuda_graph='auto' to fall back to running without a graph") from exc
                warnings.warn(f"fuse: CUDA graph capture failed for inputs {[k[0] for k in key]} ({exc}); this "
                              "input shape runs without a CUDA graph", stacklevel=2)
                self._graphs[key] = None
        captured = self._graphs[key]
        if captured is None:
            return self.model(inputs)
        graph, static_in, static_out = captured
        for dst, src in zip(static_in, inputs):
            dst.copy_(src)
        graph.replay()
        return static_out.clone()

    def from_video(self, video: torch.Tensor, fast_index: torch.Tensor, **pack_kwargs) -> torch.Tensor:
        return self(_pack_for(self.model, video, fast_index, pack_kwargs))

    def features(self, inputs: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """FusedSlowFast.features, run without a graph (a graph is captured for forward only)."""
        return self.model.features(inputs)

    def logits_and_features(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return self.model.logits_and_features(inputs)


def _check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"fuse: device: expected a torch.device or a name like 'cpu' or 'cuda:0', got {device!r}"
                         f" ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise BackendUnavailable(f"fuse: device={device!r}: CUDA is not available ({why}); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"fuse: device={device!r}: there are {torch.cuda.device_count()} CUDA devices")
    elif dev.type not in ("cpu", "meta"):
        raise ValueError(f"fuse: device: expected a cpu or cuda device, got {device!r}")
    return dev


def _warn_slow_cpu_bf16() -> None:
    """bf16 on a CPU without native bf16 (AVX512_BF16 / AMX-BF16): oneDNN cannot run the convs in bf16, the
    reference backend's eager bf16 convs do, several times slower than float32. Said once per call."""
    from . import cpu_isa

    isa = cpu_isa.current()
    if not isa.native_bf16:
        warnings.warn(f"fuse: dtype=torch.bfloat16 on a CPU without native bfloat16 ({isa.model}: no AVX512_BF16 or "
                      "AMX-BF16): the convs run as eager bf16 (the reference backend), slower than float32; use "
                      "dtype=torch.float32 on this CPU", stacklevel=3)


def fuse(
    model: nn.Module,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
    backend: str = "auto",
    cuda_graph: Union[bool, str] = "auto",
    max_cached_shapes: int = DEFAULT_MAX_CACHED_SHAPES,
) -> nn.Module:
    """Turn an eval-mode reference SlowFast into a fused inference model (see module docstring).

    model: a slowfast_reference SlowFast, or a PyTorchVideo model object (slowfast_r50(), create_slowfast(...),
    slow_r50(), ...) whose weights are read into the reference model of the same architecture.

    fused(inputs) equals model(inputs) within 1e-4 relative in fp32 (2x eager's own error in bf16/fp16).
    cuda_graph: "auto" (default) captures a CUDA graph per input shape on CUDA devices and falls back, with
    a warning, where capture fails; True requires graphs (CUDA only); False never uses them. Works alike
    inside and outside torch.inference_mode() / torch.no_grad(). The reference model is not modified.
    max_cached_shapes: how many input signatures (shapes, dtypes) keep their prepared runners (LRU, default
    4; each holds up to one packed copy of the conv weights, ~130 MB for R50 in fp32); more signatures
    still run, rebuilding runners for the ones pushed out.
    """
    from slowfast_reference.detection import SlowFastDetector  # detectors: fuse_detection.py

    if isinstance(model, SlowFastDetector):
        from .fuse_detection import fuse_detector

        return fuse_detector(model, dtype, device, backend, max_cached_shapes)
    if not isinstance(model, SlowFast):
        if not isinstance(model, nn.Module):
            raise TypeError(f"fuse: model must be a slowfast_reference.SlowFast or a PyTorchVideo SlowFast / Slow "
                            f"model, got {type(model).__name__}")
        from .checkpoints import CheckpointError, to_reference_model

        try:  # a PyTorchVideo model object: the reference model of the architecture its weights hold
            model = to_reference_model(model)
        except CheckpointError as exc:
            raise TypeError(f"fuse: model: a {type(model).__name__} is neither a slowfast_reference.SlowFast nor "
                            f"a model whose weights are a known SlowFast layout ({exc})") from None
    if model.training:
        raise ValueError("fuse: model is in train mode; fuse() builds an inference model: call model.eval() first")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"fuse: dtype must be float32, bfloat16 or float16, got {dtype}")
    if cuda_graph not in (True, False, "auto"):
        raise ValueError(f"fuse: cuda_graph must be True, False or 'auto', got {cuda_graph!r}")
    check_max_cached_shapes(max_cached_shapes, "fuse")
    device = _check_device(device) if device is not None else None
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"fuse: model weight {name} has non-finite values (NaN or inf); refusing to fuse")
        device = device if device is not None else next(model.parameters()).device
        if cuda_graph is True and device.type != "cuda":
            raise ValueError(f"fuse: cuda_graph=True needs a CUDA device, got {device}")
        if device.type == "cpu" and dtype == torch.bfloat16 and backend == "auto":
            _warn_slow_cpu_bf16()
        fused = FusedSlowFast(model, dtype, backend, max_cached_shapes).to(device)
    fused.eval()
    if device.type == "cuda" and cuda_graph:
        return CUDAGraphRunner(fused, strict=cuda_graph is True)
    return fused
