"""The fused model on CPU while another process holds a core: N threads vs 1 thread, under OpenMP wait policies.

    python benchmarks/under_load.py [--size 112] [--batch 1] [--forwards 7] [--repeats 3] [--impl fused]
        [--configs idle2,load2,load1,load2_passive] [--json out.json]

Each configuration runs in a fresh process (OpenMP reads its wait policy once, when torch loads it); "load"
configurations start a spinner (`while True: pass`) pinned to the last CPU (taskset when available) first.
Configurations are interleaved `--repeats` times; per configuration the median forward over all repeats is
printed. Configs: idle<T> / load<T> (T threads; slowfast_kernels imported before torch: the package's passive
OpenMP waits), load<T>_torchfirst (torch imported first: OpenMP's own default, active waits),
load<T>_passive (OMP_WAIT_POLICY=PASSIVE set by hand), load<T>_active (OMP_WAIT_POLICY=ACTIVE: spinning
forced), load<T>_spin<N> (GOMP_SPINCOUNT=N). --impl openvino_f32 times OpenVINO on the model's ONNX export
instead (its own thread pool).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
size, batch, forwards, threads, impl, onnx = sys.argv[1:7]
size, batch, forwards, threads = int(size), int(batch), int(forwards), int(threads)
if impl == "fused" and sys.argv[7] == "package_first":
    import slowfast_kernels as sk  # before torch: the package's OpenMP default (passive waits) applies
import torch
if impl == "fused":
    import slowfast_kernels as sk
import slowfast_reference as R
torch.set_num_threads(threads)
torch.manual_seed(0)
model = R.slowfast_r50_8x8().eval()
clip = torch.rand(batch, 3, 32, size, size, generator=torch.Generator().manual_seed(0))
inputs = R.pack_pathways(clip, 4)
if impl == "fused":
    fused = sk.fuse(model)
    fn = lambda: fused(inputs)
else:
    import openvino as ov
    core = ov.Core()
    compiled = core.compile_model(core.read_model(onnx), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                  "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    req = compiled.create_infer_request()
    feeds = {"slow": inputs[0].numpy(), "fast": inputs[1].numpy()}
    fn = lambda: req.infer(feeds)
with torch.inference_mode():
    fn(); fn()
    times = []
    for _ in range(forwards):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def parse_config(name: str):
    """'load2_passive' -> (loaded, threads, extra environment)."""
    head, _, policy = name.partition("_")
    if head.startswith("idle"):
        loaded, threads = False, int(head[4:])
    elif head.startswith("load"):
        loaded, threads = True, int(head[4:])
    else:
        raise SystemExit(f"under_load: --configs: {name!r}: expected idle<T> or load<T>[_passive|_active|_spin<N>|_torchfirst]")
    env, order = {}, "package_first"
    if policy == "torchfirst":
        order = "torch_first"
    elif policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy == "active":
        env["OMP_WAIT_POLICY"] = "ACTIVE"
    elif policy.startswith("spin"):
        env["GOMP_SPINCOUNT"] = policy[4:]
    elif policy:
        raise SystemExit(f"under_load: --configs: {name!r}: unknown policy {policy!r}")
    return loaded, threads, env, order


def spinner():
    cmd = [sys.executable, "-c", "while True: pass"]
    last = str(os.cpu_count() - 1)
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", last] + cmd
    return subprocess.Popen(cmd)


def run(config: str, args, onnx: str):
    loaded, threads, extra, order = parse_config(config)
    env = dict(os.environ)
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        env.pop(k, None)
    env.update(extra)
    spin = spinner() if loaded else None
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.size), str(args.batch), str(args.forwards),
                              str(threads), args.impl, onnx, order], env=env, capture_output=True, text=True, check=True)
    finally:
        if spin is not None:
            spin.kill()
            spin.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--forwards", type=int, default=7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--impl", choices=("fused", "openvino_f32"), default="fused")
    p.add_argument("--configs", default="idle2,load2,load1,load2_torchfirst")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    configs = args.configs.split(",")
    onnx = ""
    if args.impl == "openvino_f32":
        import torch
        import slowfast_reference as R
        from slowfast_kernels.export import export_onnx

        torch.manual_seed(0)
        onnx = os.path.join(tempfile.mkdtemp(), "model.onnx")
        export_onnx(R.slowfast_r50_8x8().eval(), onnx, batch=args.batch, size=args.size, check=False)
    times = {c: [] for c in configs}
    for r in range(args.repeats):
        for c in configs[r % len(configs):] + configs[:r % len(configs)]:
            times[c] += run(c, args, onnx)
    result = {}
    for c in configs:
        t = sorted(times[c])
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        result[c] = {"median_s": statistics.median(t), "iqr_s": q[2] - q[0], "min_s": t[0], "max_s": t[-1],
                     "forwards": len(t)}
        print(f"{args.impl} {args.size}px b{args.batch} {c:18s} median {result[c]['median_s'] * 1e3:8.1f} ms  "
              f"min {t[0] * 1e3:8.1f}  max {t[-1] * 1e3:8.1f}  ({len(t)} forwards)")
    if args.json:
        record = {"size": args.size, "batch": args.batch, "impl": args.impl, "results": result}
        try:  # the machine, versions and commit, as the pytest-benchmark suites record them
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from conftest import machine_info

            record["machine"] = machine_info()
        except ImportError as exc:
            record["machine"] = {"unavailable": str(exc)}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return result


if __name__ == "__main__":
    main()
