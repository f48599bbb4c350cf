"""conv3d_winograd against oneDNN on every 1x3x3 stride-1 conv (the bottleneck conv_b layers) of SlowFast R50
8x8 at batch 1, 224x224, fp32 channels_last_3d, bias + ReLU fused (CPU).

Impls, timed interleaved in one process (round-robin, so load from other jobs hits all of them alike):
- `onednn`: plan.OneDNNConv (oneDNN's fused conv with a weight packed for the shape; what the fused model
  runs today), the baseline;
- `winograd_f4` / `winograd_f2`: WinogradConv with F(4x4, 3x3) / F(2x2, 3x3).
Each record also carries the output's error against float64 (max |y - y64| / max |y64|, and the same for
the median element) on post-BN-like input (ReLU of a normal) and a He-scaled weight.

Run: python -m pytest benchmarks/bench_conv3d_winograd.py   (SLOWFAST_BENCH_ROUNDS: rounds per impl, 40)
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from slowfast_kernels import _ext
from slowfast_kernels.ops.conv3d_winograd import WinogradConv
from slowfast_kernels.plan import OneDNNConv

from conftest import _records, record_extra

pytestmark = pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the kernel is part of the C++ extension")
CL = torch.channels_last_3d
ROUNDS = int(os.environ.get("SLOWFAST_BENCH_ROUNDS", "40"))
SUITE = "bench_conv3d_winograd"

# (pathway, stage, channels, T, H=W): conv_b is channels -> channels, 1x3x3, padding (0, 1, 1)
LAYERS = [
    ("slow", "res2", 64, 8, 56), ("slow", "res3", 128, 8, 28), ("slow", "res4", 256, 8, 14),
    ("slow", "res5", 512, 8, 7),
    ("fast", "res2", 8, 32, 56), ("fast", "res3", 16, 32, 28), ("fast", "res4", 32, 32, 14),
    ("fast", "res5", 64, 32, 7),
]
IDS = [f"{p} {s} conv_b {c}ch T{t} {h}px" for p, s, c, t, h in LAYERS]


def _stats(times):
    q = statistics.quantiles(times, n=4)
    return dict(median_s=statistics.median(times), iqr_s=q[2] - q[0], min_s=min(times), max_s=max(times),
                rounds=len(times))


def _errors(y, truth):
    diff = (y.double() - truth).abs()
    scale = truth.abs().max().item()
    return dict(max_rel_err=diff.max().item() / scale, median_rel_err=diff.median().item() / scale)


@pytest.mark.parametrize("threads", [2, 1])
@pytest.mark.parametrize("layer", LAYERS, ids=IDS)
def test_conv_b(layer, threads):
    """threads=1 too: with 2 cores shared by several jobs, a 2-thread call often waits a scheduler time slice
    for its second thread (the Fast layers' medians sat at ~8 ms whatever ran); one thread shows the work."""
    pathway, stage, c, t, h = layer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, c, t, h, h, generator=g).relu_().contiguous(memory_format=CL)
    weight = torch.randn(c, c, 1, 3, 3, generator=g) * (2.0 / (9 * c)) ** 0.5
    bias = 0.1 * torch.randn(c, generator=g)
    impls = {
        "onednn": OneDNNConv(weight, bias, (1, 1, 1), (0, 1, 1), (1, 1, 1), "relu", x),
        "winograd_f4": WinogradConv(weight, bias, "relu", tile=4),
        "winograd_f2": WinogradConv(weight, bias, "relu", tile=2),
    }
    # Errors without the ReLU (it zeroes half the outputs, which would hide the median error).
    plain = {"onednn": OneDNNConv(weight, bias, (1, 1, 1), (0, 1, 1), (1, 1, 1), "none", x),
             "winograd_f4": WinogradConv(weight, bias, "none", tile=4),
             "winograd_f2": WinogradConv(weight, bias, "none", tile=2)}
    truth = torch.nn.functional.conv3d(x.double(), weight.double(), bias.double(), 1, (0, 1, 1))
    errors = {name: _errors(run(x), truth) for name, run in plain.items()}
    times = {name: [] for name in impls}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(ROUNDS):
            for name, run in impls.items():
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    case = IDS[LAYERS.index(layer)] + ("" if threads == 2 else " 1 thread")
    flops = 2 * c * c * 9 * t * h * h
    for name in impls:
        rec = record_extra(case, name, _stats(times[name]), suite=SUITE, flops=flops, **errors[name],
                           note="2 cores shared with other jobs (measured under load)")
        rec["baseline"] = name == "onednn"
    # The Winograd outputs stay within the fused model's tolerance budget per layer (1e-4 on logits).
    assert errors["winograd_f4"]["max_rel_err"] < 1e-4 and errors["winograd_f2"]["max_rel_err"] < 1e-4


def test_summary():
    """Prints the per-layer table and the sums over the model: each shape runs in every block of its stage
    but the first of res3..res5, whose conv_b has stride (1, 2, 2) (3, 4, 6, 3 blocks: 3, 3, 5, 2 runs)."""
    blocks = {"res2": 3, "res3": 3, "res4": 5, "res5": 2}
    recs = [r for r in _records[SUITE] if r.get("median_s")]
    if not recs:
        pytest.skip("no conv_b measurements in this session")
    print()
    for suffix in ("", " 1 thread"):
        total = {}
        for case in IDS:
            row = {r["impl"]: r for r in recs if r["case"] == case + suffix}
            if not row:
                continue
            stage = case.split()[1]
            for name, r in row.items():
                total[name] = total.get(name, 0.0) + blocks[stage] * r["median_s"]
            print(f"{case + suffix:45s} " + " ".join(
                f"{n} {r['median_s'] * 1e3:7.3f} (min {r['min_s'] * 1e3:6.3f}) ms err {r['max_rel_err']:.1e}"
                for n, r in row.items()))
        print(f"summed over the model's conv_b layers{suffix or ' (2 threads)'}: "
              + ", ".join(f"{n} {s * 1e3:.1f} ms" for n, s in total.items()))
