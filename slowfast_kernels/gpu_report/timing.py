"""Timing and the benchmark record format (the one benchmarks/conftest.py writes).

CUDA: CUDA events around each sample, after warm-up; a sample is `inner` back-to-back calls, inner chosen
so a sample lasts >= min_sample_s (a 20 us layer timed one call per event pair would measure the launch:
~5-10 us of Python and driver per call). CPU: perf_counter around each call. Repeated calls reuse one
input, so layers whose tensors fit the H200's 60 MB L2 are timed warm.

A record is {case, impl, baseline, median_s, iqr_s, min_s, max_s, rounds, peer, ...}; finalize() adds
what conftest's pytest_sessionfinish adds: the fastest member of each peer group again under the group's name
(impl "eager" / "compile", `variant` = the member), speedup_vs_baseline, speedup_vs_<impl> against every
other impl of the case, tflops and model_flop_utilization against a `bf16_gemm` ceiling record.
"""
from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from typing import Callable, Dict, List, Optional

import torch


def _stats(samples: List[float], inner: int) -> Dict[str, float]:
    s = sorted(samples)
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0], s[0], s[0]]
    return dict(median_s=statistics.median(s), iqr_s=q[2] - q[0], min_s=s[0], max_s=s[-1], rounds=len(s),
                inner=inner)


def measure(fn: Callable[[], object], device: str, rounds: int = 20, warmup: int = 2,
            min_sample_s: float = 1e-3, max_inner: int = 200) -> Dict[str, float]:
    """median_s, iqr_s, min_s, max_s (seconds per call), rounds, inner (calls per sample)."""
    cuda = str(device).startswith("cuda")
    for _ in range(warmup):
        fn()
    if not cuda:
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return _stats(samples, 1)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    one = max(start.elapsed_time(end) / 1e3, 1e-7)
    inner = max(1, min(max_inner, math.ceil(min_sample_s / one)))
    samples = []
    for _ in range(rounds):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / inner)
    return _stats(samples, inner)


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64 (NaN when got has a non-finite element)."""
    g, r = got.detach().double(), ref.detach().double()
    if not torch.isfinite(g).all():
        return float("nan")
    return float((g - r).norm() / r.norm().clamp_min(1e-30))


def _add_peers(recs: List[dict]) -> None:
    groups = defaultdict(list)
    for r in recs:
        if r.get("peer") and r.get("median_s"):
            groups[(r.get("suite"), r["case"], r["peer"])].append(r)
    for (_, _, peer), members in groups.items():
        best = min(members, key=lambda r: r["median_s"])
        recs.append(dict(best, impl=peer, variant=best["impl"], peer=None, baseline=peer == "eager"))


def finalize(records: List[dict]) -> List[dict]:
    """A copy of records with the peer records and the ratios added (see the module docstring)."""
    recs = [dict(r) for r in records]
    _add_peers(recs)
    by_case = defaultdict(list)
    for r in recs:
        by_case[(r.get("suite"), r["case"])].append(r)
    for members in by_case.values():
        base = next((m["median_s"] for m in members if m.get("baseline") and m.get("median_s")), None)
        for r in members:
            if not r.get("median_s"):
                continue  # not finished, or failed: its reason is in the record
            r["speedup_vs_baseline"] = base / r["median_s"] if base else None
            for other in members:
                if other is not r and other.get("median_s"):
                    r[f"speedup_vs_{other['impl']}"] = other["median_s"] / r["median_s"]
    ceiling = next((r.get("tflops") for r in recs if r["impl"] == "bf16_gemm" and r.get("tflops")), None)
    for r in recs:
        if ceiling and r.get("tflops") and r["impl"] != "bf16_gemm":
            r["model_flop_utilization"] = r["tflops"] / ceiling
    return recs


def bench_record(suite: str, case: str, impl: str, result: Optional[dict], baseline: bool = False,
                 peer: Optional[str] = None, flops: Optional[float] = None, **extra) -> dict:
    """One record in benchmarks/conftest.py's format (result None: not finished, reason in extra)."""
    rec = dict(suite=suite, case=case, impl=impl, baseline=baseline, peer=peer, **(result or {}), **extra)
    if result and flops:
        rec["tflops"] = flops / result["median_s"] / 1e12
    return rec
