"""classify: top-k labels of a corpus of videos, one JSON line per video.

Pipeline: worker threads decode videos ahead of the model (PyAV releases the GIL while it decodes), one
pass per video holding only the sampled frames, within a memory budget (cli/clips.py); the main thread
packs each view (pack_pathways: sampling, resize, crop, normalise, layout in one pass)
straight into its slot of a preallocated batch, and runs the fused model once per --batch-size views,
whichever videos they come from (a CUDA graph per batch shape on GPUs). A video's line is written when
its last view is scored. PySlowFast's test protocol: softmax per head position (2x2 positions at a 256
crop), averaged over positions by the model, then the probabilities averaged over the views (1, or 10
temporal x 3 spatial). Under torchrun, rank r classifies videos r, r + N, ... of those not yet done.
--features FILE.npz: each view's pooled concat vector (fused.logits_and_features: one backbone pass; with
--features-only fused.features, no classifier) kept in view order, the video's [views, D] array written
to the archive (cli/features.py) just before its line.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import List, Optional, Tuple

import numpy as np
import torch

from . import clips, features as feature_files, options, protocol as test_protocol, resume
from .corpus import ResultsFile, encode, expand_inputs, read_results, video_key
from .errors import EXIT_OK, EXIT_VIDEOS_FAILED
from .progress import Progress
from ..scoring import accumulate, finalize

RANDOM_WEIGHTS = "random weights (no --checkpoint): the labels are meaningless"


@dataclass
class _Video:
    path: str
    seconds: float  # its own time: decoding, packing its views, its share of each forward (no queueing)
    views: int
    scores: Optional[torch.Tensor] = None
    scored: int = 0
    failed: bool = False
    features: List[torch.Tensor] = field(default_factory=list)  # --features: each view's concat row, in order


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


def _reader(proto, num_frames: int, sampling_rate: int):
    """read(path, budget) -> the video's temporal clips (io.DecodedClip) by the protocol's sampling rule,
    decoded in one pass."""
    from slowfast_kernels import io

    return lambda path, budget: io.read_clips(path, proto.sampler(path, num_frames, sampling_rate), budget=budget)


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

    emit_failed = False  # an owner whose packing failed is not emitted (its line is the error line)

    def __init__(self, fused, cfg, args: argparse.Namespace, device: torch.device, emit, proto) -> None:
        self.fused, self.cfg, self.args, self.device, self.emit = fused, cfg, args, device, emit
        self.features = getattr(args, "features", None) is not None
        self.features_only = bool(getattr(args, "features_only", False))
        self.preset = proto.preset
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
        if self.buffers is None:
            self.buffers = self._new_buffers()
        slot = len(self.owners)
        slow, fast = self.buffers
        started = time.perf_counter()
        try:
            self.preset.pack(frames, index, self.cfg.alpha, spatial_idx, size=self.args.size, crop=self.args.crop,
                             dtype=self.fused_dtype, channels_last=True, backend=self.args.backend,
                             out=(slow[slot], fast[slot]))
        except (ValueError, RuntimeError) as exc:  # frames this video cannot be packed from
            video.failed = True
            raise _VideoError(exc) from exc
        video.seconds += time.perf_counter() - started
        self.owners.append(video)
        if len(self.owners) == self.batch:
            self.run()

    def forward(self, inputs) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(the head's probabilities [N, classes], or None with --features-only; the concat feature rows
        [N, D], or None without --features): one backbone pass either way."""
        if self.features_only:
            return None, self.fused.features(inputs)["concat"]
        if self.features:
            probs, feats = self.fused.logits_and_features(inputs)
            return probs, feats["concat"]
        return self.fused(inputs), None

    def run(self) -> None:
        if not self.owners:
            return
        slow, fast = self.buffers
        n = len(self.owners) if self.device.type != "cuda" else self.batch
        inputs = [fast[:n]] if self.cfg.slow_only else [slow[:n], fast[:n]]
        started = time.perf_counter()
        probs, feats = self.forward(inputs)
        probs = None if probs is None else probs.float().cpu()
        feats = None if feats is None else feats.float().cpu()
        share = (time.perf_counter() - started) / len(self.owners)  # each view's part of the forward
        for i, owner in enumerate(self.owners):
            owner.seconds += share
            if probs is not None:
                # the preset's ensemble: PySlowFast sums (or maxes) in view order; mean = the sum / the view count
                owner.scores = accumulate(owner.scores, probs[i], self.preset.ensemble)
            if feats is not None:
                owner.features.append(feats[i])
            owner.scored += 1
            if owner.scored == owner.views and (self.emit_failed or not owner.failed):
                self.emit(owner)
        self.owners = []  # the buffers stay: the next batch packs into the same memory (no fresh pages)


