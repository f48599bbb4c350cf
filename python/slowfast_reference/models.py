"""SlowFast and Slow-only ResNets in pure PyTorch: the numerical oracle of slowfast_kernels.

The module tree mirrors PyTorchVideo's ``create_slowfast`` / ``create_resnet`` exactly (``blocks.N.
multipathway_blocks.P.res_blocks.B.branch2.conv_a`` ...), so PyTorchVideo state dicts load with no
renaming and the other checkpoint formats need only a key map (slowfast_kernels.checkpoints).
Semantics are PySlowFast's: see DESIGN.md, "The network".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._args import as_int
from .lateral import FUSIONS, LATERAL_MODES, FuseFastToSlow, lateral_channels

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


@dataclass(frozen=True)
class SlowFastConfig:
    """Everything that fixes a SlowFast architecture (PySlowFast's SLOWFAST.* and RESNET.* keys)."""

    depth: int = 50
    alpha: int = 4                      # SLOWFAST.ALPHA: fast frames per slow frame
    beta_inv: int = 8                   # SLOWFAST.BETA_INV: slow channels / fast channels
    num_frames: int = 32                # fast frames T
    fusion_kernel: int = 7              # SLOWFAST.FUSION_KERNEL_SZ
    fusion_channel_ratio: int = 2       # SLOWFAST.FUSION_CONV_CHANNEL_RATIO
    # RESNET.NUM_BLOCK_TEMP_KERNEL for res2..res5: the first n blocks of a stage use the stage's
    # temporal kernel for conv a, the others 1 (R101 16x8 uses 6 of 23 in res4). None: all blocks.
    num_block_temp_kernel: Optional[Tuple[int, int, int, int]] = None
    slow_only: bool = False
    train_crop: int = 224               # DATA.TRAIN_CROP_SIZE: fixes the head's pooling window (crop / 32)
    # Detection backbones (AVA): res5 keeps the res4 resolution, spatial stride 1 and conv b dilation 2
    # (PySlowFast RESNET.SPATIAL_STRIDES / SPATIAL_DILATIONS, PyTorchVideo stage_conv_b_dilations).
    res5_spatial_stride: int = 2
    res5_dilation: int = 1

    def __post_init__(self) -> None:
        # Python ints whatever came in (numpy integers from a YAML/NumPy config, as PyTorch accepts them).
        where = "SlowFastConfig: "
        for name in ("alpha", "beta_inv", "num_frames", "fusion_kernel", "fusion_channel_ratio", "train_crop",
                     "res5_spatial_stride", "res5_dilation"):
            object.__setattr__(self, name, as_int(getattr(self, name), name, 1, where))
        depth = as_int(self.depth, "depth", 1, where)
        if depth not in STAGE_DEPTHS:
            raise ValueError(f"{where}depth: expected one of {sorted(STAGE_DEPTHS)}, got {depth}")
        object.__setattr__(self, "depth", depth)
        if self.num_block_temp_kernel is not None:
            n = self.num_block_temp_kernel
            if not isinstance(n, (tuple, list)) or len(n) != 4:
                raise ValueError(f"{where}num_block_temp_kernel: expected None or 4 ints (res2..res5), got {n!r}")
            object.__setattr__(self, "num_block_temp_kernel",
                               tuple(as_int(v, "num_block_temp_kernel", 0, where) for v in n))
        if not isinstance(self.slow_only, bool):
            raise ValueError(f"{where}slow_only: expected a bool, got {self.slow_only!r}")

    @property
    def stage_depths(self) -> Tuple[int, ...]:
        return STAGE_DEPTHS[self.depth]

    def head_pool_kernels(self) -> List[Tuple[int, int, int]]:
        """PySlowFast's head AvgPool3d windows per pathway: (T_pathway, train_crop / 32, train_crop / 32)."""
        s = self.train_crop // 32
        if self.slow_only:
            return [(self.num_frames, s, s)]
        return [(self.num_frames // self.alpha, s, s), (self.num_frames, s, s)]


CONFIGS = {
    "slowfast_r50_4x16": SlowFastConfig(depth=50, alpha=8, num_frames=32, fusion_kernel=5),
    "slowfast_r50_8x8": SlowFastConfig(depth=50, alpha=4, num_frames=32, fusion_kernel=7),
    "slowfast_r101_8x8": SlowFastConfig(depth=101, alpha=4, num_frames=32, fusion_kernel=5),
    "slowfast_r101_16x8": SlowFastConfig(
        depth=101, alpha=4, num_frames=64, fusion_kernel=5, num_block_temp_kernel=(3, 4, 6, 3)
    ),
    "slow_r50_8x8": SlowFastConfig(depth=50, alpha=1, num_frames=8, slow_only=True),
}

# conv a temporal kernel per stage (res2..res5): Slow 1,1,3,3; Fast 3 everywhere.
SLOW_TEMPORAL_KERNELS = (1, 1, 3, 3)
FAST_TEMPORAL_KERNELS = (3, 3, 3, 3)


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ResNetBasicStem(nn.Module):
    """conv (Kt x 7 x 7, stride 1,2,2) -> BN -> ReLU -> max-pool (1x3x3, stride 1,2,2, pad 0,1,1)."""

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel_size=(temporal_kernel, 7, 7), stride=(1, 2, 2),
            padding=(temporal_kernel // 2, 3, 3), bias=False,
        )
        self.norm = _bn(out_channels)
        self.activation = nn.ReLU()
        self.pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.activation(self.norm(self.conv(x))))


class BottleneckBlock(nn.Module):
    """a: Tx1x1 BN ReLU; b: 1x3x3 (spatial stride, dilation) BN ReLU; c: 1x1x1 BN."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, temporal_kernel: int, stride: int,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), bias=False)
        self.norm_a = _bn(dim_inner)
        self.act_a = nn.ReLU()
        # padding = dilation keeps the size at stride 1 (the detection res5: dilation 2, padding 2)
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, (1, 3, 3), stride=(1, stride, stride),
                                padding=(0, dilation, dilation), dilation=(1, dilation, dilation), bias=False)
        self.norm_b = _bn(dim_inner)
        self.act_b = nn.ReLU()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = _bn(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    """Bottleneck plus shortcut (a strided 1x1x1 conv + BN in block 0 of a stage), add, ReLU."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, temporal_kernel: int, stride: int,
                 dilation: int = 1) -> None:
        super().__init__()
        self.branch1_conv: Optional[nn.Conv3d] = None
        self.branch1_norm: Optional[nn.BatchNorm3d] = None
        if dim_in != dim_out or stride != 1:
            self.branch1_conv = nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False)
            self.branch1_norm = _bn(dim_out)
        self.branch2 = BottleneckBlock(dim_in, dim_inner, dim_out, temporal_kernel, stride, dilation)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))
        return self.activation(shortcut + self.branch2(x))


