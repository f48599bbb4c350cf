"""python -m slowfast_kernels {demo, classify, bench, backends}

demo      encode a synthetic MP4, decode it, run the reference and the fused model: parity and clips/s
classify  top-5 Kinetics-400 labels of real videos (1 or 30 views, PySlowFast's test protocol)
bench     end-to-end clips/s: fused vs the eager reference (and torch.compile with --compile)
backends  which kernel backends can run here, and why the others cannot
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import torch

# PySlowFast's test-time SAMPLING_RATE per architecture (frames between consecutive fast frames).
SAMPLING_RATE = {"slowfast_r50_4x16": 2, "slowfast_r50_8x8": 2, "slowfast_r101_8x8": 2, "slowfast_r101_16x8": 2,
                 "slow_r50_8x8": 8}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _timed(fn: Callable[[], object], runs: int) -> List[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: List[float], batch: int) -> str:
    med = statistics.median(times)
    return f"{batch / med:7.2f} clips/s (median {med * 1e3:8.1f} ms, min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})"


def _build(args, num_classes: int = 400, head_act=None):
    import slowfast_reference as R
    import slowfast_kernels as sk

    model = R.build_model(args.arch, num_classes=num_classes, head_act=head_act,
                          train_crop=getattr(args, "train_crop", 224)).eval()
    if getattr(args, "checkpoint", None):
        sk.load_checkpoint(model, args.checkpoint)
    return model.to(args.device)


def _model_inputs(model, clip: torch.Tensor) -> List[torch.Tensor]:
    import slowfast_reference as R

    return [clip] if model.config.slow_only else R.pack_pathways(clip, model.config.alpha)


def _demo(args: argparse.Namespace) -> int:
    import slowfast_kernels as sk
    from slowfast_kernels import io

    torch.manual_seed(0)
    model = _build(args)
    cfg = model.config
    sr = SAMPLING_RATE[args.arch]
    with tempfile.TemporaryDirectory() as tmp:
        path = io.write_video(Path(tmp) / "synthetic.mp4", io.synthetic_video(cfg.num_frames * sr, 256, 340))
        clip = io.read_video(path, num_frames=cfg.num_frames, sampling_rate=sr)
    print(f"{args.arch}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights'}")
    print(f"video: synthetic MP4 {clip.num_video_frames} frames 256x340 -> decoded {tuple(clip.frames.shape)}, "
          f"clip of {cfg.num_frames} frames every {sr}, resize {args.size}, crop {args.crop}")
    frames = clip.frames.to(args.device)
    index = clip.index.to(args.device)
    dtype = DTYPES[args.dtype]

    # Reference: PySlowFast's eager composition, then the reference model in fp32.
    def reference():
        slow, fast = sk.pack_pathways_ref(frames, index, cfg.alpha, size=args.size, crop=args.crop)
        return model([fast[None]] if cfg.slow_only else [slow[None], fast[None]])

    fused = sk.fuse(model, dtype=dtype, backend=args.backend)

    def fast_path():
        return fused.from_video(frames, index, size=args.size, crop=args.crop)

    with torch.inference_mode():
        expected, actual = reference(), fast_path()
        abs_err = (actual - expected).abs().max().item()
        rel_err = abs_err / expected.abs().max().item()
        print(f"parity fused vs reference: max abs {abs_err:.3e}, max rel {rel_err:.3e} "
              f"(top-1 class {expected.argmax().item()} vs {actual.argmax().item()})")
        t_ref = _timed(reference, args.runs)
        t_fused = _timed(fast_path, args.runs)
    print(f"reference (decode excluded): {_summary(t_ref, 1)}")
    print(f"fused {args.dtype:9s}:           {_summary(t_fused, 1)}")
    print(f"speedup: {statistics.median(t_ref) / statistics.median(t_fused):.2f}x "
          f"({args.device}, {torch.get_num_threads()} threads)")
    return 0


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _classify(args: argparse.Namespace) -> int:
    import slowfast_kernels as sk
    from slowfast_kernels import io

    labels = io.kinetics_400_labels()
    if not args.checkpoint:
        warnings.warn("classify: NO CHECKPOINT GIVEN (--checkpoint PATH): the model has random weights and "
                      "its labels are meaningless", stacklevel=1)
        print("WARNING: no --checkpoint: random weights, the labels below are meaningless", file=sys.stderr)
    # PySlowFast's test protocol: softmax per head position (2x2 positions at a 256 crop), averaged over
    # positions by the model, then over the views here.
    model = _build(args, num_classes=len(labels), head_act="softmax")
    cfg = model.config
    fused = sk.fuse(model, dtype=DTYPES[args.dtype], backend=args.backend)
    temporal, spatial = (10, 3) if args.views == 30 else (1, 1)
    sr = SAMPLING_RATE[args.arch]
    for n, path in enumerate(args.videos, 1):
        scores = torch.zeros(len(labels))
        label = f"video {n}/{len(args.videos)}"
        with torch.inference_mode():
            for t in range(temporal):
                clip = io.read_video(path, num_frames=cfg.num_frames, sampling_rate=sr, clip_idx=t, num_clips=temporal)
                frames, index = clip.frames.to(args.device), clip.index.to(args.device)
                for s in range(spatial):
                    spatial_idx = 1 if spatial == 1 else s
                    probs = fused.from_video(frames, index, size=args.size, crop=args.crop, spatial_idx=spatial_idx)
                    scores += probs.float()[0].cpu()  # PySlowFast: the views' probabilities summed
                    _progress(t * spatial + s + 1, temporal * spatial, label)
        scores /= temporal * spatial
        top = scores.topk(args.top)
        print(f"{path}: {args.views} view(s)")
        for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
            print(f"  {rank}. {labels[i]:40s} {p:.4f}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import copy

    import slowfast_kernels as sk

    torch.manual_seed(0)
    model = _build(args)
    dtype = DTYPES[args.dtype]
    clip = torch.rand(args.batch, 3, model.config.num_frames, args.size, args.size, device=args.device)
    inputs = _model_inputs(model, clip)
    cuda = args.device.startswith("cuda")
    eager_model, eager_inputs = model, inputs
    if cuda or dtype != torch.float32:
        fmt = torch.channels_last_3d if cuda else torch.contiguous_format
        eager_model = copy.deepcopy(model).to(dtype, memory_format=fmt)
        eager_inputs = [t.to(dtype).contiguous(memory_format=fmt) for t in inputs]
    rows = {"eager": lambda: eager_model(eager_inputs)}
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(eager_model, mode="max-autotune" if cuda else None)
        rows["torch.compile"] = lambda: compiled(eager_inputs)
    fused = sk.fuse(model, dtype=dtype, backend=args.backend, cuda_graph=cuda and args.cuda_graph)
    rows["fused"] = lambda: fused(inputs)
    print(f"{args.arch} {args.size}x{args.size} batch {args.batch} {args.dtype} on {args.device} "
          f"({torch.get_num_threads()} threads), {args.runs} runs after warm-up")
    medians = {}
    with torch.inference_mode():
        for name, fn in rows.items():
            fn()
            times = _timed(fn, args.runs)
            medians[name] = statistics.median(times)
            print(f"  {name:14s} {_summary(times, args.batch)}  x{medians['eager'] / medians[name]:.2f} vs eager")
    return 0


def _backends(args: argparse.Namespace) -> int:
    from slowfast_kernels import backends

    print(backends.describe())
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slowfast_kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"

    def common(p, size=256, crop=256):
        p.add_argument("--arch", default="slowfast_r50_8x8", choices=sorted(SAMPLING_RATE))
        p.add_argument("--device", default=default_device)
        p.add_argument("--dtype", default="bfloat16" if default_device == "cuda" else "float32", choices=DTYPES)
        p.add_argument("--backend", default="auto", choices=["auto", "triton", "cuda", "cpu", "reference"])
        p.add_argument("--size", type=int, default=size, help="short-side resize (pixels)")
        p.add_argument("--crop", type=int, default=crop, help="square crop (pixels)")

    demo = sub.add_parser("demo", help="synthetic MP4 -> decode -> reference vs fused: parity and speed")
    common(demo, size=256, crop=224)
    demo.add_argument("--checkpoint", default=None)
    demo.add_argument("--runs", type=int, default=3)
    demo.set_defaults(func=_demo)

    classify = sub.add_parser("classify", help="top-5 Kinetics-400 labels of videos")
    classify.add_argument("videos", nargs="+", help="video files (anything PyAV decodes)")
    classify.add_argument("--checkpoint", default=None, help="PyTorchVideo / PySlowFast / MMAction2 checkpoint")
    classify.add_argument("--views", type=int, default=1, choices=[1, 30],
                          help="1: centre crop of the first clip; 30: 10 temporal x 3 spatial (PySlowFast testing)")
    classify.add_argument("--top", type=int, default=5)
    classify.add_argument("--train-crop", type=int, default=224,
                          help="the checkpoint's training crop: the head pools windows of train_crop / 32 "
                               "(224 for every released SlowFast checkpoint)")
    common(classify)
    classify.set_defaults(func=_classify)

    bench = sub.add_parser("bench", help="end-to-end clips/s: fused vs eager (vs torch.compile)")
    common(bench, size=224, crop=224)
    bench.add_argument("--batch", type=int, default=32 if default_device == "cuda" else 1)
    bench.add_argument("--runs", type=int, default=5)
    bench.add_argument("--compile", action="store_true", help="also time torch.compile of the reference")
    bench.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false")
    bench.set_defaults(func=_bench)

    sub.add_parser("backends", help="list the backends and why any is unavailable").set_defaults(func=_backends)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
