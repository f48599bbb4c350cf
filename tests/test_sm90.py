"""The Triton kernels compiled for sm_90 (no GPU needed): they compile, do not spill, and use the tensor cores;
and the static cost model behind the report's est_ms, checked on SASS computed by hand.

The compile checks run the report (slowfast_kernels.triton.sm90_report) in a subprocess: this test process
runs Triton in interpreter mode (conftest sets TRITON_INTERPRET=1), where @triton.jit makes no JITFunction.
"""
import json
import os
import subprocess
import sys

import pytest

from slowfast_kernels.triton import sm90_cost as cost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "benchmarks", "results", "sm90-kernels.json")

# The kernels the plan's launchers pick on CUDA for R50 at 224 (the general conv runs only when asked for by
# name; the stems run the tap-row path with the pool fused: the 3 -> 4 channel copy, then the fused kernel).
PLAN_KERNELS = {"_to_tap_rows_kernel", "_conv3d_tap_rows_maxpool_kernel", "_lateral_fuse_kernel",
                "_lateral_fuse_conv_kernel", "_pack_pathways_kernel"}
DOT_KERNELS = {"_conv3d_small_cin_kernel", "_conv3d_small_cin_maxpool_kernel", "_conv3d_tap_rows_kernel",
               "_conv3d_tap_rows_maxpool_kernel", "_lateral_fuse_conv_kernel", "_conv3d_bn_act_kernel"}
# The issue's budgets for the stems at batch 32, 224, bf16, pool included (the case's copy + fused conv).
STEM_BUDGET_MS = {"fast_stem+pool": 1.0, "slow_stem+pool": 0.35}

# -- the cost model on hand-written SASS ---------------------------------------------------------------

