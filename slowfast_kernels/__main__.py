"""Command line: python -m slowfast_kernels {demo,backends}."""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import torch


def _demo(args: argparse.Namespace) -> int:
    import slowfast_reference as R

    torch.manual_seed(0)
    model = R.build_model(args.arch).eval()
    cfg = model.config
    frames = torch.rand(args.batch, 3, cfg.num_frames, args.size, args.size)
    inputs = [frames] if cfg.slow_only else R.pack_pathways(frames, cfg.alpha)
    print(f"{args.arch}: {sum(p.numel() for p in model.parameters()):,} parameters")
    for name, t in zip(("slow", "fast"), inputs):
        print(f"  {name:5s} input {tuple(t.shape)}")
    with torch.inference_mode():
        model(inputs)  # warm-up
        start = time.perf_counter()
        logits = model(inputs)
        elapsed = time.perf_counter() - start
    print(f"  logits {tuple(logits.shape)}, reference forward {elapsed * 1e3:.1f} ms "
          f"({args.batch / elapsed:.2f} clips/s, {torch.get_num_threads()} threads)")
    return 0


def _backends(args: argparse.Namespace) -> int:
    from . import backends

    print(backends.describe())
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slowfast_kernels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a synthetic clip through a reference SlowFast model")
    demo.add_argument("--arch", default="slowfast_r50_8x8")
    demo.add_argument("--batch", type=int, default=1)
    demo.add_argument("--size", type=int, default=224)
    demo.set_defaults(func=_demo)
    sub.add_parser("backends", help="list the backends and why any is unavailable").set_defaults(func=_backends)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