class ResStage(nn.Module):
    def __init__(
        self, depth: int, dim_in: int, dim_inner: int, dim_out: int, temporal_kernels: Sequence[int], stride: int,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(
            ResBlock(dim_in if i == 0 else dim_out, dim_inner, dim_out, temporal_kernels[i], stride if i == 0 else 1,
                     dilation)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class MultiPathWayWithFuse(nn.Module):
    """Runs each pathway's block, then the lateral connection (None after res5)."""

    def __init__(self, multipathway_blocks: nn.ModuleList, multipathway_fusion: Optional[nn.Module]) -> None:
        super().__init__()
        self.multipathway_blocks = multipathway_blocks
        self.multipathway_fusion = multipathway_fusion

    def forward(self, x: List[torch.Tensor]) -> List[torch.Tensor]:
        x = [block(xi) for block, xi in zip(self.multipathway_blocks, x)]
        if self.multipathway_fusion is not None:
            x = self.multipathway_fusion(x)
        return x


HEAD_POOLS = ("fixed", "global")


def head_pool(x: torch.Tensor, kernel: Optional[Tuple[int, int, int]]) -> torch.Tensor:
    """The head's pooling of one pathway: AvgPool3d(kernel, stride 1) (PySlowFast, PyTorchVideo), or the
    global mean when kernel is None (MMAction2, PySlowFast's multigrid). [N, C, T, H, W] -> [N, C, t, h, w].

    A feature map smaller than the window in some dimension is pooled whole in it (PySlowFast would
    raise): inputs below the training crop then get a global pool, as the window was meant to be."""
    k = None if kernel is None else [min(int(kd), int(size)) for kd, size in zip(kernel, x.shape[2:])]
    if k is None or k == list(x.shape[2:]):
        return x.mean(dim=(2, 3, 4), keepdim=True)
    return torch.nn.functional.avg_pool3d(x, k, stride=1)


def cat_pooled(pooled: Sequence[torch.Tensor], kernels: Sequence[Optional[Tuple[int, int, int]]]) -> torch.Tensor:
    """The pathways' pooled maps concatenated along channels. Their position grids must match: with the fixed
    windows a clip longer than the model's frames per clip leaves a different number of positions per
    pathway (R50 8x8, 64 frames: 16 - 8 + 1 = 9 Slow, 64 - 32 + 1 = 33 Fast), where PySlowFast fails in
    torch.cat; here the error says so and what to do."""
    grids = [tuple(p.shape[2:]) for p in pooled]
    if len(set(grids)) > 1:
        raise ValueError(
            f"inputs: the head's fixed AvgPool3d windows {list(kernels)} (PySlowFast's, made for the model's "
            f"frames per clip) leave position grids {grids} per pathway, which cannot be concatenated: the clip "
            "is longer than the model takes; classify clips of its length, or pool whole clips with "
            "model.set_head_pool('global')")
    return torch.cat(list(pooled), dim=1)


class PoolConcatPathway(nn.Module):
    """Per pathway AvgPool3d with a FIXED window (T_pathway, train_crop / 32, train_crop / 32), stride 1,
    then concat [slow, fast] along channels. At a 224 input one position remains (a global pool); at 256 a
    2x2 map remains, which the head classifies position by position. kernels=None: global pools."""

    def __init__(self, kernels: Optional[Sequence[Tuple[int, int, int]]] = None) -> None:
        super().__init__()
        self.kernels = None if kernels is None else [tuple(k) for k in kernels]

    def extra_repr(self) -> str:
        return "global" if self.kernels is None else f"kernels={self.kernels}, stride=1"

    def forward(self, x: List[torch.Tensor]) -> torch.Tensor:
        kernels = self.kernels or [None] * len(x)
        return cat_pooled([head_pool(xi, k) for xi, k in zip(x, kernels)], kernels)


class ResNetBasicHead(nn.Module):
    """(Slow-only: pool ->) dropout -> Linear over channels at every position -> (eval only, PySlowFast)
    activation -> mean over positions.

    Input [N, C, t, h, w]. head_act=None returns the mean of the logits over positions (PyTorchVideo);
    "softmax" returns PySlowFast's test-time probabilities: softmax per position in eval mode, then their
    mean; "sigmoid" likewise (PySlowFast's multi-label HEAD_ACT, e.g. Charades). In train mode both return logits (for the loss). pool_kernel (Slow-only, where the head pools):
    the fixed AvgPool3d window, None for a global pool.
    """

    def __init__(
        self, in_features: int, num_classes: int, dropout: float = 0.5, head_act: Optional[str] = None,
        pool: bool = False, pool_kernel: Optional[Tuple[int, int, int]] = None,
    ) -> None:
        super().__init__()
        if head_act not in (None, "softmax", "sigmoid"):
            raise ValueError(f"head_act must be None, 'softmax' or 'sigmoid', got {head_act!r}")
        self.pool = pool  # Slow-only: the head pools (PyTorchVideo blocks.5.pool)
        self.pool_kernel = None if pool_kernel is None else tuple(pool_kernel)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_features, num_classes)
        self.head_act = head_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool:
            x = head_pool(x, self.pool_kernel)
        x = self.proj(self.dropout(x).permute(0, 2, 3, 4, 1))
        if self.head_act is not None and not self.training:
            x = torch.softmax(x, dim=-1) if self.head_act == "softmax" else torch.sigmoid(x)
        return x.mean(dim=(1, 2, 3))


def check_inputs(config: SlowFastConfig, x: Sequence[torch.Tensor]) -> None:
    """Raise a ValueError naming the problem unless x is a valid model input for config."""
    pathways = 1 if config.slow_only else 2
    if not isinstance(x, (list, tuple)) or len(x) != pathways:
        expected = "[x]" if config.slow_only else "[slow, fast]"
        raise ValueError(f"inputs: expected a list {expected} of {pathways} tensor(s), got {type(x).__name__}"
                         + (f" of length {len(x)}" if isinstance(x, (list, tuple)) else ""))
    for name, t in zip(("slow", "fast"), x):
        if not isinstance(t, torch.Tensor) or t.dim() != 5 or t.shape[1] != 3:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"inputs[{name}]: expected a [N, 3, T, H, W] tensor, got {shape}")
    if not config.slow_only:
        slow, fast = x
        if fast.shape[2] != config.alpha * slow.shape[2]:
            raise ValueError(
                f"inputs: fast has {fast.shape[2]} frames, expected alpha * slow frames = "
                f"{config.alpha} * {slow.shape[2]}"
            )
        if slow.shape[0] != fast.shape[0] or slow.shape[3:] != fast.shape[3:]:
            raise ValueError(f"inputs: slow {tuple(slow.shape)} and fast {tuple(fast.shape)} differ in batch or H, W")