# cuobjdump -sass format, encodings included. An outer loop 0x20..0x70 around an inner one 0x40..0x60, and
# the EXIT; BRA-to-itself trap that ends every kernel (no loop).
SASS = """
	code for sm_90a
		Function : _k
        /*0000*/                   S2R R0, SR_TID.X ;                      /* 0x0000000000007919 */
                                                                           /* 0x000e220000002100 */
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;        /* 0x0000000402047981 */
        /*0020*/               @P0 LDG.E.U16 R8, desc[UR4][R2.64] ;        /* 0x0000000402080981 */
        /*0030*/                   STS.U16 [R1], R8 ;                      /* 0x0000000801007388 */
        /*0040*/                   HGMMA.64x16x16.F32.BF16 R24, gdesc[UR8].tnspB, R24 ;  /* 0x40200000082079f0 */
        /*0050*/                   IADD3 R3, R3, 0x1, RZ ;                 /* 0x0000000103037810 */
        /*0060*/               @P1 BRA 0x40 ;                              /* 0xfffffffc00d41947 */
        /*0070*/              @!P2 BRA 0x20 ;                              /* 0xfffffff800a8a947 */
        /*0080*/                   STG.E.64 desc[UR4][R2.64], R4 ;         /* 0x0000000402007986 */
        /*0090*/                   EXIT ;                                  /* 0x000000000000794d */
        /*00a0*/                   BRA 0xa0 ;                              /* 0xfffffffc00fc7947 */
"""
RES = """
Resource usage:
 Common:
  GLOBAL:0
 Function _k:
  REG:208 STACK:16 SHARED:1024 LOCAL:0 CONSTANT[0]:664 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_sass_counts_and_loops():
    a = cost.analyze(SASS, RES)
    assert (a["regs"], a["stack_bytes"], a["static_smem_bytes"], a["local_bytes"]) == (208, 16, 1024, 0)
    assert a["loop_depth"] == 2
    assert [i.depth for i in a["instrs"]] == [0, 0, 1, 1, 2, 2, 2, 1, 0, 0, 0]
    s = a["sass"]
    assert (s["total"], s["HGMMA"], s["LDG.128"], s["LDG.16"], s["LDG"], s["STS"], s["STG"], s["lsu"]) == \
        (11, 1, 1, 1, 2, 1, 1, 4)
    # LSU cycles: LDG.128 4 (512 B over 128 B a clock), LDG.U16 1, STS.U16 1, STG.64 2.
    assert s["lsu_cycles"] == 8
    assert (a["loop_sass"]["total"], a["loop_sass"]["HGMMA"], a["loop_sass"]["lsu"]) == (3, 1, 0)


def test_throughput_bound_by_hand():
    a = cost.analyze(SASS, RES)
    trips, programs, warps, hbm = [3, 5], 1320, 4, 10**6
    b = cost.throughput_bound(a["instrs"], trips, programs, warps, hbm)
    # Per warp: 5 instructions once, 3 (outer loop only) x 3, 3 (inner loop) x 3 x 5 = 59.
    w = programs * warps
    issue = 59 * w / (132 * 4 * 1.755e9) * 1e3
    # LSU cycles per warp: LDG.128 4 x 1 + LDG.U16 1 x 3 + STS 1 x 3 + STG.64 2 x 1 = 12.
    lsu = 12 * w / (132 * 1 * 1.755e9) * 1e3
    # HGMMA 64x16x16: 2*64*16*16 FLOPs a warpgroup, a quarter per warp, 15 times.
    tensor = (2 * 64 * 16 * 16 / 4) * 15 * w / 790e12 * 1e3
    hbm_ms = hbm / 4.2e12 * 1e3
    assert b["warp_instructions"] == 59 * w
    assert b["issue_ms"] == pytest.approx(issue, rel=1e-12)
    assert b["lsu_ms"] == pytest.approx(lsu, rel=1e-12)
    assert b["tensor_ms"] == pytest.approx(tensor, rel=1e-12)
    assert b["hbm_ms"] == pytest.approx(hbm_ms, rel=1e-12)
    assert b["est_ms"] == pytest.approx(max(issue, lsu, tensor, hbm_ms), rel=1e-12)
    assert b["bound"] == "tensor"


def test_hmma_and_widths():
    ins = cost.parse_sass("        /*0000*/  HMMA.16816.F32.BF16 R4, R8, R12, R4 ;\n"
                          "        /*0010*/  LDSM.16.M88.4 R0, [R2] ;\n"
                          "        /*0020*/  LDGSTS.E.BYPASS.LTC128B.128 [R1], desc[UR4][R2.64] ;\n"
                          "        /*0030*/  HMMA.1684.F32.TF32 R4, R8, R12, R4 ;\n")
    assert cost.mma_flops(ins[0]) == (2 * 16 * 8 * 16, "bf16")
    assert cost.mma_flops(ins[3]) == (2 * 16 * 8 * 4, "tf32")
    fp16 = cost.parse_sass("        /*0000*/  HGMMA.64x64x16.F32 R24, gdesc[UR8].tnspB, R24 ;\n")[0]
    assert cost.mma_flops(fp16) == (2 * 64 * 64 * 16 // 4, "fp16")
    assert [cost.lsu_cycles(i) for i in ins[1:3]] == [4, 4]
    assert cost.opcode_counts(ins)["HMMA"] == 2


def test_mixed_bound_by_hand():
    # A quarter of the programs on a path of 8 ms issue / 2 ms lsu, the rest on 4 / 6: issue 5, lsu 5.
    def bound(issue, lsu):
        return dict(issue_ms=issue, lsu_ms=lsu, tensor_ms=1.0, hbm_ms=0.5, warp_instructions=issue,
                    lsu_cycles=lsu, mma_flops=10)

    m = cost.mixed_bound([(0.25, bound(8.0, 2.0)), (0.75, bound(4.0, 6.0))])
    assert (m["issue_ms"], m["lsu_ms"], m["tensor_ms"], m["hbm_ms"], m["mma_flops"]) == (5.0, 5.0, 1.0, 0.5, 10)
    assert m["est_ms"] == 5.0 and m["bound"] in ("issue", "lsu")
    with pytest.raises(ValueError, match="sum to 1"):
        cost.mixed_bound([(0.5, bound(1, 1))])


def test_occupancy_by_hand():
    # 208 regs: 6656 a warp -> 9 warps of registers -> 2 blocks of 4 warps.
    assert cost.warps_per_sm(208, 12288, 4) == 8
    # 120 regs: 3840 a warp -> 17 warps -> 2 blocks of 8.
    assert cost.warps_per_sm(120, 35840, 8) == 16
    # Shared memory bound: 233472 // (100000 + 1024) = 2 blocks.
    assert cost.warps_per_sm(32, 100000, 4) == 8


def test_trip_mapping():
    # A static loop of one trip vanishes; a runtime loop of one trip stays a loop.
    assert cost.map_trips([(1, True), (7, True)], 1) == ([7], "")
    assert cost.map_trips([(7, True), (1, False)], 2) == ([7, 1], "")
    # Fewer SASS levels than loops: the static loop was unrolled.
    trips, note = cost.map_trips([(7, True), (4, False)], 1)
    assert trips == [4] and "unrolled" in note


def test_merge_keeps_other_versions(tmp_path):
    from slowfast_kernels.triton.sm90_report import _scope_test, merge

    def rec(version, case, regs):
        return dict(kernel="k", model="m", batch=1, case=case, dtype="bf16", config="c", triton=version, regs=regs)

    path = str(tmp_path / "r.json")
    first = merge(path, [rec("3.6.0", "a", 1), rec("3.6.0", "b", 2)], {"triton": "3.6.0"}, True)
    with open(path, "w") as f:
        json.dump(first, f)
    doc = merge(path, [rec("3.9.0", "a", 3)], {"triton": "3.9.0"}, True)
    assert sorted((r["triton"], r["case"]) for r in doc["records"]) == [("3.6.0", "a"), ("3.6.0", "b"), ("3.9.0", "a")]
    assert doc["header"]["triton_versions"] == ["3.6.0", "3.9.0"]
    # A full run of a version replaces all of its records; a partial one only the keys it has.
    assert [r["case"] for r in merge(path, [rec("3.6.0", "a", 5)], {"triton": "3.6.0"}, True)["records"]] == ["a"]
    partial = merge(path, [rec("3.6.0", "a", 5)], {"triton": "3.6.0"}, False)["records"]
    assert sorted((r["case"], r["regs"]) for r in partial) == [("a", 5), ("b", 2)]
    # A partial run with a complete scope drops its scope's older records (here: every "m" record).
    scope = dict(families=["f"], models=["m"], batches=[1], dtypes=["bf16"], complete=True)
    old = merge(path, [dict(rec("3.6.0", "b", 2), family="f")], {"triton": "3.6.0"}, True)
    with open(path, "w") as f:
        json.dump(old, f)
    new = dict(rec("3.6.0", "c", 7), family="f")
    kept = merge(path, [new], {"triton": "3.6.0"}, False, _scope_test(scope))["records"]
    assert [(r["case"], r["regs"]) for r in kept] == [("c", 7)]


def test_conv_autotune_tables_by_dtype():
    import torch

    from slowfast_kernels.triton import conv3d_bn_act as conv

    configs = conv._gpu_configs()
    for dtype, table in ((torch.float32, conv.TILES_FP32), (torch.bfloat16, conv.TILES_16BIT),
                         (torch.float16, conv.TILES_16BIT)):
        kept = conv._configs_for_dtype(configs, {"x_ptr": torch.empty(1, dtype=dtype), "C_in": 64})
        assert sorted(conv._tile(c) for c in kept) == sorted(table)
        kept = conv._configs_for_dtype(configs, {"x_ptr": torch.empty(1, dtype=dtype), "C_in": 8})
        assert sorted(conv._tile(c) for c in kept) == sorted(conv.TILES_SMALL_CIN)
    # The fp32 FFMA dot holds accumulators and operands in registers: at most 64 accumulators a thread.
    assert all(bm * bn // (32 * warps) <= 64 for bm, bn, _, warps, _ in conv.TILES_FP32)


# -- the project's kernels compiled for sm_90 ------------------------------------------------------------

def _tools_reason():
    import triton

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for tool in ("ptxas", "cuobjdump"):
        if not os.access(os.path.join(bin_dir, tool), os.X_OK):
            return f"{tool} is missing from the triton {triton.__version__} wheel ({bin_dir})"
    return None


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The report's records for the kernels the plan picks at R50 8x8, batch 32, 224: bf16 and fp32, and fp16
    for the tl.dot kernels (the stems and the lateral conv)."""
    why = _tools_reason()
    if why:
        pytest.skip(why)
    out = str(tmp_path_factory.mktemp("sm90") / "sm90.json")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "python"), env.get("PYTHONPATH", "")])
    # Two processes (one a core), each writing its own file.
    runs = []
    for i, (dtypes, kernels) in enumerate((("bf16,fp32", "stem,lateral,lateral_conv,pack"),
                                           ("fp16", "stem,lateral_conv"))):
        path = f"{out}.{i}"
        cmd = [sys.executable, "-W", "ignore", "-m", "slowfast_kernels.triton.sm90_report", "--out", path,
               "--models", "slowfast_r50_8x8", "--batches", "32", "--picked-only", "--dtypes", dtypes,
               "--kernels", kernels, "--single-path"]
        runs.append((path, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True)))
    records = []
    for path, proc in runs:
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, log[-3000:]
        with open(path) as f:
            records += json.load(f)["records"]
    return records


