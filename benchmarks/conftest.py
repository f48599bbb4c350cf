"""Shared benchmark machinery: every suite records (case, impl) medians through the `measure` fixture;
at session end the ratios to the case's baseline impl (eager PyTorch, measured in the same run) are
printed and written to benchmarks/results/<machine>-<suite>.json with the machine, versions and commit.

    def test_x(measure):
        measure("res4 conv_b", "eager", fn_eager, baseline=True, flops=..., bytes=...)
        measure("res4 conv_b", "cpu", fn_cpu)

Run: python -m pytest benchmarks/bench_<op>.py   (pytest-benchmark's own table is printed too).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# SLOWFAST_BENCH_RESULTS: another folder (a quick check of the machinery must not replace the measured files)
RESULTS = Path(os.environ.get("SLOWFAST_BENCH_RESULTS") or Path(__file__).parent / "results")
_records = defaultdict(list)  # suite -> list of dict


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine_info() -> dict:
    info = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    from slowfast_kernels import cpu_isa

    info.update(cpu_isa.current().record())  # CPU model name, vendor, ISA tier and flags
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def machine_tag() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).name.split()[-1].lower()
    # SLOWFAST_BENCH_TAG names another CPU's files (cpu2-zen5: a Zen 5 EPYC beside the Zen 4 one's cpu2-*.json);
    # an AMX CPU's figures are kept apart from the AVX-512 machine's by default (cpu2-amx-*.json)
    if os.environ.get("SLOWFAST_BENCH_TAG"):
        return os.environ["SLOWFAST_BENCH_TAG"]
    from slowfast_kernels import cpu_isa

    return f"cpu{os.cpu_count()}" + ("-amx" if cpu_isa.tier() == "amx" else "")


def record_extra(case, impl, result, suite="bench_model", peer=None, flops=None, **extra):
    """Record a measurement taken elsewhere (e.g. in a child process): result has median_s, iqr_s, min_s,
    max_s, rounds, or is None for a run that did not finish (kept, with its reason in extra)."""
    rec = dict(case=case, impl=impl, baseline=False, peer=peer, **(result or {}), **extra)
    if result and flops:
        rec["tflops"] = flops / result["median_s"] / 1e12
    _records[suite].append(rec)
    return rec


@pytest.fixture
def measure(benchmark, request):
    """measure(case, impl, fn, baseline=False, device="cpu", rounds=None, flops=None, bytes=None, peer=None).

    Times fn (synchronizing CUDA) with pytest-benchmark's pedantic mode and records median and IQR in
    seconds. A test should call it once (pytest-benchmark times one function per test). peer="eager" (or
    "compile") enters the record in a group whose fastest member is also recorded as impl "eager" (or
    "compile") at the end of the session, the eager one as the case's baseline.
    """
    suite = Path(request.node.fspath).stem

    def run(case, impl, fn, baseline=False, device="cpu", rounds=None, warmup=1, flops=None, bytes=None, peer=None,
            **extra):
        def timed():
            fn()
            _sync(device)

        rounds = rounds or (50 if device.startswith("cuda") else 5)
        benchmark.group = case
        benchmark.extra_info.update(case=case, impl=impl)
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
        st = benchmark.stats.stats
        rec = dict(case=case, impl=impl, baseline=baseline, median_s=st.median, iqr_s=st.iqr, min_s=st.min,
                   max_s=st.max, rounds=st.rounds, peer=peer, **extra)
        if flops:
            rec["tflops"] = flops / st.median / 1e12
        if bytes:
            rec["gb_per_s"] = bytes / st.median / 1e9
        _records[suite].append(rec)
        return rec

    return run


def _add_peers(recs) -> None:
    """Per case and peer group, the fastest finished member again under the group's name (variant = its own)."""
    groups = defaultdict(list)
    for r in recs:
        if r.get("peer") and r.get("median_s"):
            groups[(r["case"], r["peer"])].append(r)
    for (case, peer), members in groups.items():
        best = min(members, key=lambda r: r["median_s"])
        recs.append(dict(best, impl=peer, variant=best["impl"], peer=None, baseline=peer == "eager"))


def pytest_sessionfinish(session, exitstatus):
    if not _records:
        return
    RESULTS.mkdir(exist_ok=True)
    info = machine_info()
    for suite, recs in _records.items():
        _add_peers(recs)
        baselines = {r["case"]: r["median_s"] for r in recs if r["baseline"]}
        for r in recs:
            if not r.get("median_s"):
                continue  # a run that did not finish (its reason is in the record)
            base = baselines.get(r["case"])
            r["speedup_vs_baseline"] = (base / r["median_s"]) if base else None
            # speedup_vs_<impl> against every other impl of the same case (e.g. speedup_vs_eager, _vs_compile)
            for other in recs:
                if other["case"] == r["case"] and other is not r and other.get("median_s"):
                    r[f"speedup_vs_{other['impl']}"] = other["median_s"] / r["median_s"]
        ceiling = next((r["tflops"] for r in recs if r["impl"] == "bf16_gemm"), None)
        for r in recs:
            if ceiling and "tflops" in r and r["impl"] != "bf16_gemm":
                r["model_flop_utilization"] = r["tflops"] / ceiling
        path = RESULTS / f"{machine_tag()}-{suite}.json"
        path.write_text(json.dumps({"machine": info, "results": recs}, indent=1) + "\n")
        lines = [f"\n{suite} ({machine_tag()}, torch {info['torch']}) -> {path.name}",
                 f"{'case':40s} {'impl':30s} {'median ms':>10s} {'IQR ms':>8s} {'x base':>7s}  extra"]
        for r in recs:
            if not r.get("median_s"):
                why = f"skipped: {r['skipped']}" if r.get("skipped") else "not finished"
                lines.append(f"{r['case'][:40]:40s} {r['impl'][:30]:30s} {why}")
                continue
            ratio = f"{r['speedup_vs_baseline']:.2f}" if r.get("speedup_vs_baseline") else "-"
            extra = " ".join(f"{k}={r[k]:.2f}" for k in ("tflops", "gb_per_s") if k in r)
            if "rel_err_vs_float64" in r:
                extra += f" err={r['rel_err_vs_float64']:.1e}"
            if r.get("variant"):
                extra = f"({r['variant']}) " + extra
            lines.append(f"{r['case'][:40]:40s} {r['impl'][:30]:30s} {r['median_s'] * 1e3:10.3f} "
                         f"{r['iqr_s'] * 1e3:8.3f} {ratio:>7s}  {extra}")
        print("\n".join(lines))
