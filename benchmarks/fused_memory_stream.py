"""RSS of the fused model over a long stream of mixed input shapes (CPU, fp32), one line per forward.

Runs sk.fuse(R50 8x8, random weights, max_cached_shapes=N) over --forwards forwards cycling through --shapes
(BATCHxSIZE, T=16 frames, or BATCHxSIZExFRAMES), and prints after each: RSS (/proc/self/statm), the buffer cache's idle
bytes, glibc's heap figures (mallinfo2: arena bytes in use / free, mmapped bytes), the number of cached
runners and of live oneDNN packed-weight tensors. --trim calls malloc_trim(0) after each forward and prints
what it returned (fragmentation shows as RSS that malloc_trim gives back).

Run: python benchmarks/fused_memory_stream.py [--cached 4] [--forwards 60] [--shapes 1x36,2x40,...] [--trim]
     [--csv FILE]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import time

import torch

DEFAULT_SHAPES = "1x36,2x40,1x44,3x36,1x48,2x44,4x36,1x40,2x48,3x40,1x46,2x38"


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cached", type=int, default=4, help="max_cached_shapes")
    p.add_argument("--forwards", type=int, default=60)
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated BATCHxSIZE[xFRAMES] shapes, cycled")
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) after each forward")
    p.add_argument("--quiet", action="store_true", help="only the summary")
    p.add_argument("--csv", help="write forward,shape,rss_mb to FILE")
    args = p.parse_args(argv)

    import slowfast_kernels as sk
    import slowfast_reference as R
    from slowfast_kernels import plan
    from slowfast_kernels.plan import FoldedConv

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    shapes = [s if len(s) == 3 else s + (16,) for s in shapes]
    torch.manual_seed(0)
    model = R.slowfast_r50_8x8(num_classes=7).eval()
    fused = sk.fuse(model, max_cached_shapes=args.cached)
    convs = [m for m in fused.modules() if isinstance(m, FoldedConv)]
    trims = []  # seconds per malloc_trim the fused model made
    if plan._malloc_trim is not None:
        untimed = plan._malloc_trim

        def timed(pad):
            t = time.perf_counter()
            r = untimed(pad)
            trims.append(time.perf_counter() - t)
            return r

        plan._malloc_trim = timed
    inputs = {}
    rows = []
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, max_cached_shapes {args.cached}, "
          f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX')}, start RSS {rss_mb():.0f} MB", flush=True)
    print("fwd shape    rss_MB  cache_MB  arena_used  arena_free  mmap_MB  runners  packed  trimmed_MB  s trim_ms")
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(args.forwards):
            n, size, frames = shape = shapes[i % len(shapes)]
            if shape not in inputs:
                g = torch.Generator().manual_seed(n * 1000 + size + 100000 * frames)
                inputs[shape] = R.pack_pathways(torch.randn(n, 3, frames, size, size, generator=g), 4)
            t = time.perf_counter()
            fused(inputs[shape])
            dt = time.perf_counter() - t
            trimmed = trim_ms = 0.0
            if args.trim:
                before = rss_mb()
                t = time.perf_counter()
                libc.malloc_trim(0)
                trim_ms = (time.perf_counter() - t) * 1e3
                trimmed = before - rss_mb()
            rss = rss_mb()
            mi = libc.mallinfo2()
            runners = sum(len(r) for m in convs for r in m._runners.values())
            packed = sum(1 for m in convs for r in m._runners.values() for run in r.values()
                         if getattr(run, "packed", None) is not None or getattr(getattr(run, "runner", None),
                                                                                "packed", None) is not None)
            cache = torch.ops.slowfast_kernels.cpu_buffer_cache_bytes() / 2**20
            name = f"{n}x{size}" + (f"x{frames}" if frames != 16 else "")
            rows.append((i, name, rss))
            if not args.quiet:
                print(f"{i:3d} {name:<8s} {rss:8.1f} {cache:9.1f} {mi.uordblks / 2**20:11.1f} "
                      f"{mi.fordblks / 2**20:11.1f} {mi.hblkhd / 2**20:8.1f} {runners:8d} {packed:7d} "
                      f"{trimmed:10.1f}  {dt:.2f} {trim_ms:.1f}", flush=True)
    gc.collect()
    cycle = len(shapes)
    after_cycle = rows[min(2 * cycle, len(rows)) - 1][2]
    print(f"# RSS after forward {cycle} (first cycle) {rows[cycle - 1][2]:.0f} MB, after forward "
          f"{min(2 * cycle, len(rows))} (second cycle) {after_cycle:.0f} MB, after forward {len(rows)} "
          f"{rows[-1][2]:.0f} MB: growth after the second cycle {rows[-1][2] - after_cycle:+.0f} MB, after the "
          f"first {rows[-1][2] - rows[cycle - 1][2]:+.0f} MB; peak {max(r[2] for r in rows):.0f} MB; "
          f"{time.perf_counter() - t0:.0f} s")
    if trims:
        trims.sort()
        print(f"# the model's heap trims: {len(trims)}, median {trims[len(trims) // 2] * 1e3:.1f} ms, max "
              f"{trims[-1] * 1e3:.1f} ms")
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("forward,shape,rss_mb\n")
            f.writelines(f"{i},{s},{r:.1f}\n" for i, s, r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
