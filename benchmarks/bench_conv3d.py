"""conv3d_bn_act on every distinct conv layer of SlowFast R50 8x8 at 224x224 (CPU: batch 1, GPU: batch 8).

Baseline: eager conv3d + BatchNorm3d (eval) + ReLU in fp32 NCDHW (the reference model's layers), timed in
the same run. Impls:
- CPU: `fused` = Conv3dBNAct in eval on channels_last_3d input (what the fused model runs: the plan's
  runner, i.e. oneDNN's fused conv with a packed weight, its 2D views, or our small-C_in / temporal
  Winograd kernels), `onednn` = oneDNN's fused conv with a packed weight alone (plan.OneDNNConv),
  `fused_ncdhw` = conv3d_bn_act(backend="cpu") on the NCDHW input.
- GPU (bf16 channels_last_3d): `eager_bf16`, `cudnn` (cuDNN fused conv), `triton`, `fused` (per-shape choice).
- `compiled` (SLOWFAST_BENCH_COMPILE=1): torch.compile(mode="max-autotune") with inductor freezing.
The last test prints the sums over the model's layers (each layer weighted by how often the model runs it).

Stem cases `fast_stem` (3 -> 8, 5x7x7, T 32) and `slow_stem` (3 -> 64, 1x7x7, T 8), stride (1,2,2), at 224,
timed to the pooled output (conv + BN + ReLU + max-pool (1,3,3)/(1,2,2)/(0,1,1)) for every impl; GPU: batch
32 bf16, CPU: batch 1 fp32. Impls: `eager` (nn modules; GPU bf16 NCDHW, eager's fastest there; CPU fp32
NCDHW), `cudnn` / `onednn` (the vendor's fused conv + bias + ReLU on channels_last_3d, then max_pool3d),
`fused` (conv3d_bn_act_maxpool, backend auto: what fuse() runs); GPU also `triton_pool_fused` and
`triton_pool_separate` (both Triton paths, whichever the shape rule picks).

Run: python -m pytest benchmarks/bench_conv3d.py   (GPU: the same command on a CUDA machine)
"""
from __future__ import annotations

import os

import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels.gpu_report.layers import STEMS, case_name, model_layers
from slowfast_kernels.gpu_report.layers import layer_flops as flops

from conftest import _records

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BATCH = 8 if CUDA else 1
CL = torch.channels_last_3d
COMPILE = os.environ.get("SLOWFAST_BENCH_COMPILE", "0") == "1"


LAYERS = model_layers(batch=BATCH)
CASES = list(LAYERS)


def build(key):
    shape, cout, k, s, p = key
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(shape[1], cout, k, s, p, bias=False)
    bn = torch.nn.BatchNorm3d(cout)
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2)
        bn.running_mean.normal_()
    conv, bn = conv.to(DEVICE).eval(), bn.to(DEVICE).eval()
    x = torch.randn(shape, device=DEVICE)
    return conv, bn, x


CPU_IMPLS = ["eager", "onednn", "fused", "fused_ncdhw"] + (["compiled"] if COMPILE else [])
GPU_IMPLS = ["eager", "eager_bf16", "cudnn", "triton", "fused"] + (["compiled"] if COMPILE else [])


def make_fn(impl, key):
    conv, bn, x = build(key)
    if impl == "eager":
        return lambda: torch.relu(bn(conv(x)))
    if impl == "compiled":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        xin = x.to(torch.bfloat16).contiguous(memory_format=CL) if CUDA else x
        mod = torch.nn.Sequential(conv, bn, torch.nn.ReLU()).to(xin.dtype)
        fn = torch.compile(mod, mode="max-autotune")
        return lambda: fn(xin)
    if CUDA:
        xb = x.to(torch.bfloat16).contiguous(memory_format=CL)
        if impl == "eager_bf16":
            cb = torch.nn.Sequential(conv, bn, torch.nn.ReLU()).to(torch.bfloat16).to(memory_format=CL)
            return lambda: cb(xb)
        w, b = sk.fold_bn(conv, bn)
        backend = {"cudnn": "cuda", "triton": "triton", "fused": "cuda"}[impl]
        if impl == "cudnn":
            return lambda: torch.ops.slowfast_kernels.conv3d_bn_act(xb, w.to(xb.dtype).contiguous(memory_format=CL), b,
                                                                    list(conv.stride), list(conv.padding), [1, 1, 1],
                                                                    None, "relu")
        wb = w.to(xb.dtype).contiguous(memory_format=CL)
        return lambda: sk.conv3d_bn_act(xb, wb, b, conv.stride, conv.padding, backend=backend)
    if impl == "fused":
        m = sk.Conv3dBNAct.from_conv_bn(conv, bn, activation="relu").eval()
        xc = x.contiguous(memory_format=CL)
        return lambda: m(xc)
    if impl == "onednn":
        from slowfast_kernels.plan import OneDNNConv

        w, b = sk.fold_bn(conv, bn)
        xc = x.contiguous(memory_format=CL)
        run = OneDNNConv(w, b, conv.stride, conv.padding, conv.dilation, "relu", xc)
        return lambda: run(xc)
    if impl == "fused_ncdhw":
        w, b = sk.fold_bn(conv, bn)
        return lambda: sk.conv3d_bn_act(x, w, b, conv.stride, conv.padding, backend="cpu")
    raise ValueError(impl)


