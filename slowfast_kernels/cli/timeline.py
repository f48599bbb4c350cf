"""classify's timelines: a sliding window over a long video or a live stream, one JSON line per window.

``classify VIDEO --window SEC [--stride SEC]`` and ``classify -|URL`` (a stream: stdin, rtsp://, udp://,
tcp://, http(s)://, whatever PyAV opens). Window k spans [k * stride, k * stride + window) seconds and holds
the frames whose time (frame number / fps, frame 0 at 0 s) lies in it; its clip is the model's num_frames
frames taken uniformly over them (PyTorchVideo's UniformTemporalSubsample: linspace(0, n - 1, T).long()),
packed by the preset, one centre crop (--crops 3: three crops, combined by the preset's ensemble). Only
complete windows are scored (PyTorchVideo's UniformClipSampler); a file shorter than one window is one
window over all its frames.

One thread decodes every frame once, in order (no seek per window), converting to RGB only the frames a
pending window samples; a frame leaves the frame map when the last window sampling it is complete, so
the map holds at most ceil(window / stride) * num_frames frames whatever the length of the video. Complete
windows wait in a queue of at most --batch-size windows (and DECODE_AHEAD_BYTES of frames); the main thread
packs them into the fused model's batches. A file's decoder waits for the model; a stream's never does:
when the queue is full the oldest waiting window is dropped, so a line is written at most about two
forwards after its window's last frame arrived, and each line says how many windows were dropped since
the previous one.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Counter, Dict, List, NamedTuple, Optional, Set, Tuple

import numpy as np
import torch

from . import features as feature_files, options, protocol as test_protocol, resume
from .classify import RANDOM_WEIGHTS, _Batcher, _Distributed, _error_text, _VideoError
from .clips import DECODE_AHEAD_BYTES
from .corpus import ResultsFile, encode, expand_inputs, record_key, video_key
from .errors import EXIT_OK, EXIT_VIDEOS_FAILED, UsageError
from .. import _decode
from ..scoring import finalize

# A window's span in seconds rounds to frames at this many decimals of a frame: 0.1 s x 30 fps is 3 frames,
# not 3.0000000000000004 (-> 4).
_FRAME_DECIMALS = 6


def wanted(args: argparse.Namespace) -> bool:
    """A timeline run: --window or --stride given, or an input is a stream."""
    return (getattr(args, "window", None) is not None or getattr(args, "stride", None) is not None
            or any(_decode.is_stream(v) for v in args.videos))


def default_window(num_frames: int, sampling_rate: int, target_fps: Optional[float]) -> float:
    """The span of the model's training clip in seconds: num_frames * sampling_rate frames at the preset's
    target fps (30 when the preset counts frames as they come): 2.13 s for R50 8x8 (32 x 2 / 30)."""
    return num_frames * sampling_rate / float(target_fps or 30)


def _frame_at(seconds: float, fps: float) -> int:
    """The first frame whose time (number / fps) is at least `seconds`."""
    return math.ceil(round(seconds * fps, _FRAME_DECIMALS))


class Windows:
    """The sliding windows of one video of `fps` frames per second; total: its frame count (None: a stream,
    unbounded). Window k: seconds [k * stride, k * stride + window), frames [first, stop) of it, its clip
    indices(k). A video of fewer frames than the first window has one window, of all its frames."""

    def __init__(self, fps: float, window: float, stride: float, num_frames: int, total: Optional[int] = None):
        if not (fps and math.isfinite(fps) and fps > 0):
            raise ValueError(f"Windows: fps: expected a positive frame rate, got {fps!r}")
        self.fps, self.window, self.stride, self.num_frames, self.total = fps, window, stride, num_frames, total
        self.whole = total is not None and self._span(0)[1] > total
        if total is None:
            self.count: Optional[int] = None
        elif self.whole:
            self.count = 1
        else:  # the last k whose frames all exist: near (duration - window) / stride, made exact by span()
            k = max(0, int((total / fps - window) / stride))
            while self._span(k + 1)[1] <= total:
                k += 1
            while k > 0 and self._span(k)[1] > total:
                k -= 1
            self.count = k + 1

    def _span(self, k: int) -> Tuple[int, int]:
        start = k * self.stride
        first = _frame_at(start, self.fps)
        return first, max(first + 1, _frame_at(start + self.window, self.fps))  # at least one frame

    def has(self, k: int) -> bool:
        return self.count is None or k < self.count

    def span(self, k: int) -> Tuple[int, int]:
        """Frames [first, stop) of window k."""
        return (0, self.total) if self.whole else self._span(k)

    def seconds(self, k: int) -> Tuple[float, float]:
        """(start, end) of window k in seconds."""
        if self.whole:
            return 0.0, self.total / self.fps
        return k * self.stride, k * self.stride + self.window

    def indices(self, k: int) -> torch.Tensor:
        """The clip of window k: num_frames frame numbers, uniformly over its frames (int64 [T])."""
        first, stop = self.span(k)
        n = stop - first
        return first + torch.linspace(0, n - 1, self.num_frames).clamp(0, n - 1).long()

    def bound(self) -> int:
        """The most frames the frame map holds: ceil(window / stride) windows open at once, num_frames each."""
        return (1 if self.whole else math.ceil(round(self.window / self.stride, _FRAME_DECIMALS))) * self.num_frames


class WindowClip(NamedTuple):
    k: int
    start: float
    end: float
    frames: torch.Tensor   # uint8 [V', H, W, 3]: the window clip's distinct frames in order
    index: torch.Tensor    # int64 [T]: the clip as indices into frames
    numbers: torch.Tensor  # int64 [V']: the frame numbers of frames


class Assembler:
    """Frames in, complete windows out: holds, as RGB, only the frames that an open window samples."""

    def __init__(self, windows: Windows) -> None:
        self.windows = windows
        self.next_k = 0  # the next window to open (open: its first frame has been reached)
        self.open: "collections.deque" = collections.deque()  # (k, numbers, indices, stop), in order of k
        self.users: Counter[int] = collections.Counter()
        self.held: Dict[int, np.ndarray] = {}
        self.peak = 0     # the most frames held at once
        self.frames = 0   # frames fed
        self.converted = 0
        self._rgb = _decode.RGB()

    @property
    def finished(self) -> bool:
        """Every window of a file is out: the frames after the last one are not needed."""
        return not self.open and not self.windows.has(self.next_k)

    def feed(self, number: int, frame) -> List[WindowClip]:
        """Frame `number` (the next in order, an av.VideoFrame): the windows it completes."""
        self.frames += 1
        w = self.windows
        while w.has(self.next_k) and w.span(self.next_k)[0] <= number:
            k = self.next_k
            indices = w.indices(k)
            numbers = sorted(set(indices.tolist()))
            self.users.update(numbers)
            self.open.append((k, numbers, indices, w.span(k)[1]))
            self.next_k += 1
        if self.users.get(number) and number not in self.held:
            self.held[number] = self._rgb(frame)
            self.converted += 1
            self.peak = max(self.peak, len(self.held))
        done = []
        while self.open and self.open[0][3] - 1 <= number:
            k, numbers, indices, _ = self.open.popleft()
            frames = torch.from_numpy(np.stack([self.held[n] for n in numbers]))
            for n in numbers:
                self.users[n] -= 1
                if self.users[n] == 0:
                    del self.users[n]
                    self.held.pop(n, None)
            numbers_t = torch.tensor(numbers)
            start, end = w.seconds(k)
            done.append(WindowClip(k, start, end, frames, torch.searchsorted(numbers_t, indices), numbers_t))
        return done


class _Closed(Exception):
    """The consumer went away: the decoding thread stops."""


class WindowQueue:
    """Complete windows (and each video's start / end / error) from the decoding thread to the model.

    At most `max_windows` windows and `max_bytes` bytes of their frames wait (one always may). drop=False
    (files): the decoder waits for room. drop=True (streams): the oldest waiting window is dropped instead,
    and counted."""

    def __init__(self, max_windows: int, drop: bool, max_bytes: int = DECODE_AHEAD_BYTES) -> None:
        self.max_windows, self.max_bytes, self.drop = max(1, max_windows), max_bytes, drop
        self._items: "collections.deque" = collections.deque()
        self._cond = threading.Condition()
        self.windows = 0  # windows waiting
        self.bytes = 0
        self.peak_windows = 0
        self.dropped = 0
        self.closed = False

    def _full(self, nbytes: int) -> bool:
        return self.windows > 0 and (self.windows >= self.max_windows or self.bytes + nbytes > self.max_bytes)

    def put(self, kind: str, path: str, payload=None) -> None:
        nbytes = payload.frames.nbytes if kind == "window" else 0
        with self._cond:
            if kind == "window":
                while self._full(nbytes) and not self.closed:
                    if self.drop:
                        self._drop_oldest()
                    else:
                        self._cond.wait()
                self.windows += 1
                self.bytes += nbytes
                self.peak_windows = max(self.peak_windows, self.windows)
            if self.closed:
                raise _Closed()
            self._items.append((kind, path, payload))
            self._cond.notify_all()

    def _drop_oldest(self) -> None:
        for i, (kind, _, payload) in enumerate(self._items):
            if kind == "window":
                del self._items[i]
                self.windows -= 1
                self.bytes -= payload.frames.nbytes
                self.dropped += 1
                return

    def get(self, block: bool = True):
        """The next item, None when none is ready (block=False) or after the decoder's ("done", ...)."""
        with self._cond:
            while not self._items:
                if not block:
                    return None
                self._cond.wait()
            item = self._items.popleft()
            if item[0] == "window":
                self.windows -= 1
                self.bytes -= item[2].frames.nbytes
            self._cond.notify_all()
            return item

    def window_ready(self) -> bool:
        with self._cond:
            return bool(self._items) and self._items[0][0] == "window"

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._items.clear()
            self._cond.notify_all()


def decode_windows(videos: List[str], make_windows: Callable[[float, Optional[int]], Windows], out: WindowQueue,
                   assemblers: Optional[list] = None,
                   stream_timeout: Optional[float] = _decode.DEFAULT_STREAM_TIMEOUT) -> None:
    """The decoding thread: each video opened in order, every frame decoded once, its complete windows put
    into `out` between ("open", path, (fps, windows)) and ("end", path, stats) or ("error", path, exc); then
    ("done", "", None). stream_timeout: a live URL's seconds without data (_decode.LiveStream)."""
    try:
        for path in videos:
            started = time.perf_counter()
            source = None
            try:
                source = _decode.open_in_order(path, "classify", stream_timeout)
                if source.fps is None:
                    raise _decode.VideoDecodeError(f"classify: {path}: the stream gives no frame rate, so its "
                                                   "windows (seconds) have no frames")
                windows = make_windows(source.fps, source.num_frames)
                assembler = Assembler(windows)
                if assemblers is not None:
                    assemblers.append(assembler)
                out.put("open", path, (source.fps, windows))
                waited = 0.0
                for number, frame in source.frames(0, False):
                    for clip in assembler.feed(number, frame):
                        t = time.perf_counter()
                        out.put("window", path, clip)
                        waited += time.perf_counter() - t
                    if assembler.finished:
                        break
                if not assembler.frames:
                    raise _decode.VideoDecodeError(f"classify: {path}: no frame could be decoded")
                out.put("end", path, {"frames": assembler.frames, "seconds": time.perf_counter() - started - waited,
                                      "peak_frames_held": assembler.peak})
            except _Closed:
                raise
            except Exception as exc:  # noqa: BLE001 - the video's line says why; the others go on
                out.put("error", path, exc)
            finally:
                if source is not None:
                    source.close()
        out.put("done", "", None)
    except _Closed:
        pass


@dataclass
class _Timeline:
    """One video's (or stream's) windows on their way through the model."""

    path: str
    live: bool
    fps: Optional[float] = None
    windows: Optional[Windows] = None
    pending: int = 0          # windows packed, not yet scored
    emitted: int = 0
    last_k: int = -1
    ended: bool = False
    error: Optional[BaseException] = None
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0      # packing and its share of the forwards (the decoding thread adds its own at the end)


@dataclass
class _Window:
    """One window in the batcher: _Batcher's view owner (views: its crops)."""

    timeline: _Timeline
    clip: WindowClip
    views: int
    seconds: float = 0.0
    scores: Optional[torch.Tensor] = None
    scored: int = 0
    failed: bool = False
    features: List[torch.Tensor] = field(default_factory=list)  # --features: each crop's concat row, in order


class _WindowBatcher(_Batcher):
    """classify's batcher with windows as the owners of the views. A window whose packing failed is still
    emitted once its packed crops are scored: emit() counts it off its timeline (whose line is the error)."""

    emit_failed = True


# ----------------------------------------------------------------------------------------------- resume

@dataclass
class _Plan:
    settings: Dict[str, object]
    pending: List[str]
    done: int = 0
    redo: Set[str] = field(default_factory=set)  # keys whose lines are removed first (partial, or --retry-failed)
    partial: int = 0
    overwrite: bool = False

    def message(self, total: int, output: str) -> Optional[str]:
        if self.overwrite:
            return f"--overwrite: {output} started over"
        if not self.done and not self.redo:
            return None
        parts = [f"resuming: {self.done} of {total} timelines already complete in {output}"]
        if self.partial:
            parts.append(f"{self.partial} partial one(s) redone (their lines removed)")
        if len(self.redo) > self.partial:
            parts.append(f"{len(self.redo) - self.partial} failed one(s) run again")
        return ", ".join(parts)


def is_end_line(record: dict) -> bool:
    """A timeline's last line: {"video", "windows": N, ...} (window lines have "window")."""
    return "windows" in record and "window" not in record


def _read_lines(path: str) -> List[dict]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    records = []
    for line in data.split(b"\n")[:-1]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("video"), str):
            records.append(record)
    return records


