"""demo, bench and backends: a synthetic video through the reference and the fused model, clips/s."""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, List

import torch

from . import options


def _timed(fn: Callable[[], object], runs: int, device: torch.device) -> List[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _summary(times: List[float], batch: int) -> str:
    med = statistics.median(times)
    return f"{batch / med:7.2f} clips/s (median {med * 1e3:8.1f} ms, min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})"


def _checked(args: argparse.Namespace, debug: bool, crops: bool = True):
    device = options.check_device(args.device)
    options.check_backend(args.backend, device)
    if crops:
        options.check_geometry(args)
    return device, options.ModelSource.resolve(args, debug)


def demo(args: argparse.Namespace, debug: bool) -> int:
    import slowfast_kernels as sk
    from slowfast_kernels import io

    device, source = _checked(args, debug)
    if source.detected:
        print(f"checkpoint {args.checkpoint}: {source.arch} ({source.format} layout, {source.num_classes} classes)")
    torch.manual_seed(0)
    model = source.build().to(device)
    cfg = model.config
    sr = options.SAMPLING_RATE[source.arch]
    with tempfile.TemporaryDirectory() as tmp:
        path = io.write_video(Path(tmp) / "synthetic.mp4", io.synthetic_video(cfg.num_frames * sr, 256, 340))
        clip = io.read_video(path, num_frames=cfg.num_frames, sampling_rate=sr)
    print(f"{source.arch}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights'}")
    print(f"video: synthetic MP4 {clip.num_video_frames} frames 256x340 -> decoded {tuple(clip.frames.shape)}, "
          f"clip of {cfg.num_frames} frames every {sr}, resize {args.size}, crop {args.crop}")
    frames = clip.frames.to(device)
    index = clip.index.to(device)

    # Reference: PySlowFast's eager composition, then the reference model in fp32.
    def reference():
        slow, fast = sk.pack_pathways_ref(frames, index, cfg.alpha, size=args.size, crop=args.crop)
        return model([fast[None]] if cfg.slow_only else [slow[None], fast[None]])

    fused = sk.fuse(model, dtype=options.DTYPES[args.dtype], backend=args.backend)

    def fast_path():
        return fused.from_video(frames, index, size=args.size, crop=args.crop)

    with torch.inference_mode():
        expected, actual = reference(), fast_path()
        abs_err = (actual - expected).abs().max().item()
        rel_err = abs_err / expected.abs().max().item()
        print(f"parity fused vs reference: max abs {abs_err:.3e}, max rel {rel_err:.3e} "
              f"(top-1 class {expected.argmax().item()} vs {actual.argmax().item()})")
        t_ref = _timed(reference, args.runs, device)
        t_fused = _timed(fast_path, args.runs, device)
    print(f"reference (decode excluded): {_summary(t_ref, 1)}")
    print(f"fused {args.dtype:9s}:           {_summary(t_fused, 1)}")
    print(f"speedup: {statistics.median(t_ref) / statistics.median(t_fused):.2f}x "
          f"({device}, {torch.get_num_threads()} threads)")
    return 0


def bench(args: argparse.Namespace, debug: bool) -> int:
    import slowfast_kernels as sk

    device, source = _checked(args, debug, crops=False)  # random clips of --size, no crop
    torch.manual_seed(0)
    model = source.build().to(device)
    dtype = options.DTYPES[args.dtype]
    clip = torch.rand(args.batch, 3, model.config.num_frames, args.size, args.size, device=device)
    import slowfast_reference as R

    inputs = [clip] if model.config.slow_only else R.pack_pathways(clip, model.config.alpha)
    cuda = device.type == "cuda"
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
    print(f"{source.arch} {args.size}x{args.size} batch {args.batch} {args.dtype} on {device} "
          f"({torch.get_num_threads()} threads), {args.runs} runs after warm-up")
    medians = {}
    with torch.inference_mode():
        for name, fn in rows.items():
            fn()
            times = _timed(fn, args.runs, device)
            medians[name] = statistics.median(times)
            print(f"  {name:14s} {_summary(times, args.batch)}  x{medians['eager'] / medians[name]:.2f} vs eager")
    return 0


def backends_(args: argparse.Namespace, debug: bool) -> int:
    from slowfast_kernels import backends

    print(backends.describe())
    return 0