def run(args: argparse.Namespace, debug: bool) -> int:
    from . import timeline

    if timeline.wanted(args):  # --window / --stride, or a stream: one line per window (cli/timeline.py)
        return timeline.run(args, debug)
    import slowfast_kernels as sk

    dist = _Distributed()
    # Everything that can be wrong with the options, before the model exists.
    device = dist.device(options.check_device(args.device))
    options.check_backend(args.backend, device)
    videos = expand_inputs(args.videos, warn=_say(dist.rank == 0))
    options.check_geometry(args, options.first_existing(videos))
    features_path = feature_files.check_options(args)
    source = options.ModelSource.resolve(args, debug)
    options.check_top(args.top, source.num_classes)
    proto = test_protocol.resolve(args, source)
    labels = test_protocol.read_labels(args.labels, source.num_classes)
    test_protocol.load_ground_truth(proto, args.ground_truth, labels)
    output = resume.output_path(args)
    results = ResultsFile(output, dist.rank, dist.world_size) if output else None
    plan = resume.plan(args, source.arch, videos, results)  # every rank reads what is done before any writes
    features = None
    if features_path is not None:
        features = feature_files.FeaturesFile(features_path, dist.rank, dist.world_size)
        feature_files.check_resume(features, plan.settings, plan.kept,
                                   resuming=results is not None and not plan.overwrite)
    dist.init(device)
    try:
        return _run(args, dist, device, videos, source, labels, results, plan, sk, proto, features)
    finally:
        dist.close()


def _say(rank0: bool):
    return (lambda msg: print(msg, file=sys.stderr, flush=True)) if rank0 else (lambda msg: None)


