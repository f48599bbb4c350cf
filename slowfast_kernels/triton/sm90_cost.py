"""Static cost of an sm_90 kernel from its SASS: opcode counts, loops, occupancy and a throughput bound.

Input is the text of ``cuobjdump -sass`` and ``cuobjdump -res-usage`` of one cubin (see sm90_compile.py).
Nothing here needs a GPU or Triton; the test suite checks it on hand-written SASS.

The throughput bound of one launch, ``est_ms = max(issue, lsu, tensor, hbm)`` on an H200 (``H200``):

    issue   warp-instructions executed / (SMS * ISSUE_PER_CLOCK * CLOCK_HZ)
    lsu     load/store-unit cycles / (SMS * LSU_PER_CLOCK * CLOCK_HZ); an instruction occupies the unit
            max(1, 32 lanes * width / 128 B) cycles (the SM's L1/shared data path moves 128 B a clock), so
            a scalar LDG.U16 costs 1 cycle and an LDGSTS.128 or LDS.128 costs 4
    tensor  MMA FLOPs issued (shape read off each HGMMA/HMMA, padding included) / peak of its input type
            (bf16/fp16 790 TFLOP/s dense, the measured GEMM ceiling; TF32 assumed half of that, 395; fp32
            with input_precision="ieee" runs as FFMA and is counted by the issue bound)
    hbm     bytes of every tensor argument moved once / HBM_BYTES_PER_S (a floor: re-reads are not counted)

Instructions executed = sum over instructions of (programs * warps a program * multiplicity), where an
instruction inside k nested SASS loops has multiplicity trips[0] * ... * trips[k-1] (trips given per
kernel, outer loop first). A bound from static counts, not a measurement: it ignores latency (occupancy
is reported beside it, not folded in), stalls on dependences, and branches not taken.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

# H200 SXM figures (GPU_PROFILE.md: 753-787 TFLOP/s bf16 GEMM, 4.1-4.2 TB/s device copy).
H200 = {
    "sms": 132,
    "clock_hz": 1.755e9,
    "issue_per_clock": 4,          # warp-instructions a clock per SM (4 schedulers)
    "lsu_per_clock": 1,            # load/store-unit warp-instructions a clock per SM
    "lsu_bytes_per_clock": 128,    # L1 / shared-memory data path per SM
    "tensor_flops": {"bf16": 790e12, "fp16": 790e12, "tf32": 395e12, "fp8": 1580e12, "int8": 1580e12},
    "hbm_bytes_per_s": 4.2e12,
    "max_warps_per_sm": 64,
    "max_blocks_per_sm": 32,
    "regs_per_sm": 65536,
    "smem_per_sm": 233472,         # 228 KiB
    "smem_reserved_per_block": 1024,
}

LSU_OPS = ("LDG", "STG", "LDS", "STS", "LDSM", "STSM", "LDGSTS", "LDL", "STL", "LD", "ST", "ATOM", "ATOMS",
           "ATOMG", "RED")
WIDTHS = (8, 16, 32, 64, 128)
_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);")


@dataclass
class Instr:
    addr: int
    opcode: str        # with modifiers, e.g. "LDG.E.U16"
    operands: str
    depth: int = 0     # SASS loops around it

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


@dataclass
class Loop:
    start: int         # address of the branch target (first instruction of the body)
    end: int           # address of the backward branch
    depth: int = 1     # 1 = outermost
    children: List["Loop"] = field(default_factory=list)


def parse_sass(text: str) -> List[Instr]:
    """Instructions of the first function in ``cuobjdump -sass`` text, in address order."""
    out = []
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m:
            out.append(Instr(int(m.group(1), 16), m.group(3), m.group(4).strip()))
    return out


def find_loops(instrs: List[Instr]) -> List[Loop]:
    """Loops as backward branches (``BRA 0x...`` to an address at or before the branch, not to itself: the
    ``EXIT; BRA self`` trap after the last instruction is no loop); sets each instruction's depth."""
    loops = []
    for ins in instrs:
        if ins.base in ("BRA", "JMP"):
            m = re.search(r"0x([0-9a-f]+)", ins.operands)
            if m and int(m.group(1), 16) < ins.addr:
                loops.append(Loop(int(m.group(1), 16), ins.addr))
    for lp in loops:
        lp.depth = 1 + sum(1 for o in loops if o is not lp and o.start <= lp.start and lp.end <= o.end)
    for ins in instrs:
        ins.depth = sum(1 for lp in loops if lp.start <= ins.addr <= lp.end)
    return loops