def test_every_plan_kernel_compiles(compiled):
    assert {r["kernel"] for r in compiled} == PLAN_KERNELS
    assert {r["dtype"] for r in compiled} == {"bf16", "fp16", "fp32"}
    for r in compiled:
        assert r["regs"] > 0 and r["sass"]["total"] > 0 and r["est_ms"] > 0, r
        assert "MMA FLOPs" not in r["note"], r  # the loop trips explain the MMAs found in the SASS


def _spills(records):
    return [(r["triton"], r["case"], r["dtype"], r["config"], r["stack_bytes"], r["sass"]["LDL"], r["sass"]["STL"])
            for r in records if r["stack_bytes"] or r["local_bytes"] or r["sass"]["LDL"] or r["sass"]["STL"]]


def _unlaunchable(records):
    """Kernels whose shared memory exceeds what a block can have on an H200 (0 resident warps)."""
    return [(r["triton"], r["case"], r["dtype"], r["config"], r["smem_bytes"]) for r in records
            if r["warps_per_sm"] == 0]


def test_no_spills_in_what_the_plan_picks(compiled):
    picked = [r for r in compiled if r["picked"]]
    assert {r["case"] for r in picked} >= {"fast_stem+pool", "slow_stem+pool", "pack_pathways_crop"}
    assert not _spills(picked)
    assert not _unlaunchable(picked)


