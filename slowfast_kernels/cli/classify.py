"""classify: top-k labels of a corpus of videos, one JSON line per video.

Pipeline: worker threads decode videos ahead of the model (PyAV releases the GIL while it decodes), one
pass per video holding only the sampled frames, within a memory budget (cli/clips.py); the main thread
packs each view (pack_pathways: sampling, resize, crop, normalise, layout in one pass)
straight into its slot of a preallocated batch, and runs the fused model once per --batch-size views,
whichever videos they come from (a CUDA graph per batch shape on GPUs). A video's line is written when
its last view is scored. PySlowFast's test protocol: softmax per head position (2x2 positions at a 256
crop), averaged over positions by the model, then the probabilities averaged over the views (1, or 10
temporal x 3 spatial). Under torchrun, rank r classifies videos r, r + N, ... of those not yet done.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import List, Optional, Tuple

import torch

from . import clips, options
from .corpus import ResultsFile, encode, expand_inputs, read_results
from .errors import EXIT_OK, EXIT_VIDEOS_FAILED

RANDOM_WEIGHTS = "random weights (no --checkpoint): the labels are meaningless"


@dataclass
class _Video:
    path: str
    started: float
    views: int
    scores: Optional[torch.Tensor] = None
    scored: int = 0
    failed: bool = False


class _Distributed:
    """torchrun's environment: rank, world size, the process group (gloo on CPU, NCCL on GPUs)."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.group = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        if self.active and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return device

    def init(self, device: torch.device) -> None:
        if not self.active:
            return
        import torch.distributed as dist

        # Ranks finish their shards at different times: the final barrier may wait long.
        timeout = timedelta(hours=12)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
            self.group = dist.new_group(backend="gloo", timeout=timeout)  # barriers on the CPU
        else:
            dist.init_process_group("gloo", timeout=timeout)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _reader(num_frames: int, sampling_rate: int, temporal: int):
    """read(path, budget) -> the video's temporal clips (io.DecodedClip), decoded in one pass."""
    from slowfast_kernels import io

    sample = io.pyslowfast_clips(num_frames, sampling_rate, range(temporal), temporal)
    return lambda path, budget: io.read_clips(path, sample, budget=budget)


class _VideoError(Exception):
    """A video whose views could not be decoded or packed: its line is an error line, the run goes on."""