def _run(args, dist: _Distributed, device, videos, source, labels, results, plan, sk, proto, features) -> int:
    rank0 = dist.rank == 0
    say = _say(rank0)
    pending = plan.pending
    if rank0:
        plan.prepare(results)  # --overwrite, --retry-failed, a killed run's part files merged
        if features is not None:  # the archive goes with --output: kept and resumed; without one, started over
            if results is not None and not plan.overwrite:
                features.prepare()
            else:
                features.start_over()
    dist.barrier()  # OUTPUT is ready before any rank writes
    mine = pending[dist.rank::dist.world_size]
    if results is not None and plan.message(len(videos), results.path):
        say(plan.message(len(videos), results.path))
    if source.detected:
        say(f"checkpoint {args.checkpoint}: {source.arch} ({source.format} layout, {source.num_classes} classes)")
    if source.state is None:
        say(f"warning: {RANDOM_WEIGHTS}")
    if results is not None:
        results.open()
    if features is not None:
        # (temporal clip, spatial crop) of each row: the order the views are packed in (clip-major, as
        # PySlowFast and MMAction2 order their test views)
        view_index = np.array(proto.preset.views(), dtype=np.int64).reshape(-1, 2)
        features.open(plan.settings, {feature_files.VIEW_INDEX: view_index})

    torch.manual_seed(0)  # without a checkpoint, the same random weights in every rank and every run
    model = test_protocol.build_model(source, proto, args.train_crop, args.non_strict, say)
    source.state = None  # the weights live in the model now
    cfg = model.config
    fused = sk.fuse(model.to(device), dtype=options.DTYPES[args.dtype], backend=args.backend)
    del model
    temporal, spatial = proto.clips, proto.crop_indices
    sampling_rate = options.SAMPLING_RATE[source.arch]
    failed = 0

    bar = Progress(pending, mine, dist.rank, dist.world_size, results, disable=args.no_progress)

    scored: dict = {}  # without --output: the records to score (--ground-truth)

    def write(record: dict) -> None:
        record = {"video": record["video"], "resolved": video_key(record["video"]), **record,
                  "settings": plan.settings}
        if "scores" in record:
            scored[record["video"]] = record
        if results is not None:
            results.write(record)
        else:
            sys.stdout.buffer.write(encode(record))
            sys.stdout.flush()
        bar.wrote()

    def emit(video: _Video) -> None:
        record = {"video": video.path}
        scores = None
        if not getattr(args, "features_only", False):
            scores = finalize(video.scores, video.views, proto.preset.ensemble)
            top = scores.topk(args.top)
            record["top"] = [[labels[i], round(p, 6)] for p, i in zip(top.values.tolist(), top.indices.tolist())]
        if features is not None:  # the array before the line: a line always has its array
            key = video_key(video.path)
            features.write(key, torch.stack(video.features).numpy())
            record["features"] = key
        record.update({"views": args.views, "arch": source.arch, "checkpoint": args.checkpoint,
                       "seconds": round(video.seconds, 3)})
        record.update(proto.record_fields(scores, labels) if scores is not None else proto.view_fields())
        if args.checkpoint is None:
            record["warning"] = RANDOM_WEIGHTS
        write(record)

    batcher = _Batcher(fused, cfg, args, device, emit, proto)
    read = _reader(proto, cfg.num_frames, sampling_rate)
    try:
        with torch.inference_mode():
            # Decoding runs ahead by --workers videos and clips.DECODE_AHEAD_BYTES of frames; each clip is
            # released once its crops are packed.
            for decoding in clips.decode_ahead(mine, read, workers=args.workers, videos_ahead=args.workers):
                video = _Video(decoding.path, 0.0, temporal * len(spatial))
                counted = 0.0  # decoding.seconds already in video.seconds (the decode thread adds as it goes)
                try:
                    for clip in _decoded(decoding, video):
                        now = decoding.seconds
                        video.seconds, counted = video.seconds + now - counted, now
                        frames, index = clip.frames.to(device, non_blocking=True), clip.index.to(device)
                        for s in spatial:
                            batcher.add(video, frames, index, s)
                        del frames, index, clip
                except _VideoError as exc:
                    failed += 1
                    write({"video": decoding.path, "error": _error_text(exc.__cause__)})
            batcher.run()
    finally:
        if features is not None:
            features.close()  # its central directory: the archive opens without repair
    if results is not None:
        results.close()
    dist.barrier()  # every part file is complete
    bar.close()
    if features is not None and rank0:
        features.merge_parts()
    if results is None:
        test_protocol.summarize(proto, scored, labels, None, say)
        return EXIT_VIDEOS_FAILED if failed else EXIT_OK
    if rank0:
        results.merge_parts()
    dist.barrier()
    if not rank0:
        return EXIT_OK  # rank 0 reports the status of the whole run
    final = read_results(results.path)
    errors = [v for v in videos if "error" in final.get(video_key(v), {})]
    missing = [v for v in videos if video_key(v) not in final]
    if missing:  # cannot happen unless a rank was stopped: then the run is not complete
        raise RuntimeError(f"{len(missing)} video(s) have no line in {results.path} (first: {missing[0]}); "
                           "run the same command again to finish them")
    say(f"{len(videos)} videos in {results.path}, {len(errors)} failed to decode (--retry-failed runs them again)"
        if errors else f"{len(videos)} videos in {results.path}")
    test_protocol.summarize(proto, {v: final[video_key(v)] for v in videos if video_key(v) in final}, labels,
                            results.path, say)
    return EXIT_VIDEOS_FAILED if errors else EXIT_OK