def plan(args: argparse.Namespace, arch: str, videos: List[str], results: Optional[ResultsFile], live: bool) -> _Plan:
    """What this run does with --output: a video whose timeline is complete there (its end line, or an error
    line) is skipped; a partial one (window lines, no end line: a stopped run) is redone after its lines are
    removed; --retry-failed redoes those with an error line; a stream is never resumed (a FILE already
    holding lines of it needs --overwrite). Other settings are refused as in classify."""
    settings = resume.run_settings(args, arch)
    overwrite = bool(getattr(args, "overwrite", False))
    if results is None or overwrite:
        return _Plan(settings, list(videos), overwrite=overwrite)
    records = _read_lines(results.path)
    other = [r for r in records if r.get("settings") != settings]
    if other:
        raise UsageError(f"--output {results.path}: {len(other)} of its {len(records)} lines were made with other "
                         f"settings ({resume._differences(other[0].get('settings'), settings)}); give the same "
                         "options, another --output, or --overwrite to start over")
    ended: Dict[str, dict] = {}
    seen: Set[str] = set()
    for record in records:
        key = record_key(record)
        seen.add(key)
        if is_end_line(record) or "error" in record:
            ended.setdefault(key, record)
    if live:
        stream = videos[0]
        if video_key(stream) in seen:
            raise UsageError(f"--output {results.path}: already holds a timeline of {stream}; a stream is not "
                             "resumed: pass --overwrite to start the file over, or another --output")
        return _Plan(settings, list(videos))
    retry = bool(getattr(args, "retry_failed", False))
    p = _Plan(settings, [])
    for video in videos:
        key = video_key(video)
        end = ended.get(key)
        if end is not None and not (retry and "error" in end):
            p.done += 1
            continue
        p.pending.append(video)
        if key in seen:
            p.redo.add(key)
            p.partial += end is None
    return p