def test_low_precision_dots_use_tensor_cores(compiled):
    dots = [r for r in compiled if r["kernel"] in DOT_KERNELS and r["dtype"] in ("bf16", "fp16")]
    assert len(dots) >= 8
    assert not [(r["case"], r["dtype"]) for r in dots if r["sass"]["HGMMA"] + r["sass"]["HMMA"] == 0]
    # In the K loop where one is left in the SASS (the Slow stem's 7 tap rows are unrolled: no loop).
    assert not [(r["case"], r["dtype"]) for r in dots
                if r["loop_trips"] and r["loop_sass"]["HGMMA"] + r["loop_sass"]["HMMA"] == 0]


def _committed():
    with open(REPORT) as f:
        return json.load(f)


def test_committed_report_has_no_spills_in_picked_kernels():
    """The committed report (every triton version it holds, both models and batches)."""
    doc = _committed()
    assert len(doc["header"]["triton_versions"]) >= 2
    picked = [r for r in doc["records"] if r["picked"]]
    for version in doc["header"]["triton_versions"]:
        assert {r["kernel"] for r in picked if r["triton"] == version} == PLAN_KERNELS, version
    assert not _spills(picked)
    assert not _unlaunchable(picked)
    # The stem kernels the plan does not pick at 224 (the conv alone) launch and do not spill either.
    stems = [r for r in doc["records"] if r["family"] == "stem"]
    assert not _spills(stems) and not _unlaunchable(stems)


def test_committed_report_meets_the_stem_budgets():
    """R50 8x8, batch 32, bf16, on every triton version in the report: the stem's total (the 3 -> 4 channel
    copy + the conv with the pool fused, the kernels the plan picks) within the budget, and the total is
    the sum of the case's records."""
    doc = _committed()
    for version in doc["header"]["triton_versions"]:
        for case, budget in STEM_BUDGET_MS.items():
            recs = [r for r in doc["records"] if r["triton"] == version and r["case"] == case
                    and r["model"] == "slowfast_r50_8x8" and r["batch"] == 32 and r["dtype"] == "bf16"]
            assert recs and all(r["picked"] for r in recs), (version, case)
            assert sorted(r["kernel"] for r in recs) == sorted(recs[0]["case_kernels"]) == \
                ["_conv3d_tap_rows_maxpool_kernel", "_to_tap_rows_kernel"], (version, case)
            total = recs[0]["case_est_ms"]
            assert total == pytest.approx(sum(r["est_ms"] for r in recs), abs=1e-3), (version, case)
            assert total <= budget, (version, case, total, [(r["kernel"], r["est_ms"], r["bound"]) for r in recs])
