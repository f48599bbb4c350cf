"""The conv layers of a SlowFast model as benchmark cases: every distinct (input shape, C_out, kernel,
stride, padding) with how often one forward runs it, a case name and its FLOPs. Shared by gpu-report and
benchmarks/bench_conv3d.py.

R50 8x8 at 224: 110 convs (the 2 stems, 52 Fast and 52 Slow pathway convs, 4 laterals), 51 distinct shapes.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Tuple

import torch

import slowfast_reference as sr

# (input shape [N, C_in, T, H, W], C_out, kernel, stride, padding)
LayerKey = Tuple[Tuple[int, ...], int, Tuple[int, int, int], Tuple[int, int, int], Tuple[int, int, int]]

# The stems as bench_conv3d times them, to the pooled output (pool (1,3,3)/(1,2,2)/(0,1,1)).
STEMS = {
    "fast_stem": dict(t=32, c_out=8, kernel=(5, 7, 7), padding=(2, 3, 3)),
    "slow_stem": dict(t=8, c_out=64, kernel=(1, 7, 7), padding=(0, 3, 3)),
}
STEM_STRIDE = (1, 2, 2)
STEM_POOL = ((1, 3, 3), (1, 2, 2), (0, 1, 1))


def model_layers(arch: str = "slowfast_r50_8x8", batch: int = 1, size: int = 224) -> "OrderedDict[LayerKey, int]":
    """OrderedDict {(input shape, C_out, kernel, stride, padding): count} from a meta-device forward at
    batch x size x size (size a multiple of 32: the head's pooling window follows it)."""
    model = getattr(sr, arch)(train_crop=size).to("meta").eval()
    layers: "OrderedDict[LayerKey, int]" = OrderedDict()

    def count(m, inputs, output):
        key = (tuple(inputs[0].shape), m.out_channels, m.kernel_size, m.stride, m.padding)
        layers[key] = layers.get(key, 0) + 1

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    cfg = model.config
    t = cfg.num_frames
    try:
        model([torch.empty(batch, 3, t // cfg.alpha, size, size, device="meta"),
               torch.empty(batch, 3, t, size, size, device="meta")])
    finally:
        for h in hooks:
            h.remove()
    return layers


def case_name(key: LayerKey) -> str:
    """e.g. '64->64 1x3x3 s1 T8 56px', '8->16 5x1x1 s1t4 T32 56px' (a lateral)."""
    shape, cout, k, s, _ = key
    return f"{shape[1]}->{cout} {'x'.join(map(str, k))} s{s[1]}{'t' + str(s[0]) if s[0] > 1 else ''} " \
           f"T{shape[2]} {shape[3]}px"


def layer_flops(key: LayerKey) -> int:
    """2 x multiply-adds of the conv (no padding taps excluded: the usual convention)."""
    shape, cout, k, s, p = key
    out = [(shape[2 + i] + 2 * p[i] - k[i]) // s[i] + 1 for i in range(3)]
    return 2 * shape[0] * cout * out[0] * out[1] * out[2] * shape[1] * k[0] * k[1] * k[2]


def stem_key(name: str, batch: int, size: int = 224, frames: int = 0) -> LayerKey:
    """The stem's conv as a layer key (frames: its T, by default the model's)."""
    cfg = STEMS[name]
    return ((batch, 3, frames or cfg["t"], size, size), cfg["c_out"], cfg["kernel"], STEM_STRIDE, cfg["padding"])
