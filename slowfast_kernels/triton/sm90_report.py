"""sm_90 compile-and-cost report: every Triton kernel of the project, compiled for an H100/H200 with no GPU,
at the specializations its launchers pick for SlowFast R50 8x8 and 4x16 (batch 1 and 32, 224x224, bf16 and
fp32), with registers, spills, shared memory, SASS opcode counts and a throughput bound ``est_ms``.

    python -m slowfast_kernels.triton.sm90_report --out benchmarks/results/sm90-kernels.json

Each launcher runs for real on CPU tensors with launching replaced by recording (sm90_compile.py), so the
launcher's own config choice is what gets compiled; autotuned kernels compile every config. A second
Triton version is run the same way and merged into the same file (records are keyed by kernel, model,
batch, case, dtype, config and triton version; a run replaces its own version's records):

    pip install --target $TRITON36 triton==3.6.0
    PYTHONPATH=$TRITON36:$PWD:$PWD/python \\
        python -m slowfast_kernels.triton.sm90_report --out benchmarks/results/sm90-kernels.json

or, to run both versions at once (one a core), into two files merged afterwards:

    python -m slowfast_kernels.triton.sm90_report --out /tmp/sm90-a.json &
    PYTHONPATH=$TRITON36:$PWD:$PWD/python python -m slowfast_kernels.triton.sm90_report --out /tmp/sm90-b.json
    wait; python -m slowfast_kernels.triton.sm90_report --out benchmarks/results/sm90-kernels.json \\
        --merge /tmp/sm90-a.json /tmp/sm90-b.json

Kernels and cases:
  fast_stem, slow_stem   the stem launchers (conv alone, then torch's max-pool; +pool: pool fused), at
                         224 the tap-row kernels: _to_tap_rows_kernel (3 -> 4 channel copy) then
                         _conv3d_tap_rows_kernel / _conv3d_tap_rows_maxpool_kernel; ``picked`` marks
                         the one ops.conv3d_bn_act_maxpool.fuse_pool_rule chooses, ``case_est_ms``
                         the case's total (copy + conv)
  lateral_*              lateral_fuse's kernels for each lateral mode at each of the 4 sites, fusion concat
  pack_pathways          crop only and resize + crop of a 64 x 256 x 340 uint8 clip
  conv <layer>           the general implicit GEMM (triton/conv3d_bn_act.py; only backend="triton" runs it)
                         at R50 8x8 batch 32 for 4 representative layers (CONV_LAYERS), every autotune
                         config of the input's dtype; --conv-layers all: every layer, model and batch

est_ms is sm90_cost.throughput_bound on an H200 (constants in sm90_cost.H200 and in the JSON header):
max(issue, load/store unit, tensor core, HBM) from the SASS counts x loop trips x programs. A static bound,
not a measurement; the loop trips per kernel are in KERNEL_LOOPS (edit it with the kernel's loops).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from . import sm90_compile as comp
from . import sm90_cost as cost

CL = torch.channels_last_3d
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
MODELS = ("slowfast_r50_8x8", "slowfast_r50_4x16")
BATCHES = (1, 32)
DEFAULT_DTYPES = ("bf16", "fp32")
FAMILIES = ("stem", "lateral", "lateral_conv", "pack", "conv")
# The general conv at the shape GPU_PROFILE.md measured every layer at; its compiles dominate the run time
# (4-25 s each on 2 cores), so other models and batches only with --conv-layers all.
CONV_AT = (("slowfast_r50_8x8", 32),)
SIZE = 224
RECORD_KEY = ("kernel", "model", "batch", "case", "dtype", "config", "triton")

cdiv = cost.ceil_div

# Source loops of each kernel, outer first: (trips, static) from the bound arguments; static = constexpr
# bound (a static loop of one trip vanishes in compilation). And the tl.dot FLOPs of one program, which
# checks the trip mapping against the MMAs found in the SASS.
KERNEL_LOOPS: Dict[str, Callable[[dict], List[Tuple[int, bool]]]] = {
    "_conv3d_small_cin_kernel": lambda a: [(a["KD"], True), (a["KH"], True)],
    "_conv3d_small_cin_maxpool_kernel": lambda a: [(a["N_PAD"] // a["BLOCK_N"], True), (a["KD"], True),
                                                   (a["KH"], True)],
    "_conv3d_bn_act_kernel": lambda a: [(cdiv(a["K"], a["BLOCK_K"]), False)],
    "_lateral_fuse_kernel": lambda a: [],
    "_lateral_fuse_conv_kernel": lambda a: [(a["K"], True), (cdiv(a["CI"], a["BLOCK_CI"]), False)],
    "_pack_pathways_kernel": lambda a: [],
    # The tap-row stems: one flat loop over the KD * KH tap rows, ROW_STEP an iteration (static_range
    # inside, unrolled); the pool kernel's channel-tile loop around it (one trip for both stems).
    "_to_tap_rows_kernel": lambda a: [],
    "_conv3d_tap_rows_kernel": lambda a: [(cdiv(a["KD"] * a["KH"], a["ROW_STEP"]), True)],
    "_conv3d_tap_rows_maxpool_kernel": lambda a: [(a["N_PAD"] // a["BLOCK_N"], True),
                                                  (cdiv(a["KD"] * a["KH"], a["ROW_STEP"]), True)],
}
DOT_FLOPS: Dict[str, Callable[[dict], int]] = {
    "_conv3d_small_cin_kernel": lambda a: 2 * a["BLOCK_M"] * a["BLOCK_N"] * a["BLOCK_K"] * a["KD"] * a["KH"],
    "_conv3d_small_cin_maxpool_kernel": lambda a: 2 * a["ROWS"] * a["COLS"] * a["N_PAD"] * a["BLOCK_K"]
    * a["KD"] * a["KH"],
    "_conv3d_bn_act_kernel": lambda a: 2 * a["BLOCK_M"] * a["BLOCK_N"] * a["BLOCK_K"] * cdiv(a["K"], a["BLOCK_K"]),
    "_lateral_fuse_conv_kernel": lambda a: 2 * a["BLOCK_P"] * a["BLOCK_O"] * a["BLOCK_CI"] * a["K"]
    * cdiv(a["CI"], a["BLOCK_CI"]),
    # M = ROWS * COLS / GROUP GEMM rows, K_ROW a tap row, every tap row of the rounded-up loop (the rows
    # past KD * KH are masked loads but real dots).
    "_conv3d_tap_rows_kernel": lambda a: 2 * a["ROWS"] * a["COLS"] // a["GROUP"] * a["BLOCK_N"] * a["K_ROW"]
    * cdiv(a["KD"] * a["KH"], a["ROW_STEP"]) * a["ROW_STEP"],
    "_conv3d_tap_rows_maxpool_kernel": lambda a: 2 * a["ROWS"] * a["COLS"] // a["GROUP"] * a["N_PAD"] * a["K_ROW"]
    * cdiv(a["KD"] * a["KH"], a["ROW_STEP"]) * a["ROW_STEP"],
}
# Kernels with a PATH constexpr (conv3d_bn_act_maxpool_tap_rows._tap_rows_tile): PATH 0 holds two K loops
# and runs one of them a program, the unmasked one on interior tiles. Its est_ms is the mix of the PATH 1
# (unmasked) and PATH 2 (masked) compiles weighted by the case's interior_tile_share; regs, stack and
# SASS counts are the PATH 0 cubin's (what runs).
TWO_PATH_KERNELS = ("_conv3d_tap_rows_kernel", "_conv3d_tap_rows_maxpool_kernel")
# The general conv's representative layers (names in the reference model), one per code path the kernel
# specializes on: Slow res2 1x3x3 (KH=KW=3), Slow res2 1x1 with the residual epilogue (IS_1X1), Slow res4
# 3x1x1 (K = 3 x 1024), Fast res2 3x1x1 with 8 channels (K = 24: one partial K block).
CONV_LAYERS = (
    "blocks.1.multipathway_blocks.0.res_blocks.0.branch2.conv_b",
    "blocks.1.multipathway_blocks.0.res_blocks.0.branch2.conv_c",
    "blocks.3.multipathway_blocks.0.res_blocks.1.branch2.conv_a",
    "blocks.1.multipathway_blocks.1.res_blocks.0.branch2.conv_a",
)


# -- the model's shapes ---------------------------------------------------------------------------------

def model_shapes(arch: str, batch: int) -> dict:
    """Conv layers {name: (input shape, conv module)} and lateral sites [fast input shape] of a meta forward."""
    import slowfast_reference as sr
    from slowfast_reference.lateral import FuseFastToSlow

    model = getattr(sr, arch)().to("meta").eval()
    convs, sites, hooks = {}, [], []
    def conv_hook(name):
        def hook(m, inputs, output):
            convs.setdefault(name, (tuple(inputs[0].shape), m))
        return hook

    def site_hook(m, inputs, output):
        sites.append((tuple(inputs[0][1].shape), m))

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv3d):
            hooks.append(m.register_forward_hook(conv_hook(name)))
        if isinstance(m, FuseFastToSlow):
            hooks.append(m.register_forward_hook(site_hook))
    cfg = model.config
    with torch.no_grad():
        model([torch.empty(batch, 3, cfg.num_frames // cfg.alpha, SIZE, SIZE, device="meta"),
               torch.empty(batch, 3, cfg.num_frames, SIZE, SIZE, device="meta")])
    for h in hooks:
        h.remove()
    return {"convs": convs, "sites": sites, "alpha": cfg.alpha, "frames": cfg.num_frames}


def _empty(shape, dtype, fmt=CL) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, memory_format=fmt)


def _out_shape(x_shape, conv) -> tuple:
    from .._shapes import output_shape

    return tuple(output_shape(x_shape, tuple(conv.weight.shape), conv.stride, conv.padding, conv.dilation))


# -- cases: (kernel family, case name, picked by the plan, a call that runs the launcher) ------------------

Case = tuple  # (family, case, picked, call[, interior share of a tap-row launch's bound arguments])


def stem_cases(shapes: dict, dtype: torch.dtype) -> Iterator[Case]:
    """Each stem conv alone (then torch's max-pool) and with the pool fused. At 224 the launchers run the
    tap-row kernels: a 3 -> 4 channel copy (_to_tap_rows_kernel) and the conv; the case's records carry
    the sum of both (case_est_ms). The 5th element gives a tap-row launch's interior tile share."""
    from ..ops.conv3d_bn_act_maxpool import STEM_POOL, fuse_pool_rule, pool_output_shape
    from . import conv3d_bn_act_maxpool as stem
    from .conv3d_bn_act_maxpool_tap_rows import interior_tile_share

    for name, pathway in (("slow_stem", "0"), ("fast_stem", "1")):
        x_shape, conv = shapes["convs"][f"blocks.0.multipathway_blocks.{pathway}.conv"]
        w = torch.zeros(conv.weight.shape)
        b = torch.zeros(conv.weight.shape[0])
        x = _empty(x_shape, dtype)
        conv_shape = _out_shape(x_shape, conv)
        fused = fuse_pool_rule(tuple(w.shape), dtype, STEM_POOL)

        def interior(a, conv=conv):
            pooled = (a["Hp"], a["Wp"]) if "Hp" in a else None
            return interior_tile_share(a["H"], a["W"], (a["Ho"], a["Wo"]), tuple(conv.weight.shape), conv.stride,
                                       conv.padding, a, pooled)

        y = _empty(conv_shape, dtype)
        yield ("stem", name, not fused, lambda x=x, w=w, b=b, conv=conv, y=y: stem.conv3d_small_cin_triton(
            x, w, b, conv.stride, conv.padding, True, y, 0), interior)
        yp = _empty(pool_output_shape(conv_shape, *STEM_POOL), dtype)
        yield ("stem", f"{name}+pool", fused, lambda x=x, w=w, b=b, conv=conv, cs=conv_shape, yp=yp:
               stem.conv3d_small_cin_maxpool_triton(x, w, b, conv.stride, conv.padding, True, cs[3:], yp), interior)


def lateral_cases(shapes: dict, dtype: torch.dtype, modes) -> Iterator[Case]:
    from slowfast_reference.lateral import lateral_channels

    from .lateral_fuse import _lateral_fuse_triton

    alpha = shapes["alpha"]
    for site, (fast_shape, fuse) in enumerate(shapes["sites"]):
        n, c, t, h, w = fast_shape
        fast = _empty(fast_shape, dtype)
        for mode in modes:
            out = _empty((n, lateral_channels(mode, c, alpha), t // alpha, h, w), dtype)
            weight = bias = None
            if mode == "time_strided_conv":
                k = fuse.conv_fast_to_slow.kernel_size[0] if fuse.conv_fast_to_slow is not None else 7
                weight, bias = torch.zeros(out.shape[1], c, k, 1, 1, dtype=dtype), torch.zeros(out.shape[1])
            # As the fused model calls it: no Slow channels in the buffer, the lateral tensor alone.
            yield ("lateral", f"lateral{site}_{mode}", True,
                   lambda fast=fast, out=out, mode=mode, weight=weight, bias=bias: _lateral_fuse_triton(
                       out[:, :0], fast, mode, alpha, weight, bias, "concat", "relu", out))


def pack_cases(shapes: dict, dtype: torch.dtype, batch: int) -> Iterator[Case]:
    from .pack_pathways import _pack_pathways_triton

    t, alpha = shapes["frames"], shapes["alpha"]
    video = torch.empty(batch, 64, 256, 340, 3, dtype=torch.uint8)
    fast_idx = torch.zeros(batch, t, dtype=torch.long)
    slow_idx = torch.zeros(batch, t // alpha, dtype=torch.long)
    fast = _empty((batch, 3, t, SIZE, SIZE), dtype)
    slow = _empty((batch, 3, t // alpha, SIZE, SIZE), dtype)
    mean, std = [0.45] * 3, [0.225] * 3
    for name, resized, box in (("pack_pathways_crop", [256, 340], [16, 58, SIZE, SIZE]),
                               ("pack_pathways_resize", [224, 297], [0, 36, SIZE, SIZE])):
        yield ("pack", name, True, lambda resized=resized, box=box: _pack_pathways_triton(
            video, fast_idx, slow_idx, resized, box, mean, std, slow, fast))


def conv_cases(shapes: dict, dtype: torch.dtype, layers) -> Iterator[Case]:
    from .conv3d_bn_act import _conv3d_bn_act_triton

    for name in (layers or shapes["convs"]):
        if name not in shapes["convs"]:
            continue
        x_shape, conv = shapes["convs"][name]
        if x_shape[1] <= 4:
            continue  # the stems: the small-C_in kernel
        y_shape = _out_shape(x_shape, conv)
        x, y = _empty(x_shape, dtype), _empty(y_shape, dtype)
        w = torch.zeros(conv.weight.shape, dtype=dtype).contiguous(memory_format=CL)
        b = torch.zeros(conv.weight.shape[0])
        residual = _empty(y_shape, dtype) if name.endswith("conv_c") else None
        relu = not name.endswith("branch1_conv")
        yield ("conv", name, False, lambda x=x, w=w, b=b, conv=conv, r=residual, relu=relu, y=y:
               _conv3d_bn_act_triton(x, w, b, conv.stride, conv.padding, conv.dilation, r, relu, y, 0))


# -- compile and cost --------------------------------------------------------------------------------------

def config_name(b: comp.Bound) -> str:
    tiles = {k: v for k, v in b.args.items() if k.startswith(("BLOCK", "ROWS", "COLS", "GROUP"))}
    return " ".join(f"{k}={v}" for k, v in tiles.items()) + f" w{b.options.num_warps} s{b.options.num_stages}"


def _bound(launch: comp.Launch, b: comp.Bound, n_prog: int) -> Tuple[dict, dict, list, str]:
    """(analysis, throughput bound, trips, note) of one compile of a launch."""
    c = comp.compile_sm90(b)
    a = cost.analyze(c.sass, c.res_usage)
    trips, note = cost.map_trips(KERNEL_LOOPS[b.fn.__name__](b.args), a["loop_depth"])
    bound = cost.throughput_bound(a["instrs"], trips, n_prog, b.options.num_warps, comp.tensor_bytes(b.args))
    return a, bound, trips, note


def cost_record(launch: comp.Launch, b: comp.Bound, kwargs: dict,
                interior: Optional[Callable[[dict], float]] = None, mix_paths: bool = True) -> dict:
    """The report's record of one bound launch: resources, SASS counts, throughput bound. mix_paths False:
    a PATH 0 kernel's est_ms from its own cubin, both K loops counted for every program (an upper bound,
    two compiles fewer)."""
    name = b.fn.__name__
    if name not in KERNEL_LOOPS:
        raise KeyError(f"sm90_report: no loop description for kernel {name}: add it to KERNEL_LOOPS")
    c = comp.compile_sm90(b)
    n_prog = comp.programs(launch, b)
    a, bound, trips, note = _bound(launch, b, n_prog)
    extra = {}
    if name in TWO_PATH_KERNELS and b.args.get("PATH") == 0 and not mix_paths:
        note = (note + "; " if note else "") + "est_ms: both K loops counted for every program (--single-path)"
    elif name in TWO_PATH_KERNELS and b.args.get("PATH") == 0:
        if interior is None:
            raise ValueError(f"sm90_report: {name} with PATH=0 needs the case's interior tile share")
        share = interior(b.args)
        parts = []
        for path, weight in ((1, share), (2, 1.0 - share)):
            pb = comp.bind(launch.fn, launch.args, dict(kwargs, PATH=path))
            pa, pbound, ptrips, pnote = _bound(launch, pb, n_prog)
            parts.append((weight, pbound))
            extra[f"path{path}"] = dict(est_ms=round(pbound["est_ms"], 4), bound=pbound["bound"], regs=pa["regs"],
                                        stack_bytes=pa["stack_bytes"], loop_trips=ptrips,
                                        loop_instructions=pa["loop_sass"]["total"], note=pnote)
        bound = cost.mixed_bound(parts)
        extra["interior_share"] = round(share, 4)
        note = (note + "; " if note else "") + \
            f"est_ms: PATH 1 (unmasked) x {share:.3f} + PATH 2 (masked) x {1 - share:.3f} of the programs"
    if name in DOT_FLOPS and a["sass"]["HGMMA"] + a["sass"]["HMMA"]:
        want = DOT_FLOPS[name](b.args) * n_prog
        if abs(bound["mma_flops"] - want) > 0.01 * want:
            note = (note + "; " if note else "") + \
                f"MMA FLOPs in SASS x trips {bound['mma_flops']:.3g} != tl.dot FLOPs {want:.3g}"
    smem = c.shared_bytes + a["static_smem_bytes"]
    warps = b.options.num_warps
    return dict(
        regs=a["regs"], stack_bytes=a["stack_bytes"], local_bytes=a["local_bytes"], smem_bytes=smem,
        warps_per_sm=cost.warps_per_sm(a["regs"], smem, warps), num_warps=warps, programs=n_prog,
        loop_trips=trips, sass=a["sass"], loop_sass=a["loop_sass"],
        est_ms=round(bound["est_ms"], 4), bound=bound["bound"],
        bounds_ms={k: round(v, 4) for k, v in bound.items() if k.endswith("_ms") and k != "est_ms"},
        compile_s=round(c.compile_s, 2), note=note, **extra)


def run_cases(models, batches, dtypes, families, conv_layers, picked_only=False, log=print,
              mix_paths=True) -> List[dict]:
    records = []
    for model in models:
        for batch in batches:
            shapes = model_shapes(model, batch)
            for dname in dtypes:
                dtype = DTYPES[dname]
                cases: List[Case] = []
                if "stem" in families:
                    cases += stem_cases(shapes, dtype)
                modes = (("time_to_channel", "time_strided_sampling") if "lateral" in families else ()) \
                    + (("time_strided_conv",) if "lateral_conv" in families else ())
                cases += lateral_cases(shapes, dtype, modes)
                if "pack" in families:
                    cases += pack_cases(shapes, dtype, batch)
                if "conv" in families and (conv_layers is None or (model, batch) in CONV_AT):
                    cases += conv_cases(shapes, dtype, conv_layers)
                for family, case, picked, call, *more in cases:
                    if picked_only and not picked:
                        continue
                    interior = more[0] if more else None
                    launches = comp.record(call)
                    case_records = []
                    for launch in launches:
                        for kwargs in launch.variants():
                            b = comp.bind(launch.fn, launch.args, kwargs)
                            t0 = time.perf_counter()
                            rec = dict(kernel=b.fn.__name__, family=family, model=model, batch=batch, case=case,
                                       dtype=dname, config=config_name(b), triton=comp.triton.__version__,
                                       picked=picked)
                            rec.update(cost_record(launch, b, kwargs, interior, mix_paths))
                            case_records.append(rec)
                            log(f"{model} b{batch} {dname} {case:40s} {rec['config']:44s} regs {rec['regs']:3d} "
                                f"stack {rec['stack_bytes']:5d} est {rec['est_ms']:8.3f} ms ({rec['bound']}) "
                                f"{time.perf_counter() - t0:5.1f} s")
                    if all(lp.configs is None for lp in launches):
                        # One launch of each kernel (no autotuning): the case costs their sum, e.g. a stem =
                        # its 3 -> 4 channel copy + its conv (+ pool).
                        total = round(sum(r["est_ms"] for r in case_records), 4)
                        for r in case_records:
                            r["case_kernels"] = [x["kernel"] for x in case_records]
                            r["case_est_ms"] = total
                        if len(case_records) > 1:
                            log(f"{model} b{batch} {dname} {case:40s} total of {len(case_records)} kernels "
                                f"est {total:8.3f} ms")
                    records += case_records
    return records


# -- the JSON file -----------------------------------------------------------------------------------------

def _commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def merge(path: str, records: List[dict], run_info: dict, replace_version: bool,
          in_scope: Callable[[dict], bool] = lambda r: False) -> dict:
    """The report at `path` with `records` merged in: records of the same key replaced, and older records of
    this triton version dropped if replace_version (a full run) or in_scope(record) (what a partial run
    covered: its kernel families, models, batches and dtypes)."""
    doc = {"records": []}
    if os.path.exists(path):
        with open(path) as f:
            doc = json.load(f)
    version = run_info["triton"]
    keys = {tuple(r[k] for k in RECORD_KEY) for r in records}
    kept = [r for r in doc.get("records", []) if tuple(r.get(k) for k in RECORD_KEY) not in keys
            and not (r.get("triton") == version and (replace_version or in_scope(r)))]
    runs = dict(doc.get("header", {}).get("runs", {}))
    if replace_version or version not in runs:
        runs[version] = run_info
    else:  # a partial run: the full run's information stays, the update is noted
        runs[version] = dict(runs[version], updated=run_info)
    all_records = sorted(kept + records, key=lambda r: tuple(str(r[k]) for k in RECORD_KEY))
    header = {
        "what": "Triton kernels compiled for sm_90 (GPUTarget('cuda', 90, 32)) without a GPU; cuobjdump "
                "-res-usage / -sass of each cubin; est_ms = max(issue, lsu, tensor, hbm) bound on an H200",
        "command": "python -m slowfast_kernels.triton.sm90_report --out benchmarks/results/sm90-kernels.json",
        "triton_versions": sorted({r["triton"] for r in all_records}),
        "runs": runs,
        "constants": {k: v for k, v in cost.H200.items()},
        "model": "issue = warp-instructions / (sms*issue_per_clock*clock); lsu = sum max(1, 32*width/128 B) "
                 "cycles / (sms*lsu_per_clock*clock); tensor = MMA FLOPs issued / tensor_flops[input type] "
                 "(TF32 assumed half of bf16; fp32 ieee dots run as FFMA: issue bound); hbm = distinct tensor "
                 "arguments' bytes once / hbm_bytes_per_s. Instructions x loop_trips (outer first) x programs "
                 "x warps. A static bound: latency, stalls and untaken branches are ignored.",
        "fields": "regs/stack_bytes/local_bytes: cuobjdump -res-usage; smem_bytes: Triton's dynamic shared + "
                  "static; sass: whole-kernel opcode counts, loop_sass: the innermost loop's; picked: what "
                  "the plan's launchers choose (conv: never auto-picked); compile_s: cold compile, near 0 "
                  "when Triton's cache had it; interior_share/path1/path2: a tap-row kernel's two K loops "
                  "(PATH 0), est_ms mixed from the unmasked (1) and masked (2) compiles by the share of "
                  "interior programs; case_kernels/case_est_ms: every kernel the case's launcher runs and "
                  "the sum of their est_ms (a stem: 3 -> 4 channel copy + conv (+ pool))",
    }
    return {"header": header, "records": all_records}


_LATERAL_KERNELS = {"lateral": "_lateral_fuse_kernel", "lateral_conv": "_lateral_fuse_conv_kernel"}


def _scope_test(scope: Optional[dict]) -> Callable[[dict], bool]:
    """Whether a record lies in what a partial run covered (its kernel families, models, batches, dtypes;
    complete: every kernel of them, not --picked-only): older records there are dropped on merging."""
    if not scope or not scope.get("complete"):
        return lambda r: False

    def in_scope(r):
        family = r.get("family")
        if family == "lateral":
            family = next((f for f, k in _LATERAL_KERNELS.items() if k == r["kernel"]), family)
        return (family in scope["families"] and r.get("model") in scope["models"]
                and r.get("batch") in scope["batches"] and r.get("dtype") in scope["dtypes"])
    return in_scope


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slowfast_kernels.triton.sm90_report", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write (merged with an existing one)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--dtypes", default=",".join(DEFAULT_DTYPES), help=f"of {', '.join(DTYPES)}")
    p.add_argument("--kernels", default=",".join(FAMILIES), help=f"families, of {', '.join(FAMILIES)}")
    p.add_argument("--picked-only", action="store_true", help="only the kernels the plan's launchers pick")
    p.add_argument("--conv-layers", default="subset",
                   help="subset (CONV_LAYERS, at CONV_AT), all (every layer, model and batch) or layer names")
    p.add_argument("--single-path", action="store_true",
                   help="tap-row kernels: no PATH 1/2 compiles (est_ms an upper bound; for quick checks)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge these reports' records into --out, compile nothing")
    args = p.parse_args(argv)
    if args.merge:
        for other in args.merge:
            with open(other) as f:
                doc = json.load(f)
            for version, info in doc["header"]["runs"].items():
                mine = [r for r in doc["records"] if r["triton"] == version]
                merged = merge(args.out, mine, info, replace_version=not info.get("partial", False),
                               in_scope=_scope_test(info.get("scope")))
                with open(args.out, "w") as f:
                    json.dump(merged, f, indent=1)
                    f.write("\n")
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        p.error("TRITON_INTERPRET=1 makes @triton.jit kernels interpreted functions: unset it to compile for sm_90")
    why = comp.missing_tools()
    if why:
        p.error(why)
    layers = {"subset": CONV_LAYERS, "all": None}.get(args.conv_layers, tuple(args.conv_layers.split(",")))
    families = set(args.kernels.split(","))
    for what, given, known in (("--kernels", families, FAMILIES), ("--dtypes", args.dtypes.split(","), DTYPES),
                               ("--models", args.models.split(","), MODELS)):
        if not set(given) <= set(known):
            p.error(f"{what}: expected some of {', '.join(known)}, got {', '.join(sorted(set(given) - set(known)))}")
    full = (set(args.models.split(",")) == set(MODELS) and args.batches == ",".join(map(str, BATCHES))
            and set(args.dtypes.split(",")) == set(DEFAULT_DTYPES) and families == set(FAMILIES)
            and not args.picked_only and args.conv_layers == "subset" and not args.single_path)
    t0 = time.perf_counter()
    records = run_cases(args.models.split(","), [int(b) for b in args.batches.split(",")],
                        args.dtypes.split(","), families, layers, args.picked_only, mix_paths=not args.single_path)
    info = {"triton": comp.triton.__version__, "torch": torch.__version__, "commit": _commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.machine(), "seconds": round(time.perf_counter() - t0, 1),
            "conv_layers": args.conv_layers, "partial": not full}
    info["scope"] = dict(families=sorted(families), models=args.models.split(","),
                         batches=[int(b) for b in args.batches.split(",")], dtypes=args.dtypes.split(","),
                         complete=not args.picked_only and args.conv_layers == "subset" and not args.single_path)
    doc = merge(args.out, records, info, replace_version=full, in_scope=_scope_test(info["scope"]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"{len(records)} records (triton {info['triton']}, {info['seconds']} s) -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
