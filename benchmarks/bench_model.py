"""End to end: SlowFast R50 8x8 at 224x224, the fused model against the strongest eager and torch.compile peers.

Every implementation runs in one session; each variant is recorded under its own name, and at the end the
fastest eager variant is also recorded as `eager` and the fastest compile variant as `compile`, so
`speedup_vs_eager` and `speedup_vs_compile` are ratios to the strongest peers (conftest's `peer=`).

CPU (batches 1 and 4; 2 threads unless SLOWFAST_BENCH_THREADS): each implementation in a process of its own
(benchmarks/cpu_worker.py), their rounds interleaved (one forward each in turn, the order rotated every round), so
no implementation's thread pool spins beside another's and the machine's drift touches all alike: eager fp32
NCDHW and channels_last_3d; torch.compile default mode with inductor freezing; fused fp32 and fused bf16
(`fused_bf16`); the peers a CPU user picks, run on the BN-folded ONNX file (slowfast_kernels.export):
`onnxruntime`, `openvino_f32` and `openvino_bf16` (OpenVINO's INFERENCE_PRECISION_HINT bf16). A peer that is
not installed, or a bf16 implementation on a CPU without native bf16 (AVX512_BF16 / AMX), is recorded as
skipped with its reason. Each record has `rel_err_vs_float64` (max |logit error| / max |logit| against the
reference in float64 on the same input); bf16 records add `bf16_tolerance` (2x eager bf16's error) and
`within_tolerance`. The machine info names the CPU model and its ISA flags.
GPU (bf16 unless named; batches 1, 8 and 32; cudnn.benchmark on for every implementation): eager fp32 NCDHW
with TF32 convs (PySlowFast's default), eager bf16 NCDHW and bf16 channels_last_3d, each with and without a
CUDA graph; torch.compile default and max-autotune (freezing; compile time reported; max-autotune in a child
process under SLOWFAST_BENCH_AUTOTUNE_LIMIT_S seconds, recorded as not finished past it); fused with and
without a graph. Also: the fused model's first-call time (runner preparation included) and peak memory.

Run: python -m pytest benchmarks/bench_model.py   (SLOWFAST_BENCH_BATCHES="1,8" overrides the batch sizes;
SLOWFAST_BENCH_SIZE=64 SLOWFAST_BENCH_ROUNDS=3 SLOWFAST_BENCH_RESULTS=/tmp/bench make a quick check of the
machinery, not a measurement). The CPU peers: pip install -e ".[bench]" (onnxruntime, openvino).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext

import pytest
import torch

from slowfast_kernels.gpu_report.model import _graphed  # noqa: E402  (the CUDA-graph wrapper, shared)

import slowfast_kernels as sk
import slowfast_reference as R

from conftest import record_extra

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BATCHES = [int(b) for b in os.environ.get("SLOWFAST_BENCH_BATCHES", "1,8,32" if CUDA else "1,4").split(",")]
SIZE = int(os.environ.get("SLOWFAST_BENCH_SIZE", "224"))
THREADS = int(os.environ.get("SLOWFAST_BENCH_THREADS", str(torch.get_num_threads())))
GFLOP_PER_VIEW = 101.0 * (SIZE / 224) ** 2  # 224x224 view: twice fvcore's multiply-add count
AUTOTUNE_LIMIT_S = float(os.environ.get("SLOWFAST_BENCH_AUTOTUNE_LIMIT_S", "900"))
# CPU eager varies run to run by ~20%: more rounds for a stable median
ROUNDS = int(os.environ.get("SLOWFAST_BENCH_ROUNDS", "20" if CUDA else "11"))
CL = torch.channels_last_3d


def case(batch: int, dtype: torch.dtype) -> str:
    return f"slowfast_r50_8x8 {SIZE} b{batch} {str(dtype).replace('torch.', '')} {DEVICE}"


DTYPE = torch.bfloat16 if CUDA else torch.float32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return R.slowfast_r50_8x8().eval().to(DEVICE)


def _inputs(batch: int, dtype=torch.float32, layout=torch.contiguous_format):
    g = torch.Generator().manual_seed(batch)
    clip = torch.rand(batch, 3, 32, SIZE, SIZE, generator=g).to(DEVICE)
    return [t.to(dtype).contiguous(memory_format=layout) for t in R.pack_pathways(clip, 4)]


@contextmanager
def _tf32(enabled: bool):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved


def _peak_memory(fn):
    if not CUDA:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def _record(measure, batch, impl, fn, dtype=DTYPE, peer=None, **extra):
    with torch.inference_mode():
        fn()  # warm-up (compilation, cuDNN algorithm search, runner preparation)
        mem = _peak_memory(fn)
        rec = measure(case(batch, DTYPE), impl, fn, device=DEVICE, rounds=ROUNDS, peer=peer,
                      flops=GFLOP_PER_VIEW * 1e9 * batch, dtype=str(dtype).replace("torch.", ""), **extra)
    rec["clips_per_s"] = batch / rec["median_s"]
    if mem is not None:
        rec["peak_memory_bytes"] = mem
    return rec


EAGER_VARIANTS = (
    # (impl, dtype, layout, TF32): GPU: PySlowFast's default fp32 (TF32 convs) and the two bf16 layouts
    [("eager_fp32_ncdhw_tf32", torch.float32, torch.contiguous_format, True),
     ("eager_bf16_ncdhw", torch.bfloat16, torch.contiguous_format, False),
     ("eager_bf16_channels_last", torch.bfloat16, CL, False)]
    if CUDA else
    [("eager_fp32_ncdhw", torch.float32, torch.contiguous_format, False),
     ("eager_fp32_channels_last", torch.float32, CL, False)]
)


IN_PROCESS = pytest.mark.skipif(not CUDA, reason="CPU: every implementation is timed in a process of its own "
                                                   "(test_cpu_side_by_side)")


@IN_PROCESS
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("variant", EAGER_VARIANTS, ids=[v[0] for v in EAGER_VARIANTS])
@pytest.mark.parametrize("graph", [False, True] if CUDA else [False], ids=["", "graph"][: 2 if CUDA else 1])
def test_eager(model, measure, batch, variant, graph):
    impl, dtype, layout, tf32 = variant
    net = copy.deepcopy(model).to(dtype, memory_format=layout)
    inputs = _inputs(batch, dtype, layout)
    with _tf32(tf32) if CUDA else nullcontext():
        with torch.inference_mode():
            fn = _graphed(net, inputs) if graph else (lambda: net(inputs))
        _record(measure, batch, impl + ("_graph" if graph else ""), fn, dtype, peer="eager")


@IN_PROCESS
@pytest.mark.parametrize("batch", BATCHES)
def test_compile_default(model, measure, batch):
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    net = copy.deepcopy(model).to(DTYPE)
    inputs = _inputs(batch, DTYPE)
    compiled = torch.compile(net)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled(inputs)
    compile_s = time.perf_counter() - start
    _record(measure, batch, "compile_default", lambda: compiled(inputs), peer="compile", compile_s=compile_s)


_CHILD = r"""
import json, statistics, sys, time, torch
import torch._inductor.config as inductor_config
import slowfast_reference as R
inductor_config.freezing = True
batch, rounds = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
net = R.slowfast_r50_8x8().eval().cuda().to(torch.bfloat16)
clip = torch.rand(batch, 3, 32, 224, 224, generator=torch.Generator().manual_seed(batch)).cuda()
inputs = [t.to(torch.bfloat16) for t in R.pack_pathways(clip, 4)]
torch.backends.cudnn.benchmark = True
compiled = torch.compile(net, mode="max-autotune")
with torch.inference_mode():
    start = time.perf_counter(); compiled(inputs); torch.cuda.synchronize(); compile_s = time.perf_counter() - start
    times = []
    for _ in range(rounds):
        start = torch.cuda.Event(enable_timing=True); end = torch.cuda.Event(enable_timing=True)
        start.record(); compiled(inputs); end.record(); torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