@pytest.mark.parametrize("impl", GPU_IMPLS if CUDA else CPU_IMPLS)
@pytest.mark.parametrize("key", CASES, ids=[case_name(k) for k in CASES])
def test_conv3d_layer(measure, key, impl):
    fn = make_fn(impl, key)
    with torch.no_grad():
        measure(case_name(key), impl, lambda: fn(), baseline=impl == "eager", device=DEVICE, flops=flops(key),
                count=LAYERS[key], layer_flops=flops(key))


STEM_BATCH = 32 if CUDA else 1
STEM_DTYPE = torch.bfloat16 if CUDA else torch.float32
STEM_IMPLS = (["eager", "cudnn", "fused", "triton_pool_fused", "triton_pool_separate"] if CUDA
              else ["eager", "onednn", "fused"])


def stem_fn(impl, name):
    cfg = STEMS[name]
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, cfg["c_out"], cfg["kernel"], (1, 2, 2), cfg["padding"], bias=False)
    bn = torch.nn.BatchNorm3d(cfg["c_out"])
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2)
        bn.running_mean.normal_()
    pool = torch.nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
    x = torch.randn(STEM_BATCH, 3, cfg["t"], 224, 224, device=DEVICE, dtype=STEM_DTYPE)
    if impl == "eager":
        mod = torch.nn.Sequential(conv, bn, torch.nn.ReLU(), pool).to(DEVICE, STEM_DTYPE).eval()
        return lambda: mod(x)
    w, b = sk.fold_bn(conv, bn)
    w, b = w.to(DEVICE), b.to(DEVICE)
    xc = x.contiguous(memory_format=CL)
    if impl in ("cudnn", "onednn"):
        wc = w.to(STEM_DTYPE).contiguous(memory_format=CL)
        backend = "cpu" if impl == "onednn" else None
        if backend:
            return lambda: pool(sk.conv3d_bn_act(xc, wc, b, (1, 2, 2), cfg["padding"], backend=backend))
        return lambda: pool(torch.ops.slowfast_kernels.conv3d_bn_act(xc, wc, b, [1, 2, 2], list(cfg["padding"]),
                                                                     [1, 1, 1], None, "relu"))
    fuse_pool = {"fused": None, "triton_pool_fused": True, "triton_pool_separate": False}[impl]
    backend = "auto" if impl == "fused" else "triton"
    return lambda: sk.conv3d_bn_act_maxpool(xc, w, b, (1, 2, 2), cfg["padding"], fuse_pool=fuse_pool,
                                            backend=backend)


@pytest.mark.parametrize("impl", STEM_IMPLS)
@pytest.mark.parametrize("name", list(STEMS))
def test_stem(measure, name, impl):
    cfg = STEMS[name]
    key = ((STEM_BATCH, 3, cfg["t"], 224, 224), cfg["c_out"], cfg["kernel"], (1, 2, 2), cfg["padding"])
    fn = stem_fn(impl, name)
    with torch.no_grad():
        measure(name, impl, lambda: fn(), baseline=impl == "eager", device=DEVICE, flops=flops(key),
                dtype=str(STEM_DTYPE).replace("torch.", ""), batch=STEM_BATCH)


def test_zz_model_sums(capsys):
    """Each impl's time summed over the model's conv layers (weighted by count), and its ratio to eager."""
    recs = [r for r in _records["bench_conv3d"] if "count" in r]  # the stem cases are not layer sums
    if not recs:
        pytest.skip("no layer was measured")
    sums, work, cases = {}, {}, set()
    for r in recs:
        sums[r["impl"]] = sums.get(r["impl"], 0.0) + r["median_s"] * r["count"]
        work[r["impl"]] = work.get(r["impl"], 0.0) + r["layer_flops"] * r["count"]
        cases.add(r["case"])
    with capsys.disabled():
        print(f"\nSlowFast R50 8x8 conv layers ({len(cases)} of {len(LAYERS)} distinct measured, "
              f"{sum(LAYERS.values())} convs in the model, batch {BATCH}, {DEVICE}):")
        for impl, t in sums.items():
            ratio = sums.get("eager", t) / t
            print(f"  {impl:12s} {t * 1e3:9.1f} ms  {work[impl] / t / 1e12:7.3f} TFLOP/s  x eager {ratio:.2f}")