def innermost_loop(loops: List[Loop], instrs: List[Instr]) -> Optional[Loop]:
    """The deepest loop; among equally deep ones the one with the most instructions."""
    if not loops:
        return None
    size = {id(lp): sum(1 for i in instrs if lp.start <= i.addr <= lp.end) for lp in loops}
    return max(loops, key=lambda lp: (lp.depth, size[id(lp)]))


def width_bits(ins: Instr) -> int:
    """Bits a lane moves: .U8/.S8 8, .U16/.S16 16, .64 64, .128 128, else 32 ."""
    mods = ins.opcode.split(".")[1:]
    if ins.base in ("LDSM", "STSM"):  # LDSM.16.M88.4: four 8x8 matrices, 4 x 32 bits a lane
        return {"2": 64, "4": 128}.get(mods[-1] if mods else "", 32)
    for m in mods:
        if m in ("U8", "S8"):
            return 8
        if m in ("U16", "S16"):
            return 16
        if m in ("64", "128"):
            return int(m)
    return 32


def lsu_cycles(ins: Instr, lsu_bytes_per_clock: int = H200["lsu_bytes_per_clock"]) -> int:
    return max(1, 32 * width_bits(ins) // 8 // lsu_bytes_per_clock)


def mma_flops(ins: Instr) -> tuple:
    """(FLOPs a warp's execution of this instruction contributes, input type) for HGMMA / HMMA, else (0, None).

    HGMMA.64xNxK is one warpgroup (4 warps) instruction of 2*64*N*K FLOPs, issued by each of its warps;
    HMMA.16816 is a warp's m16 n8 k16 (HMMA.1688: k8, HMMA.1684: k4)."""
    mods = ins.opcode.split(".")[1:]
    if ins.base not in ("HGMMA", "HMMA"):
        return 0, None
    kind = _input_type(mods)
    if ins.base == "HGMMA":
        m, n, k = (int(v) for v in mods[0].split("x"))
        return 2 * m * n * k // 4, kind
    if ins.base == "HMMA":
        shape = mods[0]
        if shape.startswith("168"):
            return 2 * 16 * 8 * int(shape[3:]), kind
        if shape.startswith("884"):
            return 2 * 8 * 8 * 4, kind
    return 0, None


def _input_type(mods: Sequence[str]) -> str:
    """The MMA's operand type; none named (HGMMA.64x64x16.F32, HMMA.16816.F32) is fp16."""
    for m in reversed(mods):
        if m in ("BF16", "F16", "TF32", "E4M3", "E5M2", "S8", "U8"):
            return {"BF16": "bf16", "F16": "fp16", "TF32": "tf32", "E4M3": "fp8", "E5M2": "fp8"}.get(m, "int8")
    return "fp16"


def opcode_counts(instrs: Sequence[Instr]) -> Dict[str, int]:
    """The counts the report keeps: tensor-core MMAs, copies, loads/stores by kind and width, spills, total."""
    c = {"total": len(instrs), "HGMMA": 0, "HMMA": 0, "LDGSTS": 0, "UTMALDG": 0, "LDSM": 0, "STS": 0, "LDS": 0,
         "STG": 0, "LDL": 0, "STL": 0, "FFMA": 0, "lsu": 0, "lsu_cycles": 0}
    c.update({f"LDG.{w}": 0 for w in WIDTHS})
    for ins in instrs:
        b = ins.base
        if b == "LDG":
            c[f"LDG.{width_bits(ins)}"] += 1
        elif b in c:
            c[b] += 1
        if b in LSU_OPS:
            c["lsu"] += 1
            c["lsu_cycles"] += lsu_cycles(ins)
    c["LDG"] = sum(c[f"LDG.{w}"] for w in WIDTHS)
    return c


def parse_res_usage(text: str) -> Dict[str, int]:
    """REG, STACK, SHARED, LOCAL of the first function in ``cuobjdump -res-usage`` text."""
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", text)
    if m is None:
        raise ValueError(f"no resource line in cuobjdump -res-usage output: {text[:200]!r}")
    return dict(zip(("regs", "stack_bytes", "static_smem_bytes", "local_bytes"), map(int, m.groups())))


def warps_per_sm(regs: int, smem_bytes: int, num_warps: int, gpu: dict = H200) -> int:
    """Resident warps per SM: blocks limited by warps, by registers (allocated per warp in units of 256) and by
    shared memory (each block also reserves 1 KiB), times warps a block."""
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_warps = gpu["max_warps_per_sm"] // num_warps
    by_regs = (gpu["regs_per_sm"] // regs_per_warp) // num_warps
    by_smem = gpu["smem_per_sm"] // (smem_bytes + gpu["smem_reserved_per_block"])
    return min(by_warps, by_regs, by_smem, gpu["max_blocks_per_sm"]) * num_warps


def multiplicities(instrs: Sequence[Instr], trips: Sequence[int]) -> List[int]:
    """How often each instruction runs in one program: the product of the trips of the loops around it."""
    out = []
    for ins in instrs:
        k = 1
        for t in trips[: ins.depth]:
            k *= t
        out.append(k)
    return out


def throughput_bound(instrs: Sequence[Instr], trips: Sequence[int], programs: int, num_warps: int,
                     hbm_bytes: int, gpu: dict = H200) -> Dict[str, float]:
    """The four bounds (ms) of a launch of `programs` programs of `num_warps` warps, `est_ms` their maximum and
    `bound` its name; also the executed totals they come from."""
    mult = multiplicities(instrs, trips)
    warps = programs * num_warps
    issued = sum(mult) * warps
    lsu = sum(m * lsu_cycles(i) for i, m in zip(instrs, mult) if i.base in LSU_OPS) * warps
    tensor_s = 0.0
    flops = 0
    for ins, m in zip(instrs, mult):
        f, kind = mma_flops(ins)
        if f:
            flops += f * m * warps
            tensor_s += f * m * warps / gpu["tensor_flops"][kind]
    per_s = gpu["sms"] * gpu["clock_hz"]
    bounds = {
        "issue_ms": 1e3 * issued / (per_s * gpu["issue_per_clock"]),
        "lsu_ms": 1e3 * lsu / (per_s * gpu["lsu_per_clock"]),
        "tensor_ms": 1e3 * tensor_s,
        "hbm_ms": 1e3 * hbm_bytes / gpu["hbm_bytes_per_s"],
    }
    name = max(bounds, key=bounds.get)
    return dict(bounds, est_ms=bounds[name], bound=name[:-3], warp_instructions=issued, lsu_cycles=lsu,
                mma_flops=flops)


def mixed_bound(parts: Sequence[tuple]) -> Dict[str, float]:
    """The bound of a launch whose programs run one of several compiled code paths: parts [(share of the
    programs, throughput_bound of the launch with every program on that path)]. The issue, LSU and tensor
    bounds and the executed totals add by share; the HBM bound (every tensor once) is the paths' largest."""
    total = sum(w for w, _ in parts)
    if abs(total - 1.0) > 1e-9 or any(w < 0 for w, _ in parts):
        raise ValueError(f"mixed_bound: shares must be >= 0 and sum to 1, got {[w for w, _ in parts]}")
    out = {k: sum(w * b[k] for w, b in parts) for k in ("issue_ms", "lsu_ms", "tensor_ms", "warp_instructions",
                                                       "lsu_cycles", "mma_flops")}
    out["hbm_ms"] = max(b["hbm_ms"] for _, b in parts)
    bounds = {k: out[k] for k in ("issue_ms", "lsu_ms", "tensor_ms", "hbm_ms")}
    name = max(bounds, key=bounds.get)
    return dict(out, est_ms=bounds[name], bound=name[:-3])


def analyze(sass: str, res_usage: str) -> dict:
    """Everything the report keeps from one cubin's SASS and resource usage, before the launch's trips."""
    instrs = parse_sass(sass)
    if not instrs:
        raise ValueError("no instructions in cuobjdump -sass output")
    loops = find_loops(instrs)
    inner = innermost_loop(loops, instrs)
    body = [i for i in instrs if inner is not None and inner.start <= i.addr <= inner.end]
    return dict(parse_res_usage(res_usage), instrs=instrs, loop_depth=max((lp.depth for lp in loops), default=0),
                sass=opcode_counts(instrs), loop_sass=opcode_counts(body))


def map_trips(source_loops: Sequence[tuple], sass_depth: int) -> tuple:
    """Trips per SASS loop level from the kernel's source loops, outer first, each (trips, static) where
    static means a constexpr bound. A static loop of one trip vanishes in compilation; if fewer SASS levels
    remain than source loops, static loops were unrolled (innermost first). Returns (trips, note)."""
    kept = [(t, s) for t, s in source_loops if not (s and t == 1)]
    note = ""
    while len(kept) > sass_depth and any(s for _, s in kept):
        i = max(j for j, (_, s) in enumerate(kept) if s)
        note = f"{len(source_loops)} source loops, {sass_depth} in SASS: static ones taken as unrolled"
        kept.pop(i)
    trips = [t for t, _ in kept]
    if len(trips) != sass_depth:
        note = f"{sass_depth} SASS loop levels for source loops {list(source_loops)}"
        trips = (trips + [1] * sass_depth)[:sass_depth]
    return trips, note


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def prod(v) -> int:
    return math.prod(int(x) for x in v)