times.sort()
q = statistics.quantiles(times, n=4)
print(json.dumps({"median_s": statistics.median(times), "iqr_s": q[2] - q[0], "min_s": times[0],
                  "max_s": times[-1], "rounds": rounds, "compile_s": compile_s}))
"""


@pytest.mark.skipif(not CUDA, reason="max-autotune is a GPU mode (its CPU compile did not finish usefully)")
@pytest.mark.parametrize("batch", BATCHES)
def test_compile_max_autotune(measure, batch):
    """In a child process, so a compile that outruns the limit can be stopped and recorded as not finished."""
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, str(batch), str(ROUNDS)], capture_output=True,
                              text=True, timeout=AUTOTUNE_LIMIT_S, env=dict(os.environ))
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        result = None
    record_extra(case(batch, DTYPE), "compile_max_autotune", result, peer="compile",
                 flops=GFLOP_PER_VIEW * 1e9 * batch,
                 not_finished=None if result else f"did not finish compiling in {AUTOTUNE_LIMIT_S:.0f} s")


@IN_PROCESS
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("graph", [False, True] if CUDA else [False], ids=["", "graph"][: 2 if CUDA else 1])
def test_fused(model, measure, batch, graph):
    inputs = _inputs(batch)
    fused = sk.fuse(model, dtype=DTYPE, cuda_graph=graph)
    start = time.perf_counter()
    with torch.inference_mode():
        fused(inputs)
        if CUDA:
            torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    _record(measure, batch, "fused_graph" if graph else "fused", lambda: fused(inputs), first_call_s=first_call_s)


@pytest.mark.skipif(not CUDA, reason="the bf16 GEMM ceiling (for model FLOP utilization) is a GPU figure")
def test_ceiling_bf16_gemm(measure):
    """The machine's dense bf16 rate in this run: model FLOP utilization = a model's TFLOP/s / this."""
    n = 8192
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    measure("ceiling bf16 GEMM 8192^3", "bf16_gemm", lambda: a @ b, device="cuda", rounds=50, flops=2 * n ** 3)


# CPU side by side: (impl, peer group). Each in its own process (cpu_worker.py), rounds interleaved.
CPU_IMPLS = [("eager_fp32_ncdhw", "eager"), ("eager_fp32_channels_last", "eager"), ("compile_default", "compile"),
             ("fused", None), ("fused_bf16", None), ("onnxruntime", None), ("openvino_f32", None),
             ("openvino_bf16", None)]
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_worker.py")


@pytest.fixture(scope="module")
def cpu_files(model, tmp_path_factory):
    """The model's state dict and its BN-folded ONNX file (what the OpenVINO and onnxruntime peers run)."""
    from slowfast_kernels.export import export_onnx

    folder = tmp_path_factory.mktemp("bench_model_cpu")
    state = folder / "model.pt"
    torch.save(model.state_dict(), state)
    onnx = folder / "model.onnx"
    try:
        export_onnx(model, onnx, batch="dynamic", size=SIZE, check=False)
    except ImportError as exc:  # onnx / onnxscript missing: the ONNX peers are skipped
        onnx = None
        print(f"bench_model: no ONNX file ({exc}): the onnxruntime and OpenVINO peers are skipped")
    return folder, state, onnx


