"""The kernel stages: the stems against cuDNN (with a config sweep of the Triton stem kernels) and every conv
layer of R50 8x8, ours against cuDNN and eager. GPU: batch 32, bf16, 224 (--dry-run: batch 1, fp32, 32 on
the CPU, oneDNN in cuDNN's place, a few layers).

Records (suite bench_conv3d, bench_conv3d.py's case and impl names): `eager` (nn modules, NCDHW: eager's
fastest layout on the H200; the baseline), `cudnn` (the vendor's fused conv + bias + ReLU on
channels_last_3d, max_pool3d after it for the stems; `onednn` on the CPU), `fused` (what fuse() runs:
conv3d_bn_act_maxpool backend auto for the stems, the plan's runner for the layers, `variant` naming it),
and for the stems `triton_pool_fused` / `triton_pool_separate` and the sweep `triton_pool_*[KEY=VALUE,...]`
(`config` = the launch config used). Every record carries rel_err = ||out - ref|| / ||ref|| against fp32
eager on the same input, and parity_ok (rel_err under PARITY_TOL): a fast wrong kernel shows as such.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Dict, Optional

import torch

from .layers import STEM_POOL, STEM_STRIDE, STEMS, case_name, layer_flops, model_layers, stem_key
from .timing import bench_record, measure, relative_error

CL = torch.channels_last_3d
PARITY_TOL = {torch.bfloat16: 1e-2, torch.float16: 5e-3, torch.float32: 1e-4}  # ~5x the output's rounding
# The sweep: changes to the launcher's config for the stem's block_n (keys absent from it are skipped).
SWEEP = {
    "separate": ({"BLOCK_M": 64}, {"BLOCK_M": 256, "num_warps": 8}, {"num_warps": 8}),
    "fused": ({"ROWS": 16, "COLS": 16}, {"ROWS": 16, "COLS": 32}, {"ROWS": 32, "COLS": 16}, {"num_warps": 4}),
}


def _setting(ctx) -> dict:
    cuda = ctx.device == "cuda"
    p = ctx.params
    return dict(cuda=cuda, dtype=torch.bfloat16 if cuda else torch.float32, size=32 if ctx.dry_run else 224,
                warmup=0 if ctx.dry_run else 1, stem_size=16 if ctx.dry_run else 224,
                batch=int(p.get("kernel_batch") or (1 if ctx.dry_run else 32)),
                rounds=int(p.get("rounds") or (2 if ctx.dry_run else 20)), vendor="cudnn" if cuda else "onednn")


def _conv_bn(c_in, c_out, kernel, stride, padding, device, seed=0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d(c_in, c_out, kernel, stride, padding, bias=False)
    bn = torch.nn.BatchNorm3d(c_out)
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2)
        bn.running_mean.normal_()
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    return conv.to(device).eval(), bn.to(device).eval()


@contextlib.contextmanager
def _fp32_exact():
    """For the fp32 references: TF32 off, and no cuDNN algorithm search (a reference runs once: searching
    fp32 algorithms for 51 shapes would cost seconds of the stage's time and time nothing)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark
    cudnn.allow_tf32 = matmul.allow_tf32 = cudnn.benchmark = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved


def _timed(ctx, s, suite_case, impl, fn, ref, flops, **extra):
    """fn's output checked against ref, then fn timed; one record."""
    with torch.inference_mode():
        out = fn()
        err = relative_error(out.float(), ref)
        result = measure(fn, ctx.device, rounds=s["rounds"], warmup=s["warmup"])
    ctx.record(bench_record("bench_conv3d", suite_case, impl, result, baseline=impl == "eager", flops=flops,
                            dtype=str(s["dtype"]).replace("torch.", ""), batch=s["batch"],
                            rel_err=err, parity_ok=bool(err <= PARITY_TOL[s["dtype"]]), **extra))


# -- stems ---------------------------------------------------------------------------------------------

def _stem_launcher():
    from ..triton import conv3d_bn_act_maxpool as launcher

    return launcher


def stem_config(path: str, c_out: int) -> Optional[Dict]:
    """The launch config the Triton stem kernel of `path` ("fused" pool or "separate") takes for c_out, or
    None where the launcher exposes no table (CONV_CONFIGS / POOL_CONFIGS keyed by block_n)."""
    from ..backends import triton_interpreter_enabled

    mod = _stem_launcher()
    if triton_interpreter_enabled():
        cfg = getattr(mod, "INTERPRETER_POOL" if path == "fused" else "INTERPRETER_CONV", None)
        return dict(cfg, interpreter=True) if isinstance(cfg, dict) else None
    table = getattr(mod, "POOL_CONFIGS" if path == "fused" else "CONV_CONFIGS", None)
    block_n = getattr(mod, "block_n", None)
    if not isinstance(table, dict) or block_n is None or block_n(c_out) not in table:
        return None
    return dict(table[block_n(c_out)])


@contextlib.contextmanager
def _override(path: str, c_out: int, change: dict):
    mod = _stem_launcher()
    table = getattr(mod, "POOL_CONFIGS" if path == "fused" else "CONV_CONFIGS")
    key = mod.block_n(c_out)
    saved = table[key]
    table[key] = dict(saved, **change)
    try:
        yield table[key]
    finally:
        table[key] = saved


def _sweep_changes(path: str, c_out: int, dry_run: bool):
    """(impl name, change) for the sweep entries that apply to this launcher and differ from its default."""
    default = stem_config(path, c_out)
    if default is None:
        return []
    out = []
    for change in SWEEP[path]:
        if not set(change) <= set(default) or all(default[k] == v for k, v in change.items()):
            continue
        out.append((f"triton_pool_{path}[{','.join(f'{k}={v}' for k, v in change.items())}]", change))
    return out[:1] if dry_run else out


def _stem_data(ctx, s, name, cache):
    if name in cache:
        return cache[name]
    cache.clear()  # one stem's tensors at a time (the Fast stem's input is 308 MB at batch 32 bf16)
    if s["cuda"]:
        torch.cuda.empty_cache()
    cfg = STEMS[name]
    dev, dt = ctx.device, s["dtype"]
    conv, bn = _conv_bn(3, cfg["c_out"], cfg["kernel"], STEM_STRIDE, cfg["padding"], dev)
    pool = torch.nn.MaxPool3d(*STEM_POOL)
    g = torch.Generator(device="cpu").manual_seed(1)
    t = min(cfg["t"], 2) if ctx.dry_run else cfg["t"]  # the interpreter runs two frames in about a second
    x = torch.randn(s["batch"], 3, t, s["stem_size"], s["stem_size"], generator=g).to(dev, dt)
    import slowfast_kernels as sk

    w, b = sk.fold_bn(conv, bn)
    with torch.inference_mode(), _fp32_exact():
        ref = sk.conv3d_bn_act_maxpool_ref(x.float(), w, b, STEM_STRIDE, cfg["padding"]).float()
    data = dict(conv=conv, bn=bn, pool=pool, x=x, xc=x.contiguous(memory_format=CL), w=w, b=b, ref=ref,
                key=stem_key(name, s["batch"], s["stem_size"], t), padding=cfg["padding"])
    cache[name] = data
    return data


def _stem_fn(s, d, impl, fuse_pool=None):
    import slowfast_kernels as sk

    if impl == "eager":
        # A copy: .to() converts modules in place, and the other impls fold the fp32 ones.
        mod = copy.deepcopy(torch.nn.Sequential(d["conv"], d["bn"], torch.nn.ReLU(), d["pool"])).to(d["x"].dtype)
        return lambda: mod(d["x"])
    if impl in ("cudnn", "onednn"):
        wc = d["w"].to(s["dtype"]).contiguous(memory_format=CL)
        if impl == "onednn":
            return lambda: d["pool"](sk.conv3d_bn_act(d["xc"], wc, d["b"], STEM_STRIDE, d["padding"], backend="cpu"))
        return lambda: d["pool"](torch.ops.slowfast_kernels.conv3d_bn_act(
            d["xc"], wc, d["b"], list(STEM_STRIDE), list(d["padding"]), [1, 1, 1], None, "relu"))
    backend = "auto" if impl == "fused" else "triton"
    return lambda: sk.conv3d_bn_act_maxpool(d["xc"], d["w"], d["b"], STEM_STRIDE, d["padding"], fuse_pool=fuse_pool,
                                            backend=backend)


def _stem_case(ctx, s, name, impl, cache, path=None, change=None):
    from ..ops.conv3d_bn_act_maxpool import fuse_pool_rule, resolve_backend

    d = _stem_data(ctx, s, name, cache)
    flops = layer_flops(d["key"])
    extra = {}
    if impl == "fused":
        chosen = resolve_backend("auto", ctx.device, s["dtype"])
        if chosen in ("triton", "cuda"):
            path = "fused" if fuse_pool_rule(tuple(d["w"].shape), s["dtype"], STEM_POOL) else "separate"
            extra.update(variant=f"triton pool {path}", config=stem_config(path, STEMS[name]["c_out"]))
        else:
            extra.update(variant=f"{chosen} conv + max_pool3d")
        path = None
    if path is not None:
        extra.update(config=stem_config(path, STEMS[name]["c_out"]))
    fn = _stem_fn(s, d, impl if path is None else "triton", fuse_pool=None if path is None else path == "fused")
    if change is None:
        _timed(ctx, s, name, impl, fn, d["ref"], flops, **extra)
        return
    with _override(path, STEMS[name]["c_out"], change) as cfg:
        _timed(ctx, s, name, impl, fn, d["ref"], flops, config=dict(cfg), sweep=True)


def stems(ctx) -> None:
    """The stem stage (see the module docstring)."""
    torch.backends.cudnn.benchmark = True
    s = _setting(ctx)
    main = ["eager", s["vendor"], "fused", "triton_pool_fused", "triton_pool_separate"]
    cases = [(name, impl, None, None) for name in STEMS for impl in main]
    sweep = [(name, impl, path, change) for name in STEMS for path in ("separate", "fused")
             for impl, change in _sweep_changes(path, STEMS[name]["c_out"], ctx.dry_run)]
    cases += sweep[:1] if ctx.dry_run else sweep  # the interpreter ignores the configs: one case, for the plumbing
    ctx.plan(f"{name} {impl}" for name, impl, _, _ in cases)
    if stem_config("fused", 8) is None:
        ctx.note(note="the stem launchers expose no config table (CONV_CONFIGS / POOL_CONFIGS keyed by block_n): "
                      "no sweep, the default configs only")
    cache: dict = {}
    for name, impl, path, change in cases:
        if path is None and impl.startswith("triton_pool_"):
            path = impl[len("triton_pool_"):]
        ctx.run_case(f"{name} {impl}", lambda: _stem_case(ctx, s, name, impl, cache, path, change),
                     needs_s=2 if change is None else 4)


# -- every conv layer ----------------------------------------------------------------------------------

def _runner_name(folded) -> str:
    runner = next(iter(folded._runners.values()), None)
    if runner is None:
        return "unknown"
    kind = getattr(runner, "kind", None)
    name = type(runner).__name__
    if kind:
        return f"{name} {kind} ({type(runner.runner).__name__})"
    backend = getattr(runner, "backend", None)
    return f"{name} {backend}" if backend else name


def _layer_case(ctx, s, key, count, impl, cache):
    import slowfast_kernels as sk
    from ..plan import FoldedConv

    shape, c_out, kernel, stride, padding = key
    if cache.get("key") != key:
        cache.clear()
        conv, bn = _conv_bn(shape[1], c_out, kernel, stride, padding, ctx.device)
        g = torch.Generator(device="cpu").manual_seed(2)
        x = torch.randn(shape, generator=g).to(ctx.device, s["dtype"])
        w, b = sk.fold_bn(conv, bn)
        with torch.inference_mode(), _fp32_exact():
            ref = torch.relu(torch.nn.functional.conv3d(x.float(), w, b, stride, padding))
        cache.update(key=key, conv=conv, bn=bn, x=x, xc=x.contiguous(memory_format=CL), w=w, b=b, ref=ref)
    c = cache
    extra = dict(count=count, layer_flops=layer_flops(key))
    if impl == "eager":
        mod = copy.deepcopy(torch.nn.Sequential(c["conv"], c["bn"], torch.nn.ReLU())).to(s["dtype"])
        fn = lambda: mod(c["x"])  # noqa: E731
    elif impl == "cudnn":
        wc = c["w"].to(s["dtype"]).contiguous(memory_format=CL)
        fn = lambda: torch.ops.slowfast_kernels.conv3d_bn_act(  # noqa: E731
            c["xc"], wc, c["b"], list(stride), list(padding), [1, 1, 1], None, "relu")
    elif impl == "onednn":
        wc = c["w"].to(s["dtype"]).contiguous(memory_format=CL)
        fn = lambda: sk.conv3d_bn_act(c["xc"], wc, c["b"], stride, padding, backend="cpu")  # noqa: E731
    else:
        folded = FoldedConv(c["conv"], c["bn"], "relu", "auto").to(ctx.device)
        with torch.inference_mode():
            folded.run(c["xc"])  # prepares the runner (the plan's one bounded measurement per shape)
        fn = lambda: folded.run(c["xc"])  # noqa: E731
        extra["variant"] = _runner_name(folded)
    _timed(ctx, s, case_name(key), impl, fn, c["ref"], layer_flops(key), **extra)


def layers(ctx) -> None:
    """The layer stage (see the module docstring)."""
    torch.backends.cudnn.benchmark = True
    s = _setting(ctx)
    all_layers = list(model_layers(batch=s["batch"], size=s["size"]).items())
    chosen = all_layers
    if ctx.dry_run:  # the plumbing: a stem, a Fast and a Slow pathway layer
        chosen = [all_layers[i] for i in sorted({0, 2, len(all_layers) - 1})]
    impls = ("eager", s["vendor"], "fused")
    ctx.plan(f"{case_name(k)} {impl}" for k, _ in chosen for impl in impls)
    ctx.note(note=f"{len(all_layers)} distinct conv shapes, {sum(n for _, n in all_layers)} convs a forward; "
                  f"timing {len(chosen)} at batch {s['batch']}, {s['size']}px, {s['dtype']}")
    cache: dict = {}
    for key, count in chosen:
        for impl in impls:
            ctx.run_case(f"{case_name(key)} {impl}", lambda: _layer_case(ctx, s, key, count, impl, cache),
                         needs_s=1)