class SlowFast(nn.Module):
    """SlowFast (or Slow-only) ResNet. ``model([slow, fast]) -> [N, num_classes]``; Slow-only: ``model([x])``.

    slow: [N, 3, T/alpha, H, W]; fast: [N, 3, T, H, W] (any T divisible by alpha, H and W >= 32).
    """

    def __init__(
        self,
        config: SlowFastConfig,
        num_classes: int = 400,
        lateral: str = "time_strided_conv",
        fusion: str = "concat",
        head_act: Optional[str] = None,
        lateral_norm: bool = True,
        dropout: float = 0.5,
        head_pool: str = "fixed",
    ) -> None:
        super().__init__()
        num_classes = as_int(num_classes, "num_classes", 1)
        if head_pool not in HEAD_POOLS:
            raise ValueError(f"head_pool must be one of {HEAD_POOLS}, got {head_pool!r}")
        if config.train_crop < 32 or config.train_crop % 32:
            raise ValueError(f"train_crop must be a positive multiple of 32, got {config.train_crop}")
        if lateral not in LATERAL_MODES:
            raise ValueError(f"lateral must be one of {LATERAL_MODES}, got {lateral!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.config, self.lateral_mode, self.fusion = config, lateral, fusion
        self.lateral_norm = lateral_norm
        self.head_pool = head_pool
        self.num_classes = num_classes
        cfg = config
        slow_dim, fast_dim = 64, 64 // cfg.beta_inv

        def temporal_kernels(stage: int, base: Sequence[int]) -> List[int]:
            depth = cfg.stage_depths[stage]
            n = depth if cfg.num_block_temp_kernel is None else cfg.num_block_temp_kernel[stage]
            return [base[stage] if i < n else 1 for i in range(depth)]

        def make_fusion(fast_channels: int, slow_channels: int) -> Optional[FuseFastToSlow]:
            if cfg.slow_only:
                return None
            added = lateral_channels(lateral, fast_channels, cfg.alpha, cfg.fusion_channel_ratio)
            if fusion == "sum" and added != slow_channels:
                raise ValueError(
                    f"fusion='sum' needs the lateral ({lateral}) to produce as many channels as the Slow "
                    f"pathway: it produces {added}, the Slow pathway has {slow_channels}; use fusion='concat'"
                )
            return FuseFastToSlow(
                lateral, fast_channels, cfg.alpha, cfg.fusion_kernel, fusion, cfg.fusion_channel_ratio, lateral_norm
            )

        def fused_width(slow_channels: int, fast_channels: int) -> int:
            if cfg.slow_only or fusion == "sum":
                return slow_channels
            return slow_channels + lateral_channels(lateral, fast_channels, cfg.alpha, cfg.fusion_channel_ratio)

        stems = [ResNetBasicStem(3, slow_dim, 1)]
        if not cfg.slow_only:
            stems.append(ResNetBasicStem(3, fast_dim, 5))
        blocks: List[nn.Module] = []
        if cfg.slow_only:
            blocks.append(stems[0])
        else:
            blocks.append(MultiPathWayWithFuse(nn.ModuleList(stems), make_fusion(fast_dim, slow_dim)))

        dims_in = [fused_width(slow_dim, fast_dim), fast_dim]
        out_slow = 256
        for stage in range(4):
            inner_slow = out_slow // 4
            stride = 1 if stage == 0 else 2
            dilation = 1
            if stage == 3:  # res5: a detection backbone's stride and dilation
                stride, dilation = cfg.res5_spatial_stride, cfg.res5_dilation
            slow_stage = ResStage(
                cfg.stage_depths[stage], dims_in[0], inner_slow, out_slow,
                temporal_kernels(stage, SLOW_TEMPORAL_KERNELS), stride, dilation,
            )
            if cfg.slow_only:
                blocks.append(slow_stage)
                dims_in = [out_slow, 0]
            else:
                fast_out = out_slow // cfg.beta_inv
                fast_stage = ResStage(
                    cfg.stage_depths[stage], dims_in[1], inner_slow // cfg.beta_inv, fast_out,
                    temporal_kernels(stage, FAST_TEMPORAL_KERNELS), stride, dilation,
                )
                fuse = make_fusion(fast_out, out_slow) if stage < 3 else None
                blocks.append(MultiPathWayWithFuse(nn.ModuleList([slow_stage, fast_stage]), fuse))
                dims_in = [fused_width(out_slow, fast_out) if stage < 3 else out_slow, fast_out]
            out_slow *= 2

        final_slow = 2048
        kernels = cfg.head_pool_kernels() if head_pool == "fixed" else None
        if cfg.slow_only:
            blocks.append(ResNetBasicHead(final_slow, num_classes, dropout, head_act, pool=True,
                                          pool_kernel=None if kernels is None else kernels[0]))
        else:
            blocks.append(PoolConcatPathway(kernels))
            blocks.append(ResNetBasicHead(final_slow + final_slow // cfg.beta_inv, num_classes, dropout, head_act))
        self.blocks = nn.ModuleList(blocks)

    def head_pool_kernels(self) -> Optional[List[Tuple[int, int, int]]]:
        """The head's AvgPool3d window per pathway, or None when it pools globally (see set_head_pool)."""
        return None if self.head_pool == "global" else self.config.head_pool_kernels()

    def set_head_pool(self, head_pool: str) -> "SlowFast":
        """Switch the head between PySlowFast's fixed window ("fixed") and a global pool ("global", MMAction2's
        head). No parameter changes; returns the model."""
        if head_pool not in HEAD_POOLS:
            raise ValueError(f"head_pool must be one of {HEAD_POOLS}, got {head_pool!r}")
        self.head_pool = head_pool
        kernels = self.head_pool_kernels()
        if self.config.slow_only:
            self.blocks[-1].pool_kernel = None if kernels is None else kernels[0]
        else:
            self.blocks[-2].kernels = kernels
        return self

    @property
    def num_pathways(self) -> int:
        return 1 if self.config.slow_only else 2

    def check_inputs(self, x: Sequence[torch.Tensor]) -> None:
        check_inputs(self.config, x)

    def forward(self, x: Sequence[torch.Tensor]) -> torch.Tensor:
        self.check_inputs(x)
        if self.config.slow_only:
            y = x[0]
            for block in self.blocks:
                y = block(y)
            return y
        y = list(x)
        for block in self.blocks[:-2]:
            y = block(y)
        return self.blocks[-1](self.blocks[-2](y))

    def features(self, x: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """What the classifier reads, per clip: the head's pooled map (each pathway's res5 output through its
        AvgPool3d window, the same windows as forward) averaged over the positions that remain.
        {"slow": [N, 2048], "fast": [N, 256], "concat": [N, 2304]} for R50/R101 SlowFast (Slow-only:
        "slow" and "concat", [N, 2048]). Before dropout and the classifier: in eval mode with head_act=None,
        head.proj(features["concat"]) equals forward's logits (the classifier is linear)."""
        self.check_inputs(x)
        head = self.blocks[-1]
        if self.config.slow_only:
            y = x[0]
            for block in self.blocks[:-1]:
                y = block(y)
            maps = [head_pool(y, head.pool_kernel) if head.pool else y]
        else:
            y = list(x)
            for block in self.blocks[:-2]:
                y = block(y)
            kernels = self.blocks[-2].kernels or [None] * len(y)
            maps = [head_pool(yi, k) for yi, k in zip(y, kernels)]
        vectors = [m.mean(dim=(2, 3, 4)) for m in maps]
        out = dict(zip(("slow", "fast"), vectors))
        out["concat"] = torch.cat(vectors, dim=1)
        return out


def _factory(name: str):
    def build(
        num_classes: int = 400,
        lateral: str = "time_strided_conv",
        fusion: str = "concat",
        head_act: Optional[str] = None,
        lateral_norm: bool = True,
        train_crop: int = 224,
        head_pool: str = "fixed",
    ) -> SlowFast:
        config = dataclasses.replace(CONFIGS[name], train_crop=as_int(train_crop, "train_crop", 1))
        return SlowFast(config, num_classes, lateral, fusion, head_act, lateral_norm, head_pool=head_pool)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"Reference {name} ({CONFIGS[name]}); see SlowFast for the call convention."
    return build


slowfast_r50_4x16 = _factory("slowfast_r50_4x16")
slowfast_r50_8x8 = _factory("slowfast_r50_8x8")
slowfast_r101_8x8 = _factory("slowfast_r101_8x8")
slowfast_r101_16x8 = _factory("slowfast_r101_16x8")
slow_r50_8x8 = _factory("slow_r50_8x8")


def build_model(arch: str, **kwargs) -> SlowFast:
    if arch not in CONFIGS:
        raise ValueError(f"arch must be one of {sorted(CONFIGS)}, got {arch!r}")
    return _factory(arch)(**kwargs)