def _rel_err(out: torch.Tensor, oracle: torch.Tensor) -> float:
    return ((out.double() - oracle).abs().max() / oracle.abs().max().clamp_min(1e-12)).item()


def _stats(times):
    import statistics

    times = sorted(times)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "iqr_s": q[2] - q[0], "min_s": times[0], "max_s": times[-1],
            "rounds": len(times)}


class _Worker:
    def __init__(self, impl, batch, folder, state, onnx, inputs_path):
        self.impl = impl
        self.output = folder / f"out_{impl}_b{batch}.pt"
        self.proc = subprocess.Popen([sys.executable, WORKER, impl, str(THREADS), str(state), str(onnx or ""),
                                      str(inputs_path), str(self.output)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        self.ready = self._reply()
        self.times = []

    def _reply(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            err = self.proc.stderr.read().strip().splitlines()
            return {"skipped": f"worker failed (exit {self.proc.returncode}): {err[-1] if err else ''}"}
        return json.loads(line)

    def run(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        self.times.append(self._reply()["s"])

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=60)


@pytest.mark.skipif(CUDA, reason="the CPU side-by-side run (the GPU tests time in process)")
@pytest.mark.parametrize("batch", BATCHES)
def test_cpu_side_by_side(model, cpu_files, batch):
    folder, state, onnx = cpu_files
    inputs = _inputs(batch)
    inputs_path = folder / f"inputs_b{batch}.pt"
    torch.save(inputs, inputs_path)
    with torch.inference_mode():
        oracle = copy.deepcopy(model).double()([t.double() for t in inputs])
        eager_bf16 = copy.deepcopy(model).bfloat16()([t.bfloat16() for t in inputs]).float()
    bf16_tol = 2 * _rel_err(eager_bf16, oracle)
    workers = []
    try:
        for impl, _ in CPU_IMPLS:  # built one after another: no build competes with another's
            if onnx is None and impl.startswith(("onnxruntime", "openvino")):
                workers.append((impl, None, "no ONNX file (pip install -e \".[export]\")"))
                continue
            w = _Worker(impl, batch, folder, state, onnx, inputs_path)
            workers.append((impl, w, w.ready.get("skipped")))
        live = [w for _, w, skipped in workers if w is not None and not skipped]
        for r in range(ROUNDS):
            for w in live[r % len(live):] + live[:r % len(live)]:
                w.run()
    finally:
        for _, w, _ in workers:
            if w is not None:
                w.close()
    flops = GFLOP_PER_VIEW * 1e9 * batch
    for (impl, peer), (_, w, skipped) in zip(CPU_IMPLS, workers):
        dtype = "bfloat16" if impl.endswith("bf16") else "float32"
        if skipped:
            print(f"bench_model: {impl} skipped: {skipped}")
            record_extra(case(batch, DTYPE), impl, None, peer=peer, dtype=dtype, skipped=skipped)
            continue
        err = _rel_err(torch.load(w.output), oracle)
        extra = {"bf16_tolerance": bf16_tol, "within_tolerance": err <= bf16_tol} if dtype == "bfloat16" else {}
        rec = record_extra(case(batch, DTYPE), impl, _stats(w.times), peer=peer, flops=flops, dtype=dtype,
                           threads=THREADS, rel_err_vs_float64=err, first_call_s=w.ready["first_call_s"], **extra)
        rec["clips_per_s"] = batch / rec["median_s"]


UNDER_LOAD = [("fused", "load1"), ("fused", "load2"), ("fused", "load2_torchfirst"), ("openvino_f32", "load2")]


@pytest.mark.skipif(CUDA, reason="a CPU figure: the fused model while another process holds a core")
@pytest.mark.parametrize("batch", BATCHES[:1])
def test_cpu_under_load(batch):
    """benchmarks/under_load.py: a spinner pinned to the last CPU; the fused model on 1 and 2 threads (imported
    before torch, the package's passive OpenMP waits; and torch first, OpenMP's active default) and OpenVINO
    f32 on 2 threads. Recorded as case '... under load' with `vs_1_thread` (this / fused's 1-thread median)."""
    under_load = pytest.importorskip("under_load")
    results = {}
    for impl in dict.fromkeys(i for i, _ in UNDER_LOAD):
        configs = [c for i, c in UNDER_LOAD if i == impl]
        if impl.startswith("openvino"):
            try:
                import openvino  # noqa: F401
            except ImportError:
                for c in configs:
                    record_extra(case(batch, DTYPE) + " under load", f"{impl}_{c}", None,
                                 skipped="openvino is not installed (pip install -e \".[bench]\")")
                continue
        out = under_load.main(["--size", str(SIZE), "--batch", str(batch), "--forwards", "5", "--repeats", "3",
                               "--impl", impl, "--configs", ",".join(configs)])
        results.update({(impl, c): r for c, r in out.items()})
    one = results[("fused", "load1")]["median_s"]
    for (impl, config), r in results.items():
        threads = int(config[4])
        record_extra(case(batch, DTYPE) + " under load", f"{impl}_{config}",
                     {k: r[k] for k in ("median_s", "iqr_s", "min_s", "max_s")} | {"rounds": r["forwards"]},
                     threads=threads, vs_1_thread=r["median_s"] / one,
                     omp_wait="active (torch imported first)" if config.endswith("torchfirst") else
                     "passive (slowfast_kernels imported first)" if impl == "fused" else "OpenVINO's own pool")
