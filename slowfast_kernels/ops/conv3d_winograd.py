"""conv3d_winograd: the CPU Winograd conv of the 1x3x3, stride 1, padding (0, 1, 1) convs (SlowFast's
bottleneck conv_b layers), fp32, channels-last, bias + residual + ReLU fused into the output transform.

F(4x4, 3x3) does 36 products per 16 outputs where a direct conv does 144; the products are 36 GEMMs
[tiles, C_in] x [C_in, C_out] over the N * T frames (csrc/cpu/conv3d_winograd.cpp). The filter is
transformed once (`conv3d_winograd_weight`); `WinogradConv` is the fused model's runner for it.

Speed: see `winograd_wins` for the measured table behind the shape rule.

bf16 models: `conv3d_winograd_bf16` / `WinogradBf16Conv`, F(2x2, 3x3) with the GEMMs on VDPBF16PS (the
errors and speeds in `winograd_bf16_wins`).

Accuracy (benchmarks/bench_conv3d_winograd.py, every R50 8x8 conv_b shape, post-BN-like input = ReLU of a
normal, He-scaled weight, no ReLU on the output; max |y - y_float64| / max |y_float64|):

    layer (C -> C, T, HxW)    oneDNN fp32   F(4x4) fp32   F(2x2) fp32
    Slow res2 64,  8, 56      8.1e-07       6.1e-06       3.5e-07
    Slow res3 128, 8, 28      1.1e-06       7.9e-06       5.1e-07
    Slow res4 256, 8, 14      1.4e-06       1.2e-05       6.4e-07
    Slow res5 512, 8, 7       2.2e-06       9.0e-06       4.3e-07
    Fast res2 8,  32, 56      2.8e-07       3.6e-06       2.1e-07
    Fast res3 16, 32, 28      3.3e-07       3.6e-06       2.0e-07
    Fast res4 32, 32, 14      5.2e-07       4.1e-06       2.2e-07
    Fast res5 64, 32, 7       6.7e-07       4.9e-06       3.3e-07

F(4x4) rounds ~4-9x more than oneDNN's direct conv (its transforms scale values by up to 8 and 1/24) but
stays ~10x below the fused model's 1e-4 tolerance per layer; F(2x2) rounds less than oneDNN. End to end
(SlowFast R50 8x8, 224, batch 1, random weights, logits against the float64 reference model), with every
conv_b of >= 32 channels on F(4x4): max relative error 2.6e-07, oneDNN alone 3.3e-07. So F(4x4) is the
default (`tile=4`); `tile=2` is there for inputs where accuracy matters more than the ~1.3x.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from .. import _ext, cpu_isa

TILES = (4, 2)  # F(4x4, 3x3) and F(2x2, 3x3)


def winograd_supports(x_shape: Sequence[int], weight_shape: Sequence[int], stride, padding, dilation,
                      dtype: torch.dtype) -> bool:
    """True when conv3d_winograd computes this conv: the extension is built, fp32, a [C_out, C_in, 1, 3, 3]
    kernel on a 5-d input with C_in channels, stride 1, padding (0, 1, 1), dilation 1."""
    return (_ext.LOAD_ERROR is None and dtype == torch.float32 and len(x_shape) == 5 and len(weight_shape) == 5
            and tuple(weight_shape[2:]) == (1, 3, 3) and x_shape[1] == weight_shape[1]
            and tuple(stride) == (1, 1, 1) and tuple(padding) == (0, 1, 1) and tuple(dilation) == (1, 1, 1))


def winograd_wins(x_shape: Sequence[int], weight_shape: Sequence[int]) -> bool:
    """The measured rule: Winograd F(4x4, 3x3) beats oneDNN's direct conv on this 1x3x3 conv when C_in and
    C_out are both >= WINOGRAD_MIN_CHANNELS[the CPU's ISA tier] (32 with AVX-512, 256 with AVX2 only) and
    neither is above WINOGRAD_MAX_CHANNELS[tier] (256 with AVX-512 without AMX).

    Measured on 2 cores (AMD EPYC, AVX-512) shared with other jobs, so under load: medians (min) of 60 runs
    interleaved with oneDNN (plan.OneDNNConv, packed weight) in one process, fp32, batch 1, bias + ReLU,
    benchmarks/bench_conv3d_winograd.py. 1 thread is the steadier column: with 2 threads a call often waited
    a scheduler time slice for its second thread (medians of the Fast layers jumped to ~9-12 ms whatever ran).

        conv_b (C -> C, T, HxW)    1 thread: oneDNN   F(4x4)        F(2x2)    | 2 threads: oneDNN  F(4x4)
        Slow res2 64,  8, 56       16.7 (16.4)        8.0 (7.6)     11.3      | 22.0 (16.6)    13.5 (8.2)
        Slow res3 128, 8, 28       16.2 (15.9)        7.0 (6.6)     10.0      | 22.3 (8.9)     14.9 (4.7)
        Slow res4 256, 8, 14       15.7 (15.1)        9.2 (8.4)     10.5      | 16.7 (16.1)    13.2 (12.8)
        Slow res5 512, 8, 7        14.9 (14.0)        13.2 (10.5)   17.7      | 16.1 (7.8)     15.9 (6.1)
        Fast res2 8,  32, 56       2.6 (2.4)          4.0 (3.6)     5.9       | 8.0 (1.4)      8.0 (2.0)
        Fast res3 16, 32, 28       1.6 (1.4)          1.7 (1.4)     2.4       | 2.8 (0.8)      2.9 (0.8)
        Fast res4 32, 32, 14       1.3 (1.1)          1.0 (0.6)     1.0       | 7.8 (6.6)      8.1 (7.9)
        Fast res5 64, 32, 7        0.9 (0.9)          0.6 (0.5)     0.9       | 8.0 (6.1)      8.0 (7.9)

    (ms.) Summed over the model's stride-1 conv_b runs (res2..res5: 3, 3, 5, 2 per pathway): 1 thread
    oneDNN 227.3 ms, F(4x4) 140.9 ms (F(4x4) on every layer, Fast res2 / res3 included); 2 threads 335.4 vs
    272.3 ms. A quieter 2-thread run minutes earlier (load ~2): Slow res2 8.9 -> 4.2 ms, res5 7.2 -> 5.9,
    Fast res4 0.54 -> 0.42, Fast res5 0.47 -> 0.28, Fast res3 0.60 -> 0.61, Fast res2 1.27 -> 1.71.
    End to end, the fused model with its 20 stride-1 conv_b layers of >= 32 channels on F(4x4)
    (make_runner patched in a script; 10 interleaved forwards under load): 1 thread 996 -> 905 ms median,
    2 threads 1357 -> 1096 ms median (min 504 -> 461).
    Below 32 channels the GEMMs are too thin (8 or 16 of a 16-lane vector, K = 8 or 16) to pay for the
    transforms. Slow res5 has only 32 F(4x4) tiles yet still wins: the output channels are split between
    the threads there (see csrc/cpu/conv3d_winograd.cpp)."""
    c_in, c_out = weight_shape[1], weight_shape[0]
    tier = cpu_isa.tier()
    least, most = WINOGRAD_MIN_CHANNELS.get(tier), WINOGRAD_MAX_CHANNELS.get(tier)
    return least is not None and c_in >= least and c_out >= least and (most is None or max(c_in, c_out) <= most)


# Per ISA tier (cpu_isa.CpuIsa.tier): the least C_in and C_out at which F(4x4, 3x3) is chosen over oneDNN.
# avx512: the table above. amx: the same kernels (AMX does not run fp32), not measured on that CPU apart from
# the whole model (fused fp32 ahead of OpenVINO f32 there). avx2 (no AVX-512: the portable transforms and
# MKL's batched GEMM; an AMD EPYC with AVX2 only, 1 thread, loaded machine, medians (min) of 15, oneDNN vs
# F(4x4)): 64 ch 8x56 46.3 (30.2) vs 60.4 (36.8) ms, 128 ch 8x28 60.8 (51.8) vs 63.4 (56.6), 256 ch 8x14
# 56.6 (51.3) vs 50.6 (47.5), 512 ch 8x7 67.0 (60.4) vs 55.9 (50.5), Fast 32 ch 32x14 6.9 (2.7) vs 10.0
# (8.5): from 256 channels. default (no AVX2): not measured: oneDNN.
WINOGRAD_MIN_CHANNELS = {"avx512": 32, "amx": 32, "avx2": 256}
# Per tier, the most C_in or C_out F(4x4, 3x3) takes. avx512: 256. At 512 channels (Slow res5) the transformed
# filter is 36 MB (above L3) and streams from memory for every tile block: even with oneDNN on the Zen 4 EPYC
# (the table above, under load), and on a Zen 5 EPYC (family 26, 2 threads, batch 1; profiled inside the fp32
# model, 6 alternating forwards) 10.7 ms a forward (the batched GEMMs and transforms of its two layers) against
# oneDNN's 7.7; with five res5 weights taking turns 5.36 vs 3.94 ms a layer (256 channels still 3.52 vs 4.17).
WINOGRAD_MAX_CHANNELS = {"avx512": 256}


def conv3d_winograd_weight(weight: torch.Tensor, tile: int = 4) -> torch.Tensor:
    """The transformed filter G g G^T of F(tile x tile, 3x3) (tile 4 or 2), computed in float64 and rounded to
    float32 once: weight [C_out, C_in, 1, 3, 3] -> [(tile + 2)^2, C_in, C_out]."""
    if _ext.LOAD_ERROR is not None:
        raise RuntimeError(f"conv3d_winograd_weight: {_ext.LOAD_ERROR}")
    return torch.ops.slowfast_kernels.conv3d_winograd_weight(weight, tile)


def conv3d_winograd(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor] = None,
                    activation: str = "relu", residual: Optional[torch.Tensor] = None,
                    out: Optional[torch.Tensor] = None, tile_block: int = 0, portable: bool = False) -> torch.Tensor:
    """act(conv3d(x, W, padding (0, 1, 1)) + bias + residual) with packed = conv3d_winograd_weight(W).

    x [N, C_in, T, H, W] float32 CPU, any layout (channels-innermost is read in place, others are copied);
    bias [C_out] or None; residual [N, C_out, T, H, W] or None (may be `out` itself); activation "relu" |
    "none"; out: a channels_last_3d [N, C_out, T, H, W] float32 tensor to write, not overlapping x.
    Returns out, or a new channels_last_3d tensor. tile_block: output tiles per GEMM block (0: automatic);
    portable=True skips the AVX-512 transforms (for tests: both must agree).
    """
    if _ext.LOAD_ERROR is not None:
        raise RuntimeError(f"conv3d_winograd: {_ext.LOAD_ERROR}")
    ops = torch.ops.slowfast_kernels
    if out is None:
        return ops.conv3d_winograd(x, packed, bias, activation, residual, tile_block, portable)
    ops.conv3d_winograd_out(x, packed, bias, activation, residual, tile_block, portable, out)
    return out


def conv3d_winograd_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                        activation: str = "relu", residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same in plain PyTorch (conv3d in x's dtype), for tests."""
    y = torch.nn.functional.conv3d(x, weight, bias, 1, (0, 1, 1))
    if residual is not None:
        y = y + residual
    return torch.relu(y) if activation == "relu" else y


class WinogradConv:
    """Runner (slowfast_kernels.plan's interface) for a BN-folded 1x3x3 conv: act(conv(x) + bias + residual).

    weight: the folded fp32 [C_out, C_in, 1, 3, 3] weight, transformed once here; bias [C_out] or None.
    Called as runner(x, residual=None, residual_is_scratch=False, out=None): with residual_is_scratch the
    result is accumulated into residual's memory (when it is channels_last_3d), as OneDNNConv does.
    shared: the layer's dict of shape-independent prepared weights (plan.make_runner): the transformed
    filter (4x the weight's size for F(4x4)) is taken from it or stored in it, one copy for every input shape.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str = "relu",
                 tile: int = 4, shared: Optional[Dict[tuple, torch.Tensor]] = None) -> None:
        if tuple(weight.shape[2:]) != (1, 3, 3) or weight.dim() != 5:
            raise ValueError(f"WinogradConv: weight: expected [C_out, C_in, 1, 3, 3], got {tuple(weight.shape)}")
        if tile not in TILES:
            raise ValueError(f"WinogradConv: tile: expected one of {TILES}, got {tile}")
        if activation not in ("relu", "none"):
            raise ValueError(f"WinogradConv: activation: expected 'relu' or 'none', got {activation!r}")
        key = ("winograd", tile, weight.device)
        self.packed = shared.get(key) if shared is not None else None
        if self.packed is None:
            self.packed = conv3d_winograd_weight(weight.detach().float(), tile)
            if shared is not None:
                shared[key] = self.packed
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.activation = activation

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                 residual_is_scratch: bool = False, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        if out is None and residual_is_scratch and residual is not None and residual.dtype == torch.float32 \
                and residual.is_contiguous(memory_format=torch.channels_last_3d):
            out = residual
        return conv3d_winograd(x, self.packed, self.bias, self.activation, residual, out)


# --- bf16: F(2x2, 3x3) (csrc/cpu/conv3d_winograd_bf16.cpp) ---------------------------------------------------


def winograd_bf16_supports(x_shape: Sequence[int], weight_shape: Sequence[int], stride, padding, dilation,
                           dtype: torch.dtype) -> bool:
    """True when conv3d_winograd_bf16 computes this conv: the extension is built, bf16, a [C_out, C_in, 1, 3, 3]
    kernel on a 5-d input with C_in channels, stride 1, padding (0, 1, 1), dilation 1."""
    return winograd_supports(x_shape, weight_shape, stride, padding, dilation, torch.float32) \
        and dtype == torch.bfloat16


def winograd_bf16_wins(x_shape: Sequence[int], weight_shape: Sequence[int]) -> bool:
    """The measured rule for bf16 models: F(2x2, 3x3) with VDPBF16PS beats oneDNN's bf16 conv on a Zen 4 EPYC
    (AMD family 25: AVX-512 on 256-bit units, AVX512_BF16, no AMX) for 128 to 256 channels in and out. Not on
    Zen 5 (family 26, full-width AVX-512 units: oneDNN's direct conv is twice as fast there and F(2x2) lost),
    and not measured elsewhere (AMX, Intel AVX-512), so oneDNN runs it there.

    2-core AMD EPYC (Zen 4), 2 threads, batch 1, bias + ReLU, medians of 41 (IQR 0.04-0.18 ms; three runs):

        conv_b (C -> C, T, HxW)   oneDNN bf16   F(2x2) bf16        error vs float64 (oneDNN / F(2x2))
        Slow res2 64,  8, 56      4.04-4.09     3.85-4.00  ~1.03   2.4e-3 / 4.8e-3
        Slow res3 128, 8, 28      3.92-4.01     2.56-2.69  1.50    2.5e-3 / 4.8e-3
        Slow res4 256, 8, 14      3.76-3.79     2.48-2.56  1.50    2.3e-3 / 4.2e-3
        Slow res5 512, 8, 7       3.40-3.48     3.12-4.33  ~1      2.4e-3 / 4.0e-3 (U, 8 MB, streamed per block)
        Fast 8-64, 32, 56-7       0.26-1.17     0.82-0.29x slower

    F(4x4)'s transforms (entries up to 8 in both dimensions) grew the bf16 error ~20x over oneDNN's, F(2x2)'s
    ~1.7-2x (V is rounded to bf16 before the GEMMs; the products accumulate in fp32).

    2-core AMD EPYC Zen 5 (family 26), 2 threads, batch 1: one layer in a hot loop is even (res3 1.91 vs oneDNN
    2.06 ms, res4 2.13 vs 2.01), but with the model's five res4 weights in turn (U, 2 MB, no longer in L2)
    F(2x2) 2.82 vs 2.23 ms (res3 2.42 vs 2.30), and in the model (profiled, alternating forwards, 8 of them)
    res4 3.5 vs 2.4 ms a call; the fused bf16 forward 7.3 ms slower with the rule on (paired median of 40)."""
    c_in, c_out = weight_shape[1], weight_shape[0]
    isa = cpu_isa.current()
    zen4 = isa.vendor == "AuthenticAMD" and isa.family == "25"
    return (isa.tier == "avx512" and isa.native_bf16 and zen4
            and 128 <= min(c_in, c_out) and max(c_in, c_out) <= 256)


def conv3d_winograd_bf16_weight(weight: torch.Tensor) -> torch.Tensor:
    """F(2x2, 3x3)'s transformed filter G g G^T (float64, rounded to bf16 once) as channel pairs:
    weight [C_out, C_in, 1, 3, 3] -> [16, ceil(C_in / 2), C_out, 2] bf16 (an odd C_in padded with a zero)."""
    if _ext.LOAD_ERROR is not None:
        raise RuntimeError(f"conv3d_winograd_bf16_weight: {_ext.LOAD_ERROR}")
    return torch.ops.slowfast_kernels.conv3d_winograd_bf16_weight(weight)


def conv3d_winograd_bf16(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         activation: str = "relu", residual: Optional[torch.Tensor] = None,
                         portable: bool = False) -> torch.Tensor:
    """act(conv3d(x, W, padding (0, 1, 1)) + bias + residual) in bf16, packed = conv3d_winograd_bf16_weight(W).

    x [N, C_in, T, H, W] bf16 CPU, any layout (channels-innermost is read in place); bias [C_out] fp32 or None;
    residual bf16 [N, C_out, T, H, W] or None; returns a new channels_last_3d bf16 tensor. portable=True runs
    the scalar loops instead of VDPBF16PS (for tests; also the path on a CPU without AVX512_BF16)."""
    if _ext.LOAD_ERROR is not None:
        raise RuntimeError(f"conv3d_winograd_bf16: {_ext.LOAD_ERROR}")
    return torch.ops.slowfast_kernels.conv3d_winograd_bf16(x, packed, bias, activation, residual, portable)


class WinogradBf16Conv:
    """Runner (plan's interface) for a BN-folded 1x3x3 conv of a bf16 model by F(2x2, 3x3):
    act(conv(x) + bias + residual), bf16 out. weight: the folded fp32 [C_out, C_in, 1, 3, 3] weight, transformed
    once here (or taken from shared, the layer's dict of shape-independent prepared weights)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str = "relu",
                 shared: Optional[Dict[tuple, torch.Tensor]] = None) -> None:
        if tuple(weight.shape[2:]) != (1, 3, 3) or weight.dim() != 5:
            raise ValueError(f"WinogradBf16Conv: weight: expected [C_out, C_in, 1, 3, 3], got {tuple(weight.shape)}")
        if activation not in ("relu", "none"):
            raise ValueError(f"WinogradBf16Conv: activation: expected 'relu' or 'none', got {activation!r}")
        key = ("winograd_bf16", weight.device)
        self.packed = shared.get(key) if shared is not None else None
        if self.packed is None:
            self.packed = conv3d_winograd_bf16_weight(weight.detach().float())
            if shared is not None:
                shared[key] = self.packed
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.activation = activation

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                 residual_is_scratch: bool = False) -> torch.Tensor:
        r = None if residual is None else residual.to(torch.bfloat16)
        return conv3d_winograd_bf16(x, self.packed, self.bias, self.activation, r)


if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("slowfast_kernels::conv3d_winograd_weight")
    def _fake_weight(weight, tile=4):
        return weight.new_empty(((tile + 2) ** 2, weight.shape[1], weight.shape[0]), dtype=torch.float32)

    @torch.library.register_fake("slowfast_kernels::conv3d_winograd")
    def _fake(x, packed, bias, activation, residual=None, tile_block=0, portable=False):
        shape = (x.shape[0], packed.shape[2], *x.shape[2:])
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)

    @torch.library.register_fake("slowfast_kernels::conv3d_winograd_bf16_weight")
    def _fake_bf16_weight(weight):
        return weight.new_empty((16, (weight.shape[1] + 1) // 2, weight.shape[0], 2), dtype=torch.bfloat16)

    @torch.library.register_fake("slowfast_kernels::conv3d_winograd_bf16")
    def _fake_bf16(x, packed, bias, activation, residual=None, portable=False):
        shape = (x.shape[0], packed.shape[2], *x.shape[2:])
        return torch.empty(shape, dtype=torch.bfloat16, device=x.device, memory_format=torch.channels_last_3d)

    @torch.library.register_fake("slowfast_kernels::conv3d_winograd_out")
    def _fake_out(x, packed, bias, activation, residual, tile_block, portable, out):
        return None
