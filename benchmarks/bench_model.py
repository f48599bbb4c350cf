"""End to end: SlowFast R50 8x8 at 224x224, fused vs eager reference vs torch.compile of the reference.

CPU: batch 1, fp32 NCDHW eager. GPU: batch 32, bf16 channels_last_3d eager (the strongest eager setting),
torch.compile mode max-autotune, fused with CUDA graphs. Reports clips/s, model FLOP utilization against
the measured bf16 GEMM rate (GPU), and peak memory (GPU).
Run: python -m pytest benchmarks/bench_model.py   (SLOWFAST_BENCH_BATCH overrides the batch size)
"""
import copy
import os

import pytest
import torch

import slowfast_kernels as sk
import slowfast_reference as R

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BATCH = int(os.environ.get("SLOWFAST_BENCH_BATCH", 32 if CUDA else 1))
DTYPE = torch.bfloat16 if CUDA else torch.float32
GFLOP_PER_VIEW = 101.0  # 224x224 view: twice fvcore's multiply-add count
CASE = f"slowfast_r50_8x8 224 b{BATCH} {str(DTYPE).replace('torch.', '')} {DEVICE}"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = R.slowfast_r50_8x8().eval().to(DEVICE)
    clip = torch.rand(BATCH, 3, 32, 224, 224, device=DEVICE)
    inputs = R.pack_pathways(clip, 4)
    return model, inputs


def _peak_memory(fn):
    if not CUDA:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def _record(measure, impl, fn, baseline=False):
    rounds = 20 if CUDA else 11  # CPU eager varies run to run by ~20%: more rounds for a stable median
    with torch.inference_mode():
        fn()  # warm-up / compile
        mem = _peak_memory(fn)
        rec = measure(CASE, impl, fn, baseline=baseline, device=DEVICE, rounds=rounds,
                      flops=GFLOP_PER_VIEW * 1e9 * BATCH)
    rec["clips_per_s"] = BATCH / rec["median_s"]
    if mem is not None:
        rec["peak_memory_bytes"] = mem
    return rec


def test_eager(setup, measure):
    model, inputs = setup
    if CUDA:
        model = copy.deepcopy(model).to(DTYPE, memory_format=torch.channels_last_3d)
        inputs = [t.to(DTYPE).contiguous(memory_format=torch.channels_last_3d) for t in inputs]
    _record(measure, "eager", lambda: model(inputs), baseline=True)


def test_compile(setup, measure):
    model, inputs = setup
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    if CUDA:
        model = copy.deepcopy(model).to(DTYPE, memory_format=torch.channels_last_3d)
        inputs = [t.to(DTYPE).contiguous(memory_format=torch.channels_last_3d) for t in inputs]
    compiled = torch.compile(model, mode="max-autotune" if CUDA else None)
    _record(measure, "compile", lambda: compiled(inputs))


@pytest.mark.skipif(not CUDA, reason="the bf16 GEMM ceiling (for model FLOP utilization) is a GPU figure")
def test_ceiling_bf16_gemm(measure):
    """The machine's dense bf16 rate in this run: model FLOP utilization = a model's TFLOP/s / this."""
    n = 8192
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    measure("ceiling bf16 GEMM 8192^3", "bf16_gemm", lambda: a @ b, device="cuda", rounds=50, flops=2 * n ** 3)


def test_fused(setup, measure):
    model, inputs = setup
    fused = sk.fuse(model, dtype=DTYPE, cuda_graph=CUDA)
    _record(measure, "fused", lambda: fused(inputs))