def _decoded(decoding, video: _Video):
    """decoding.clips(), a decoding error raised as _VideoError (views already in the batch go unscored)."""
    clips_left = decoding.clips()
    while True:
        try:
            clip = next(clips_left, None)
        except Exception as exc:  # noqa: BLE001 - one undecodable video must not end the run
            video.failed = True
            raise _VideoError(exc) from exc
        if clip is None:
            return
        yield clip
        del clip  # packed: the frames go before the next clip is waited for


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Batcher:
    """Views packed into slots of one preallocated (slow, fast) batch; a forward when it is full."""

    def __init__(self, fused, cfg, args: argparse.Namespace, device: torch.device, emit) -> None:
        self.fused, self.cfg, self.args, self.device, self.emit = fused, cfg, args, device, emit
        self.batch = args.batch_size
        self.owners: List[_Video] = []
        self.buffers: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        t, s = cfg.num_frames, args.crop
        self.shapes = ((self.batch, 3, t // cfg.alpha, s, s), (self.batch, 3, t, s, s))

    def _new_buffers(self) -> Tuple[torch.Tensor, torch.Tensor]:
        # zeros on CUDA: a last, partial batch runs whole (one graph for every batch), its unused slots zero.
        make = torch.zeros if self.device.type == "cuda" else torch.empty
        return tuple(make(shape, dtype=self.fused_dtype, device=self.device).contiguous(
            memory_format=torch.channels_last_3d) for shape in self.shapes)

    @property
    def fused_dtype(self) -> torch.dtype:
        return options.DTYPES[self.args.dtype]

    def add(self, video: _Video, frames: torch.Tensor, index: torch.Tensor, spatial_idx: int) -> None:
        import slowfast_kernels as sk

        if self.buffers is None:
            self.buffers = self._new_buffers()
        slot = len(self.owners)
        slow, fast = self.buffers
        try:
            sk.pack_pathways(frames, index, self.cfg.alpha, size=self.args.size, crop=self.args.crop,
                             spatial_idx=spatial_idx, dtype=self.fused_dtype, channels_last=True,
                             backend=self.args.backend, out=(slow[slot], fast[slot]))
        except (ValueError, RuntimeError) as exc:  # frames this video cannot be packed from
            video.failed = True
            raise _VideoError(exc) from exc
        self.owners.append(video)
        if len(self.owners) == self.batch:
            self.run()

    def run(self) -> None:
        if not self.owners:
            return
        slow, fast = self.buffers
        n = len(self.owners) if self.device.type != "cuda" else self.batch
        inputs = [fast[:n]] if self.cfg.slow_only else [slow[:n], fast[:n]]
        probs = self.fused(inputs).float().cpu()
        for i, video in enumerate(self.owners):
            # PySlowFast: the views' probabilities summed, in view order, then divided by the view count
            video.scores = probs[i].clone() if video.scores is None else video.scores + probs[i]
            video.scored += 1
            if video.scored == video.views and not video.failed:
                self.emit(video)
        self.owners = []  # the buffers stay: the next batch packs into the same memory (no fresh pages)


def run(args: argparse.Namespace, debug: bool) -> int:
    import slowfast_kernels as sk

    dist = _Distributed()
    # Everything that can be wrong with the options, before the model exists.
    device = dist.device(options.check_device(args.device))
    options.check_backend(args.backend, device)
    videos = expand_inputs(args.videos)
    options.check_geometry(args, options.first_existing(videos))
    source = options.ModelSource.resolve(args, debug)
    options.check_top(args.top, source.num_classes)
    labels = options.read_labels(args.labels, source.num_classes)
    results = ResultsFile(args.output, dist.rank, dist.world_size) if args.output else None
    dist.init(device)
    try:
        return _run(args, dist, device, videos, source, labels, results, sk)
    finally:
        dist.close()


def _run(args, dist: _Distributed, device, videos, source, labels, results, sk) -> int:
    rank0 = dist.rank == 0
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if rank0 else (lambda msg: None)
    done = results.done() if results is not None else {}
    pending = [v for v in videos if v not in done]
    dist.barrier()  # every rank has read what is done before any rank writes
    mine = pending[dist.rank::dist.world_size]
    if done:
        say(f"resuming: {len(videos) - len(pending)} of {len(videos)} videos already in {args.output}")
    if source.detected:
        say(f"checkpoint {args.checkpoint}: {source.arch} ({source.format} layout, {source.num_classes} classes)")
    if source.state is None:
        say(f"warning: {RANDOM_WEIGHTS}")
    if results is not None:
        results.open()

    torch.manual_seed(0)  # without a checkpoint, the same random weights in every rank and every run
    model = source.build(head_act="softmax", train_crop=args.train_crop)
    source.state = None  # the weights live in the model now
    cfg = model.config
    fused = sk.fuse(model.to(device), dtype=options.DTYPES[args.dtype], backend=args.backend)
    del model
    temporal, spatial = (10, (0, 1, 2)) if args.views == 30 else (1, (1,))
    sampling_rate = options.SAMPLING_RATE[source.arch]
    failed = 0

    from tqdm import tqdm

    bar = tqdm(total=len(mine), unit="video", file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
               disable=args.no_progress or not rank0, desc=f"classify ({dist.world_size} ranks)" if dist.active
               else "classify")

    def write(record: dict) -> None:
        if results is not None:
            results.write(record)
        else:
            sys.stdout.buffer.write(encode(record))
            sys.stdout.flush()
        bar.update(1)

    def emit(video: _Video) -> None:
        scores = video.scores / video.views
        top = scores.topk(args.top)
        record = {"video": video.path,
                  "top": [[labels[i], round(p, 6)] for p, i in zip(top.values.tolist(), top.indices.tolist())],
                  "views": args.views, "arch": source.arch, "checkpoint": args.checkpoint,
                  "seconds": round(time.perf_counter() - video.started, 3)}
        if args.checkpoint is None:
            record["warning"] = RANDOM_WEIGHTS
        write(record)

    batcher = _Batcher(fused, cfg, args, device, emit)
    read = _reader(cfg.num_frames, sampling_rate, temporal)
    with torch.inference_mode():
        # Decoding runs ahead by --workers videos and clips.DECODE_AHEAD_BYTES of frames; each clip is
        # released once its crops are packed.
        for decoding in clips.decode_ahead(mine, read, workers=args.workers, videos_ahead=args.workers):
            video = _Video(decoding.path, 0.0, temporal * len(spatial))
            try:
                for clip in _decoded(decoding, video):
                    video.started = decoding.started
                    frames, index = clip.frames.to(device, non_blocking=True), clip.index.to(device)
                    for s in spatial:
                        batcher.add(video, frames, index, s)
                    del frames, index, clip
            except _VideoError as exc:
                failed += 1
                write({"video": decoding.path, "error": _error_text(exc.__cause__)})
        batcher.run()
    bar.close()
    if results is not None:
        results.close()
    dist.barrier()  # every part file is complete
    if results is None:
        return EXIT_VIDEOS_FAILED if failed else EXIT_OK
    if rank0:
        results.merge_parts()
    dist.barrier()
    if not rank0:
        return EXIT_OK  # rank 0 reports the status of the whole run
    final = read_results(args.output)
    errors = [v for v in videos if "error" in final.get(v, {})]
    missing = [v for v in videos if v not in final]
    if missing:  # cannot happen unless a rank was stopped: then the run is not complete
        raise RuntimeError(f"{len(missing)} video(s) have no line in {args.output} (first: {missing[0]}); "
                           "run the same command again to finish them")
    say(f"{len(videos)} videos in {args.output}, {len(errors)} failed to decode" if errors
        else f"{len(videos)} videos in {args.output}")
    return EXIT_VIDEOS_FAILED if errors else EXIT_OK