# ----------------------------------------------------------------------------------------------- the run

def _window_arg(args: argparse.Namespace, live: bool) -> None:
    if args.stride is not None and args.window is None and not live:
        raise UsageError(f"--stride {args.stride:g}: needs --window SEC (a file's timeline is asked for with "
                         "--window; --stride defaults to it)")
    views = getattr(args, "views", None)
    if views == 30 or (args.clips or 1) > 1:
        what = "--views 30" if views == 30 else f"--clips {args.clips}"
        raise UsageError(f"{what}: a timeline scores one clip per window (the window is the temporal view); "
                         "leave it out (--crops 3 still gives three spatial views per window)")
    if args.sampling != "preset":
        raise UsageError(f"--sampling {args.sampling}: a window's frames are sampled uniformly over it; leave "
                         "--sampling out of a timeline")
    if args.ground_truth is not None:
        raise UsageError("--ground-truth: scores one prediction per video; a timeline has one per window")


def feature_key(path: str, k: int) -> str:
    """The archive key of window k's array: the video's key (its real path; a stream's name as given) and
    the window number, e.g. /data/match.mp4@12."""
    return f"{video_key(path)}@{k}"


def run(args: argparse.Namespace, debug: bool) -> int:
    """classify's timeline mode (see the module doc); the options were parsed by classify's parser."""
    import slowfast_kernels as sk
    import slowfast_reference as R

    dist = _Distributed()
    if dist.active:
        raise UsageError(f"--window: a timeline runs in one process, not under torchrun (WORLD_SIZE "
                         f"{dist.world_size}); run it without torchrun")
    device = options.check_device(args.device)
    options.check_backend(args.backend, device)
    videos = expand_inputs(args.videos, warn=lambda msg: print(msg, file=sys.stderr, flush=True))
    streams = [v for v in videos if _decode.is_stream(v)]
    if streams and len(videos) > 1:
        raise UsageError(f"{streams[0]}: a stream must be the only input (got {len(videos)} inputs)")
    live = bool(streams)
    _window_arg(args, live)
    features_path = feature_files.check_options(args)
    if live and args.retry_failed:
        raise UsageError(f"--retry-failed: {streams[0]} is a stream, which is not resumed")
    options.check_geometry(args, options.first_existing(videos))
    source = options.ModelSource.resolve(args, debug)
    options.check_top(args.top, source.num_classes)
    proto = test_protocol.resolve(args, source)
    labels = test_protocol.read_labels(args.labels, source.num_classes)
    num_frames = R.models.CONFIGS[source.arch].num_frames
    sampling_rate = options.SAMPLING_RATE[source.arch]
    if args.window is None:
        args.window = default_window(num_frames, sampling_rate, proto.preset.target_fps)
    if args.stride is None:
        args.stride = args.window
    output = resume.output_path(args)
    results = ResultsFile(output) if output else None
    p = plan(args, source.arch, videos, results, live)
    features = None
    if features_path is not None:
        features = feature_files.FeaturesFile(features_path)
        feature_files.check_resume(features, p.settings, (), resuming=results is not None and not p.overwrite)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if results is not None:
        if p.overwrite:
            results.start_over()
        elif p.redo:
            results.drop(p.redo)
        message = p.message(len(videos), results.path)
        if message:
            say(message)
    if source.detected:
        say(f"checkpoint {args.checkpoint}: {source.arch} ({source.format} layout, {source.num_classes} classes)")
    if source.state is None:
        say(f"warning: {RANDOM_WEIGHTS}")
    if not p.pending:
        return EXIT_OK
    if features is not None:  # as classify's: kept and resumed with --output, started over without one
        if results is not None and not p.overwrite:
            features.prepare()
        else:
            features.start_over()
        # each window's array has a row per spatial crop: (temporal clip 0, crop)
        features.open(p.settings, {feature_files.VIEW_INDEX: np.array([[0, s] for s in proto.crop_indices],
                                                                      dtype=np.int64).reshape(-1, 2)})
    if results is not None:
        results.open()
    torch.manual_seed(0)  # without a checkpoint, the same random weights as classify's
    model = test_protocol.build_model(source, proto, args.train_crop, args.non_strict, say)
    source.state = None
    cfg = model.config
    fused = sk.fuse(model.to(device), dtype=options.DTYPES[args.dtype], backend=args.backend)
    del model
    try:
        failed = _run(args, device, p, fused, cfg, source, labels, results, proto, live, say, features)
    finally:
        if results is not None:
            results.close()
        if features is not None:
            features.close()
    return EXIT_VIDEOS_FAILED if failed else EXIT_OK


