"""The end-to-end stage: SlowFast R50 8x8 at 224, batches 1, 8 and 32 (--batches), the implementations of
benchmarks/bench_model.py under its names (suite bench_model):

  fused_graph               fuse(model, dtype=bf16, device="cuda"): CUDA graphs on (fp32 input, cast inside)
  eager_bf16_ncdhw[_graph]  the reference model in bf16, NCDHW (eager's fastest on the H200), with and
                            without a CUDA graph: peers of `eager` (the faster one, recorded again as eager)
  compile_default           torch.compile, default mode, inductor freezing; compile_s = the first call
  bf16_gemm                 an 8192^3 bf16 matmul: the ceiling of model_flop_utilization

cudnn.benchmark on for all. rel_err: each one's logits against the fp32 model (TF32 off) on the same clips.
The compiles come last, largest batch first: the stage's limit stops the least useful one. --dry-run: the
CPU, fp32, 32px, batch 1, one timed run, the fused model on the reference backend, torch.compile with
backend "eager" (inductor takes ~20 s for this model on a 2-core CPU), no graphs.
"""
from __future__ import annotations

import copy
import gc
import time

import torch

from .kernels import _fp32_exact
from .timing import bench_record, measure, relative_error

GFLOP_PER_VIEW = 101.0  # a 224x224 view: twice fvcore's multiply-add count (bench_model.py's constant)


def _graphed(fn, inputs):
    """fn(inputs) captured in a CUDA graph (static inputs), replayed per call (bench_model.py uses it too)."""
    static = [t.clone() for t in inputs]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(static)
    return lambda: (graph.replay(), out)[1]


class _Run:
    def __init__(self, ctx) -> None:
        import slowfast_reference as R

        self.ctx, self.R = ctx, R
        self.cuda = ctx.device == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.size = 32 if ctx.dry_run else 224
        self.rounds = int(ctx.params.get("rounds") or (1 if ctx.dry_run else 20))
        self.warmup = 0 if ctx.dry_run else 2
        # The dry run's fused model runs the reference backend: the same plumbing without ~10 s of oneDNN
        # weight packing and Winograd set-up for 110 convs on a 2-core CPU.
        self.backend = "reference" if ctx.dry_run else "auto"
        self._model = None
        self._refs = {}

    @property
    def model(self):
        if self._model is None:
            torch.manual_seed(0)
            self._model = self.R.slowfast_r50_8x8(train_crop=self.size).eval().to(self.ctx.device)
        return self._model

    def case(self, batch: int) -> str:
        return f"slowfast_r50_8x8 {self.size} b{batch} {str(self.dtype).replace('torch.', '')} {self.ctx.device}"

    def inputs(self, batch: int, dtype=torch.float32):
        g = torch.Generator().manual_seed(batch)
        clip = torch.rand(batch, 3, 32, self.size, self.size, generator=g).to(self.ctx.device)
        return [t.to(dtype) for t in self.R.pack_pathways(clip, 4)]

    def ref(self, batch: int) -> torch.Tensor:
        if batch not in self._refs:
            with torch.inference_mode(), _fp32_exact():
                self._refs[batch] = self.model(self.inputs(batch)).float()
        return self._refs[batch]

    def record(self, batch, impl, fn, peer=None, out=None, **extra):
        """fn's logits (out: its first call's, when given) checked against the fp32 model's, then fn timed."""
        with torch.inference_mode():
            out = fn() if out is None else out
            err = relative_error(out.float(), self.ref(batch))
            result = measure(fn, self.ctx.device, rounds=self.rounds, warmup=self.warmup, min_sample_s=0.0)
        rec = bench_record("bench_model", self.case(batch), impl, result, peer=peer,
                           flops=GFLOP_PER_VIEW * 1e9 * batch * (self.size / 224) ** 2,
                           dtype=str(self.dtype).replace("torch.", ""), batch=batch, rel_err=err, **extra)
        rec["clips_per_s"] = batch / result["median_s"]
        self.ctx.record(rec)

    def fused(self, batch):
        import slowfast_kernels as sk

        inputs = self.inputs(batch)
        start = time.perf_counter()
        fused = sk.fuse(self.model, dtype=self.dtype, device=self.ctx.device, backend=self.backend)
        with torch.inference_mode():
            out = fused(inputs).clone()
            if self.cuda:
                torch.cuda.synchronize()
        first = time.perf_counter() - start
        self.record(batch, "fused_graph" if self.cuda else "fused", lambda: fused(inputs), out=out, first_call_s=first,
                    cuda_graph=self.cuda, backend=self.backend)

    def eager(self, batch, graph):
        net = copy.deepcopy(self.model).to(self.dtype)
        inputs = self.inputs(batch, self.dtype)
        with torch.inference_mode():
            fn = _graphed(net, inputs) if graph else (lambda: net(inputs))
        impl = f"eager_{'bf16' if self.cuda else 'fp32'}_ncdhw" + ("_graph" if graph else "")
        self.record(batch, impl, fn, peer="eager")

    def compiled(self, batch):
        import torch._dynamo
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        torch._dynamo.reset()
        net = copy.deepcopy(self.model).to(self.dtype)
        inputs = self.inputs(batch, self.dtype)
        backend = "eager" if self.ctx.dry_run else "inductor"
        compiled = torch.compile(net, backend=backend)
        start = time.perf_counter()
        with torch.inference_mode():
            out = compiled(inputs).clone()
            if self.cuda:
                torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        self.record(batch, "compile_default", lambda: compiled(inputs), peer="compile", out=out, compile_s=compile_s,
                    compile_backend=backend, mode="default")

    def gemm(self):
        n = 8192
        g = torch.Generator(device="cuda").manual_seed(3)
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=g)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=g)
        result = measure(lambda: a @ b, "cuda", rounds=20, warmup=3)
        self.ctx.record(bench_record("bench_model", "ceiling bf16 GEMM 8192^3", "bf16_gemm", result,
                                     flops=2 * n ** 3))


def end_to_end(ctx) -> None:
    """The stage (see the module docstring)."""
    torch.backends.cudnn.benchmark = True
    run = _Run(ctx)
    batches = [int(b) for b in (ctx.params.get("batches") or ((1,) if ctx.dry_run else (1, 8, 32)))]
    cases = []
    for batch in batches:
        cases.append((f"b{batch} fused", lambda b=batch: run.fused(b), 5))
        cases.append((f"b{batch} eager", lambda b=batch: run.eager(b, graph=False), 3))
        if run.cuda:
            cases.append((f"b{batch} eager graph", lambda b=batch: run.eager(b, graph=True), 3))
    cases.append(("bf16 gemm ceiling", run.gemm if run.cuda else None, 2))
    for batch in sorted(batches, reverse=True):
        cases.append((f"b{batch} compile", lambda b=batch: run.compiled(b), 20))
    ctx.plan(name for name, _, _ in cases)
    for name, fn, needs_s in cases:
        if fn is None:
            ctx.skip(name, "a GPU figure (no CUDA device)")
            continue
        ctx.run_case(name, fn, needs_s=needs_s)
        gc.collect()  # the case's models and CUDA graphs (their memory pools) go before the next one
        if run.cuda:
            torch.cuda.empty_cache()
