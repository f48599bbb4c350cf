"""Where the time goes, layer kind by layer kind: the fused model (torch profiler) against OpenVINO (its perf
counters), SlowFast R50 8x8 on this CPU. A diagnosis, not a benchmark: bench_model.py gives the end-to-end
figures; this says which layers make the difference between them.

    python benchmarks/layers_vs_openvino.py [--dtype bf16|fp32] [--batch 1] [--size 224] [--threads 2]
                                            [--forwards 5] [--json FILE]

Both run the same seed-0 model (bench_model's) on the same input, each in a process of its own (their thread
pools apart), warmed up; then --forwards profiled forwards each, one each in turn (the machine's drift touches
both alike); times are medians a forward. A row is a pathway and a
layer kind: the stems, the 1x1x1, 1x3x3 (either stride) and 3x1x1 convs, the lateral time-strided convs
(kernel Tx1x1 with T > 3), the pools; GEMMs that stand for convs (the time Winograd's and the AMX temporal
convs' matrix products, the 1x3x3 Winograd's batched ones) have rows of their own, since their shapes no
longer say the pathway. The top conv shapes of each side follow. A profiled forward runs ~5% slower than an
unprofiled one on our side (the profiler's per-op cost); OpenVINO's counters add less.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "python")]

# (pathway, kind) -> ms a forward; "gemm" kinds carry no pathway.
Times = Dict[Tuple[str, str], float]


def conv_kind(x_shape: Sequence[int], w_shape: Sequence[int], t_slow: int) -> Tuple[str, str]:
    """(pathway, kind) of a conv from its input and weight shapes. x [N, C, T, H, W] or the (T, H*W) view
    [N, C, T, HW]; w [C_out, C_in, kt, kh, kw] or the view's [C_out, C_in, kt, 1]."""
    pathway = "slow" if x_shape[2] == t_slow else "fast"
    kt, kh, kw = (list(w_shape[2:]) + [1, 1])[:3]
    if w_shape[1] <= 4:
        return pathway, "stem"
    if kt > 3 and kh == kw == 1:
        return "fast", "lateral"
    return pathway, f"{kt}x{kh}x{kw}"


def classify_op(name: str, shapes: List[List[int]], t_slow: int) -> Optional[Tuple[str, str]]:
    """(pathway, kind) of one profiled op of the fused model, None for the ones no layer stands for (views,
    casts, the head...: counted as "other")."""
    if name in ("mkldnn::_convolution_pointwise", "slowfast_kernels::conv3d_small_cin",
                "slowfast_kernels::conv3d_small_cin_bf16", "slowfast_kernels::conv3d_stem_amx"):
        return conv_kind(shapes[0], shapes[1], t_slow)
    if name == "mkldnn::_convolution_pointwise_":  # (accumulator, x, weight, ...)
        return conv_kind(shapes[1], shapes[2], t_slow)
    if name in ("slowfast_kernels::conv3d_winograd", "slowfast_kernels::conv3d_winograd_out"):
        return ("slow" if shapes[0][2] == t_slow else "fast"), "1x3x3"
    if name in ("slowfast_kernels::conv3d_winograd_time", "slowfast_kernels::winograd_time_input"):
        return ("slow" if shapes[0][2] == t_slow else "fast"), "3x1x1"
    if name in ("slowfast_kernels::winograd_time_output", "mkldnn::_linear_pointwise", "aten::mm", "aten::addmm",
                "aten::addmm_"):
        return "gemm", "3x1x1 (time GEMMs)"
    if name == "aten::bmm":
        return "gemm", "1x3x3 (Winograd GEMMs)"
    if name in ("slowfast_kernels::max_pool3d_cl", "aten::max_pool3d"):
        return ("slow" if shapes[0][2] == t_slow else "fast"), "pool"
    return None


def _model():
    import slowfast_reference as R

    torch.manual_seed(0)
    return R.slowfast_r50_8x8().eval()


def _inputs(batch: int, size: int):
    import slowfast_reference as R

    g = torch.Generator().manual_seed(batch)
    return R.pack_pathways(torch.rand(batch, 3, 32, size, size, generator=g), 4)