def _run(args, device, p: _Plan, fused, cfg, source, labels, results, proto, live: bool, say, features) -> int:
    settings = p.settings

    def write(record: dict) -> None:
        record = {"video": record["video"], "resolved": video_key(record["video"]), **record, "settings": settings}
        if results is not None:
            results.write(record)
        else:
            sys.stdout.buffer.write(encode(record))
            sys.stdout.flush()

    def finish(tl: _Timeline) -> None:
        if tl.error is not None:
            write({"video": tl.path, "error": _error_text(tl.error)})
            return
        record = {"video": tl.path, "windows": tl.emitted, "frames": tl.stats.get("frames"),
                  "fps": round(tl.fps, 6) if tl.fps else None, "window_s": args.window, "stride_s": args.stride,
                  "arch": source.arch, "checkpoint": args.checkpoint,
                  "seconds": round(tl.seconds + tl.stats.get("seconds", 0.0), 3)}
        if live:
            record["dropped"] = queue.dropped
            say(f"{tl.path}: {tl.emitted} windows, {queue.dropped} dropped (the model fell behind the stream)"
                if queue.dropped else f"{tl.path}: {tl.emitted} windows, none dropped")
        if tl.emitted == 0:
            say(f"warning: {tl.path}: ended before its first window was complete ({tl.stats.get('frames')} frames)")
        write(record)

    def emit(window: _Window) -> None:
        tl, clip = window.timeline, window.clip
        tl.pending -= 1
        tl.seconds += window.seconds
        if tl.error is None:
            record = {"video": tl.path, "window": clip.k, "start": round(clip.start, 6), "end": round(clip.end, 6)}
            scores = None
            if not args.features_only:
                scores = finalize(window.scores, window.views, proto.preset.ensemble)
                top = scores.topk(args.top)
                record["top"] = [[labels[i], round(v, 6)] for v, i in zip(top.values.tolist(), top.indices.tolist())]
            if features is not None:  # the array before the line: a line always has its array
                key = feature_key(tl.path, clip.k)
                features.write(key, torch.stack(window.features).numpy())
                record["features"] = key
            record.update({"arch": source.arch, "checkpoint": args.checkpoint})
            record.update(proto.record_fields(scores, labels) if scores is not None else proto.view_fields())
            if live:
                record["dropped"] = clip.k - tl.last_k - 1  # windows skipped since the previous line
            if args.checkpoint is None:
                record["warning"] = RANDOM_WEIGHTS
            write(record)
            tl.emitted += 1
            tl.last_k = clip.k
        if tl.ended and tl.pending == 0:
            finish(tl)

    spatial = proto.crop_indices
    batcher = _WindowBatcher(fused, cfg, args, device, emit, proto)
    queue = WindowQueue(args.batch_size, drop=live)
    make = lambda fps, total: Windows(fps, args.window, args.stride, cfg.num_frames,  # noqa: E731
                                      None if live else total)
    decoder = threading.Thread(target=decode_windows, args=(p.pending, make, queue, None, args.stream_timeout),
                               name="timeline-decode", daemon=True)
    timelines: Dict[str, _Timeline] = {}
    failed = 0
    decoder.start()
    try:
        with torch.inference_mode():
            while True:
                kind, path, payload = queue.get()
                if kind == "done":
                    break
                tl = timelines.get(path)
                if tl is None:
                    tl = timelines[path] = _Timeline(path, live)
                if kind == "open":
                    tl.fps, tl.windows = payload
                elif kind == "window":
                    if tl.error is None:
                        _pack(batcher, tl, payload, spatial, device)
                    if live and not queue.window_ready():
                        batcher.run()  # a stream's window does not wait for a batch to fill
                else:  # "end" or "error"
                    if kind == "error":
                        tl.error = payload
                    else:
                        tl.stats = payload
                    failed += tl.error is not None
                    tl.ended = True
                    if tl.pending == 0:
                        finish(tl)
            batcher.run()
    finally:
        queue.close()
    return failed


def _pack(batcher: _WindowBatcher, tl: _Timeline, clip: WindowClip, spatial: List[int], device) -> None:
    window = _Window(tl, clip, len(spatial))
    frames, index = clip.frames.to(device, non_blocking=True), clip.index.to(device)
    tl.pending += 1
    added = 0
    try:
        for s in spatial:
            batcher.add(window, frames, index, s)
            added += 1
    except _VideoError as exc:  # frames this video cannot be packed from: its timeline ends in an error line
        tl.error = exc.__cause__ or exc
        window.views = added  # the crops already in the batch are scored, then the window goes unwritten
        if added == 0:
            tl.pending -= 1
        elif window.scored == added:  # they were scored already (the batch ran between two crops)
            batcher.emit(window)
