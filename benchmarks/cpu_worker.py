"""One CPU implementation of bench_model in a process of its own (bench_model.py starts one per implementation
and interleaves their rounds).

    python benchmarks/cpu_worker.py IMPL THREADS STATE_DICT ONNX INPUTS OUTPUT

Builds IMPL (the model from STATE_DICT, or the BN-folded ONNX file for the OpenVINO and onnxruntime peers),
runs it once on INPUTS (torch.save of [slow, fast]) and saves that output to OUTPUT, then prints one JSON line:
{"ready": true, "first_call_s": ...} or {"skipped": "reason"}. Then, per stdin line "run", one timed forward
is printed as {"s": seconds}; "quit" (or end of input) ends the process. Waiting on stdin blocks, so an
idle worker takes no CPU from the one being timed.
"""
from __future__ import annotations

import json
import sys
import time

import torch

IMPLS = ("eager_fp32_ncdhw", "eager_fp32_channels_last", "compile_default", "fused", "fused_bf16", "onnxruntime",
         "openvino_f32", "openvino_bf16")


def _torch_model(state_dict_path):
    import slowfast_reference as R

    model = R.slowfast_r50_8x8().eval()
    model.load_state_dict(torch.load(state_dict_path))
    return model


def build(impl: str, threads: int, state_dict_path: str, onnx_path: str, inputs):
    """A zero-argument callable running one forward (its result a tensor or array), or a str: why impl is
    skipped on this machine."""
    if impl.startswith(("onnxruntime", "openvino")):
        names = ("slow", "fast")
        feeds = {n: t.numpy() for n, t in zip(names, inputs)}
        if impl == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError:
                return "onnxruntime is not installed (pip install -e \".[bench]\")"
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
            return lambda: session.run(None, feeds)[0]
        try:
            import openvino as ov
        except ImportError:
            return "openvino is not installed (pip install -e \".[bench]\")"
        core = ov.Core()
        precision = "f32" if impl == "openvino_f32" else "bf16"
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return ("OpenVINO runs no native bf16 on this CPU (OPTIMIZATION_CAPABILITIES lacks BF16: no "
                    "AVX512_BF16 / AMX); its bf16 hint would run f32")
        compiled = core.compile_model(core.read_model(onnx_path), "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1})
        request = compiled.create_infer_request()

        def run():
            request.infer(feeds)
            return request.get_output_tensor(0).data.copy()
        return run

    if impl == "fused_bf16":
        from slowfast_kernels import cpu_isa

        isa = cpu_isa.current()
        if not isa.native_bf16 or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return (f"no native bfloat16 on this CPU ({isa.model}: no AVX512_BF16 / AMX-BF16): fuse(dtype=bfloat16) "
                    "would run the reference backend's eager bf16 convs")
    torch.set_num_threads(threads)
    model = _torch_model(state_dict_path)
    if impl.startswith("eager"):
        layout = torch.channels_last_3d if impl.endswith("channels_last") else torch.contiguous_format
        model = model.to(memory_format=layout)
        xs = [t.contiguous(memory_format=layout) for t in inputs]
        return lambda: model(xs)
    if impl == "compile_default":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(model)
        return lambda: compiled(inputs)
    import slowfast_kernels as sk

    fused = sk.fuse(model, dtype=torch.bfloat16 if impl == "fused_bf16" else torch.float32)
    return lambda: fused(inputs)


def _lock_memory() -> bool:
    """mlockall(MCL_CURRENT) once warm: the code and weights an idle worker holds stay resident while the
    others run (a proactive page reclaimer, e.g. a VM's DAMON pageout, would otherwise drop an idle worker's
    library pages and charge their re-reading to its next forward). False where the process may not lock
    (RLIMIT_MEMLOCK): nothing else changes."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).mlockall(1) == 0  # MCL_CURRENT
    except (OSError, AttributeError):
        return False


def main(argv) -> None:
    impl, threads, state_dict_path, onnx_path, inputs_path, output_path = argv
    if impl not in IMPLS:
        raise SystemExit(f"cpu_worker: IMPL: expected one of {IMPLS}, got {impl!r}")
    inputs = torch.load(inputs_path)
    with torch.inference_mode():
        fn = build(impl, int(threads), state_dict_path, onnx_path, inputs)
        if isinstance(fn, str):
            print(json.dumps({"skipped": fn}), flush=True)
            return
        start = time.perf_counter()
        out = fn()
        first_call_s = time.perf_counter() - start
        out = torch.as_tensor(out).float()
        torch.save(out, output_path)
        fn()  # a second warm-up call (compile's and the runners' first-call work is behind us)
        print(json.dumps({"ready": True, "first_call_s": first_call_s, "locked": _lock_memory()}), flush=True)
        for line in sys.stdin:
            if line.strip() != "run":
                break
            start = time.perf_counter()
            fn()
            print(json.dumps({"s": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