def _one_forward(total: float, times: Dict[str, float], shapes: Dict[str, float]) -> dict:
    return {"total_ms": total, "times": dict(times), "shapes": dict(shapes)}


def fused_side(args) -> Callable[[], dict]:
    """The fused model, warmed up; returns a function profiling one forward."""
    import slowfast_kernels as sk

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    fused = sk.fuse(_model(), dtype=dtype)
    xs = _inputs(args.batch, args.size)
    for _ in range(3):  # runners, recording, first replay
        fused(xs)
    t_slow = xs[0].shape[2]

    def profile() -> dict:
        with torch.profiler.profile(record_shapes=True) as prof:
            fused(xs)
        times: Dict[str, float] = collections.defaultdict(float)
        shapes: Dict[str, float] = collections.defaultdict(float)
        total = 0.0
        for event in prof.key_averages(group_by_input_shape=True):
            ms = event.self_cpu_time_total / 1e3
            total += ms
            kind = classify_op(event.key, [list(s) for s in event.input_shapes], t_slow)
            times[" ".join(kind) if kind else "other other"] += ms
            if kind is not None:
                shapes[f"{event.key.split('::')[-1]} {[list(s) for s in event.input_shapes[:3]]}"] += ms
        return _one_forward(total, times, shapes)
    return profile


def openvino_side(args) -> Union[str, Callable[[], dict]]:
    """OpenVINO on the ONNX file, warmed up; returns a function profiling one forward, or why it cannot run."""
    try:
        import openvino as ov
    except ImportError:
        return "openvino is not installed (pip install -e \".[bench]\")"
    core = ov.Core()
    if args.dtype == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "OpenVINO runs no native bf16 on this CPU"
    xs = _inputs(args.batch, args.size)
    compiled = core.compile_model(core.read_model(args.onnx), "CPU", {
        "INFERENCE_PRECISION_HINT": args.dtype.replace("fp32", "f32"), "INFERENCE_NUM_THREADS": args.threads,
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    feeds = {"slow": xs[0].numpy(), "fast": xs[1].numpy()}
    for _ in range(3):
        request.infer(feeds)
    node_shapes = {}  # the runtime graph's shapes, known once it ran (the ONNX file's batch is dynamic)
    for op in compiled.get_runtime_model().get_ordered_ops():
        node_shapes[op.get_friendly_name()] = [[d.get_length() if d.is_static else -1 for d in op.input(i).get_partial_shape()]
                                               for i in range(op.get_input_size())]
    t_slow = xs[0].shape[2]

    def profile() -> dict:
        request.infer(feeds)
        times: Dict[str, float] = collections.defaultdict(float)
        shapes: Dict[str, float] = collections.defaultdict(float)
        total = 0.0
        for p in request.get_profiling_info():  # this forward's counters
            if p.status.name != "EXECUTED":
                continue
            ms = p.real_time.total_seconds() * 1e3
            total += ms
            ins = node_shapes.get(p.node_name, [])
            if p.node_type == "Convolution" and len(ins) >= 2:
                kind = conv_kind(ins[0], ins[1], t_slow)
                shapes[f"{p.exec_type} {ins[:2]}"] += ms
            elif p.node_type == "MaxPool" and ins:
                kind = ("slow" if ins[0][2] == t_slow else "fast"), "pool"
            else:
                kind = ("other", "other")
            times[" ".join(kind)] += ms
        return _one_forward(total, times, shapes)
    return profile


def _child(args) -> None:
    """One side in a process of its own: prints {"ready": true} (or {"skipped": why}), then one profiled forward
    as JSON per stdin line "run"; anything else ends it. Waiting on stdin blocks: no CPU taken from the
    other side's forward."""
    profile = fused_side(args) if args.side == "fused" else openvino_side(args)
    if isinstance(profile, str):
        print(json.dumps({"skipped": profile}), flush=True)
        return
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(json.dumps(profile()), flush=True)


def _median_forward(runs: List[dict]) -> dict:
    """Per kind and per shape, the median over the profiled forwards."""
    out = {"total_ms": statistics.median(r["total_ms"] for r in runs), "forwards": len(runs)}
    for field in ("times", "shapes"):
        keys = set().union(*(r[field] for r in runs))
        out[field] = {k: statistics.median(r[field].get(k, 0.0) for r in runs) for k in keys}
    return out


def _report(ours: dict, peer: dict, top: int) -> str:
    lines = [f"{'pathway kind':<32}{'fused ms':>10}{'OpenVINO ms':>13}{'OpenVINO/fused':>16}"]
    keys = sorted(set(ours["times"]) | set(peer.get("times", {})),
                  key=lambda k: -max(ours["times"].get(k, 0), peer.get("times", {}).get(k, 0)))
    for k in keys:
        a, b = ours["times"].get(k, 0.0), peer.get("times", {}).get(k)
        ratio = f"{b / a:.2f}x" if b and a else "-"
        lines.append(f"{k:<32}{a:>10.2f}{(f'{b:.2f}' if b is not None else '-'):>13}{ratio:>16}")
    lines.append(f"{'total (profiled)':<32}{ours['total_ms']:>10.1f}{peer.get('total_ms', float('nan')):>13.1f}")
    for name, side in (("fused", ours), ("OpenVINO", peer)):
        if "shapes" not in side:
            continue
        lines.append(f"\n{name}: top {top} conv shapes (ms a forward)")
        for shape, ms in sorted(side["shapes"].items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {ms:8.2f}  {shape}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forwards", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", help="also write both sides' figures here")
    parser.add_argument("--side", choices=("fused", "openvino"), help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        _child(args)
        return
    passed = list(argv if argv is not None else sys.argv[1:])
    results: Dict[str, dict] = {}
    folder = tempfile.TemporaryDirectory()
    onnx = os.path.join(folder.name, "model.onnx")
    try:
        from slowfast_kernels.export import export_onnx

        # Exported here, not in the OpenVINO child: after an export in its own process, OpenVINO's forwards
        # ran ~1.8x slower (seen on the 2-core EPYC).
        export_onnx(_model(), onnx, batch="dynamic", size=args.size, check=False)
    except ImportError as exc:
        onnx = None
        results["openvino"] = {"skipped": f"no ONNX export ({exc})"}
    children, logs = {}, []
    for side in ("fused", "openvino") if onnx else ("fused",):
        log = open(os.path.join(folder.name, f"{side}.log"), "w+")  # the profiler's chatter; the tail on failure
        logs.append(log)
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), *passed, "--side", side, "--onnx",
                                  onnx or ""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        first = child.stdout.readline()
        if not first.strip():
            child.wait()
            log.seek(0)
            tail = (log.read().strip().splitlines() or ["no output"])[-1]
            first = json.dumps({"skipped": f"the {side} side ended before it was ready: {tail}"})
        status = json.loads(first)
        if "ready" in status:
            children[side] = child
        elif side == "fused":
            sys.exit(f"layers_vs_openvino: the fused side did not start: {status}")
        else:
            results[side] = status
            child.wait()
    runs: Dict[str, List[dict]] = {side: [] for side in children}
    order = list(children)
    for i in range(args.forwards):  # one profiled forward each in turn, the order rotated every round
        for side in order if i % 2 == 0 else order[::-1]:
            children[side].stdin.write("run\n")
            children[side].stdin.flush()
            runs[side].append(json.loads(children[side].stdout.readline()))
    for side, child in children.items():
        child.stdin.close()
        child.wait()
        results[side] = _median_forward(runs[side])
    for log in logs:
        log.close()
    folder.cleanup()
    if "skipped" in results["openvino"]:
        print(f"OpenVINO side skipped: {results['openvino']['skipped']}")
    print(f"SlowFast R50 8x8, {args.size} px, batch {args.batch}, {args.dtype}, {args.threads} threads, "
          f"{args.forwards} profiled forwards")
    print(_report(results["fused"], results["openvino"], args.top))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **results}, f, indent=1)


if __name__ == "__main__":
    main()
