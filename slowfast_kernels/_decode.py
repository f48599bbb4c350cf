"""The PyAV decoding behind slowfast_kernels.io: frame counts, exact frame numbers, clips in one pass.

Frame numbers are positions in presentation order among the frames the decoder delivers: frame k is the
k-th frame decoded from the start of the stream, whatever the timestamps say (variable frame rate,
MPEG-TS parts joined with cat whose timestamps restart, raw elementary streams without timestamps). The
frame count is the demuxer's packet count, less the packets an edit list discards (an MP4 trimmed by
stream copy lists 90 samples of which 60 are presented), so it is known without decoding. After a seek,
a frame's number is the rank of its pts among the packets' pts, which is exact only on one timeline with
unique timestamps: other streams are decoded from the start.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

# (num_video_frames, fps or None) -> the clips' frame indices, one int64 [T] tensor per clip, in the order
# the clips are wanted (io.pyslowfast_clips is PySlowFast's rule).
ClipSampler = Callable[[int, Optional[float]], Sequence[torch.Tensor]]


class VideoDecodeError(RuntimeError):
    """The file exists but is not a decodable video (corrupt, truncated, no video stream)."""


class _NoBudget:
    """The memory budget of a reader alone: nothing to wait for."""

    def acquire(self, nbytes: int) -> None:
        pass

    def release(self, nbytes: int) -> None:
        pass


class _SeekMiss(Exception):
    """The frames after a seek do not carry the timestamps the demuxer listed: decode from the start."""


def import_av():
    try:
        import av
    except ImportError as exc:
        raise ImportError("slowfast_kernels.io needs PyAV: pip install av") from exc
    return av


def slack(total: int) -> int:
    """Frames a container index may list beyond the packets present before the file counts as truncated."""
    return max(1, total // 100)


class Stream:
    """An open container, its first video stream, its frame count and the pts of every frame in order."""

    def __init__(self, path, who: str = "read_video"):
        self.path, self.who = os.fspath(path), who
        if os.path.isdir(self.path):
            raise VideoDecodeError(f"{who}: {self.path}: is a directory, not a video file")
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{who}: {self.path}: no such file")
        self.av = import_av()
        self.errors = (self.av.error.FFmpegError, OSError, ValueError)
        self._open()
        self._index()
        self._open()  # a fresh demuxer rather than a seek back: raw elementary streams cannot seek

    def _open(self) -> None:
        if getattr(self, "container", None) is not None:
            self.container.close()
        try:
            self.container = self.av.open(self.path)
        except self.errors as exc:
            raise VideoDecodeError(f"{self.who}: {self.path}: not a readable video file ({exc})") from exc
        if not self.container.streams.video:
            self.container.close()
            raise VideoDecodeError(f"{self.who}: {self.path}: the file has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"

    def _index(self) -> None:
        """Count the frames and collect their pts from the packets (demuxing only, no decoding)."""
        pts: List[Optional[int]] = []
        packets, one_timeline, last_dts = 0, True, None
        try:
            for packet in self.container.demux(self.stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                packets += 1
                if packet.dts is not None:
                    one_timeline &= last_dts is None or packet.dts > last_dts  # cat-joined TS: dts restart
                    last_dts = packet.dts
                if not packet.is_discard:  # an edit list hides it: it is decoded but never presented
                    pts.append(packet.pts)
        except self.errors as exc:
            raise VideoDecodeError(f"{self.who}: {self.path}: demuxing failed, the file is corrupt or truncated "
                                   f"({exc})") from exc
        if not pts:
            raise VideoDecodeError(f"{self.who}: {self.path}: the video stream holds no frames")
        self.num_frames = len(pts)
        timed = None not in pts
        # pts -> frame number for seeking: only on one timeline with unique timestamps.
        self.frame_pts = sorted(pts) if timed and one_timeline and len(set(pts)) == len(pts) else None
        if timed:
            rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        else:  # no timestamps (raw .h264): the demuxer's rate is its 25 fps default, the codec's is real
            rate = self.stream.codec_context.framerate or self.stream.guessed_rate or self.stream.average_rate
        self.fps = float(rate) if rate else None
        self.time_base = self.stream.time_base
        duration = self.stream.duration
        self.duration_s = float(duration * self.time_base) if duration and self.time_base else None
        listed = int(self.stream.frames)
        if listed > 0 and packets < listed - slack(listed) and self._ends_early(pts if timed else None, listed):
            raise VideoDecodeError(f"{self.who}: {self.path}: truncated: the container lists {listed} frames, "
                                   f"the file holds {packets}")

    def _ends_early(self, pts: Optional[List[int]], listed: int) -> bool:
        """Fewer packets than the index lists: a cut file, unless an edit list made the demuxer skip the
        packets before its start (then the packets still reach the end of the stream's duration)."""
        if pts is None or not self.stream.duration or not self.time_base or not self.fps:
            return True
        end = (self.stream.start_time or 0) + self.stream.duration
        frames_short = float((end - max(pts)) * self.time_base) * self.fps - 1
        return frames_short > slack(listed)

    def close(self) -> None:
        self.container.close()

    def failed(self, exc: BaseException) -> VideoDecodeError:
        return VideoDecodeError(f"{self.who}: {self.path}: decoding failed, the file is corrupt or truncated "
                                f"({exc})")

    def frames(self, first: int, seek: bool) -> Iterator[Tuple[int, "object"]]:
        """(frame number, av.VideoFrame) in presentation order, every frame from `first` on (and maybe some
        before it). seek: start at the keyframe before frame `first` where the timestamps allow it; raises
        _SeekMiss (before yielding frame `first`) when the decoded frames contradict the demuxer's pts."""
        try:
            if seek and first > 0 and self.frame_pts is not None:
                yield from self._frames_after_seek(first)
            else:
                for number, frame in enumerate(self.container.decode(self.stream)):
                    yield number, frame
        except self.errors as exc:
            raise self.failed(exc) from exc

    def _frames_after_seek(self, first: int) -> Iterator[Tuple[int, "object"]]:
        self.container.seek(self.frame_pts[first], stream=self.stream, backward=True, any_frame=False)
        rank = {p: k for k, p in enumerate(self.frame_pts)}
        expected = first
        for frame in self.container.decode(self.stream):
            number = rank.get(frame.pts)
            if number is None or number > expected:  # unknown pts, landed after `first`, or a frame missing
                raise _SeekMiss()
            if number < first:  # the keyframe's GOP before `first`
                continue
            if number < expected:
                raise _SeekMiss()
            expected = number + 1
            yield number, frame


class _Collector:
    """Frames that clips still need, held as RGB arrays; a clip leaves as one tensor once all its frames
    are in. `budget` is told every byte held here (acquire before, release after)."""

    def __init__(self, clips: Sequence[torch.Tensor], budget):
        self.clips = [c.long() for c in clips]
        self.budget = budget
        self.numbers = [sorted(set(c.tolist())) for c in self.clips]
        self.users = Counter(n for numbers in self.numbers for n in numbers)
        self.held: Dict[int, np.ndarray] = {}
        self.next = 0
        self.last: Optional[Tuple[int, object]] = None
        self.rgb = RGB()

    @property
    def first_needed(self) -> int:
        return min(self.users) if self.users else 0

    def add(self, number: int, frame) -> None:
        self.last = (number, frame)
        if self.users.get(number) and number not in self.held:
            self.budget.acquire(frame.width * frame.height * 3)
            self.held[number] = self.rgb(frame)

    def ready(self, number: int) -> bool:
        return self.next < len(self.clips) and self.numbers[self.next][-1] <= number

    def pop(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frames uint8 [V', H, W, 3], index into them [T], frame numbers of the frames [V']), next clip."""
        i, numbers = self.next, self.numbers[self.next]
        self.next += 1
        h, w, _ = self.held[numbers[0]].shape
        self.budget.acquire(len(numbers) * h * w * 3)
        frames = torch.from_numpy(np.stack([self.held[n] for n in numbers]))
        for n in numbers:
            self.users[n] -= 1
            if self.users[n] == 0:
                del self.users[n]
                self.budget.release(self.held.pop(n).nbytes)
        numbers = torch.tensor(numbers)
        return frames, torch.searchsorted(numbers, self.clips[i]), numbers

    def clamp_to(self, last: int) -> None:
        """The stream ended at frame `last`: the clips left take the last decoded frame for later ones."""
        for i in range(self.next, len(self.clips)):
            self.clips[i] = self.clips[i].clamp(max=last)
            self.numbers[i] = sorted(set(self.clips[i].tolist()))
        users = Counter(n for numbers in self.numbers[self.next:] for n in numbers)
        for n in [n for n in self.held if n not in users]:
            self.budget.release(self.held.pop(n).nbytes)
        self.users = users
        if last in users and last not in self.held:
            self.add(*self.last)

    def release_all(self) -> None:
        for n in list(self.held):
            self.budget.release(self.held.pop(n).nbytes)


def read_clips(path, sample: ClipSampler, *, seek: bool = True, budget=None, who: str = "read_clips"
               ) -> Iterator[Tuple[torch.Tensor, torch.Tensor, int, float, int]]:
    """(frames, index, frame numbers, fps, frame count) per clip of `sample`, in one decoding pass.

    Only the frames some clip uses are converted to RGB and held, each until the last clip using it has
    left. When the stream ends before a frame a clip needs, the decoded frame count replaces the
    demuxer's and the clips are sampled again (a second pass) if none has left yet; otherwise the clips
    left take the last decoded frame in place of later ones (PySlowFast's decoder clamps likewise).
    """
    budget = budget if budget is not None else _NoBudget()
    s = Stream(path, who)
    try:
        total = s.num_frames
        clips = sample(total, s.fps)
        try:
            decoded = yield from _one_pass(s, clips, total, seek, budget)
        except _SeekMiss:  # raised before any clip left
            s._open()
            decoded = yield from _one_pass(s, clips, total, False, budget)
        if decoded is not None:  # every frame decoded, fewer than the demuxer listed: sample again
            s._open()
            clips = sample(decoded, s.fps)
            if (yield from _one_pass(s, clips, decoded, False, budget)) is not None:
                raise VideoDecodeError(f"{who}: {s.path}: the decoded frame count changed between two passes")
    finally:
        s.close()


def _one_pass(s: Stream, clips: Sequence[torch.Tensor], total: int, seek: bool, budget):
    """Yield the clips as they complete; return None, or the decoded frame count when the stream ended
    before the first clip was complete."""
    collector = _Collector(clips, budget)
    emitted, last = 0, -1
    try:
        for number, frame in s.frames(collector.first_needed, seek):
            last = number
            collector.add(number, frame)
            while collector.ready(number):
                emitted += 1
                yield collector.pop() + (s.fps or 0.0, total)
            if collector.next == len(clips):
                return None
        if last < 0:
            raise VideoDecodeError(f"{s.who}: {s.path}: no frame could be decoded")
        if not emitted:
            return last + 1
        collector.clamp_to(last)
        while collector.next < len(clips):
            yield collector.pop() + (s.fps or 0.0, total)
        return None
    except _SeekMiss:
        if emitted:
            raise VideoDecodeError(f"{s.who}: {s.path}: the frames after a seek contradict the container's "
                                   "timestamps; pass seek=False") from None
        raise
    finally:
        collector.release_all()


def read_all(path, who: str = "read_video") -> Tuple[torch.Tensor, float]:
    """Every decoded frame, uint8 [V, H, W, 3], and the fps."""
    s = Stream(path, who)
    try:
        rgb = RGB()
        frames = [rgb(f) for _, f in s.frames(0, False)]
        if not frames:
            raise VideoDecodeError(f"{who}: {s.path}: no frame could be decoded")
        return torch.from_numpy(np.stack(frames)), s.fps or 0.0
    finally:
        s.close()


# ----------------------------------------------------------------------------------------------- in order

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_stream(path) -> bool:
    """"-" (standard input) or a URL with a scheme (rtsp://, udp://, tcp://, http://, ...): a live input,
    read in order, frame count unknown. file:// URLs are files."""
    text = os.fspath(path) if not isinstance(path, str) else path
    return text == "-" or (bool(_SCHEME.match(text)) and not text.lower().startswith("file://"))


# Seconds a live URL may go without data (opening, or between reads) before it counts as gone.
DEFAULT_STREAM_TIMEOUT = 30.0


class LiveStream:
    """A live input PyAV can open: stdin ("-", read as ffmpeg's pipe:0) or a URL. Frames come in decoding
    order, numbered from the first one decoded; num_frames is None (unknown until the end), fps the
    codec's frame rate (else the stream's average, guessed or base rate), None when the stream gives none.

    timeout: seconds a URL may give no data, while opening (a listening URL: the wait for its sender counts)
    or between two reads, before it fails with a VideoDecodeError naming --stream-timeout; None or 0: wait
    forever. Standard input is read until it closes (a pipe's blocking read has no timeout)."""

    num_frames = None

    def __init__(self, url: str, who: str = "classify", timeout: Optional[float] = DEFAULT_STREAM_TIMEOUT):
        self.path, self.who = url, who
        self.timeout = timeout if timeout and url != "-" else None
        self.av = import_av()
        self.errors = (self.av.error.FFmpegError, OSError, ValueError)
        try:
            if url == "-":
                self.container = self.av.open("pipe:0")
            else:
                self.container = self.av.open(url, timeout=None if self.timeout is None else (self.timeout,) * 2)
        except self.errors as exc:
            if self._timed_out(exc):
                raise VideoDecodeError(f"{who}: {url}: no data within {self.timeout:g} s of opening "
                                       "(--stream-timeout)") from exc
            name = "standard input" if url == "-" else url
            raise VideoDecodeError(f"{who}: {name}: cannot open the stream ({exc})") from exc
        if not self.container.streams.video:
            self.container.close()
            raise VideoDecodeError(f"{who}: {url}: the stream has no video")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        rate = (self.stream.codec_context.framerate or self.stream.average_rate or self.stream.guessed_rate
                or self.stream.base_rate)
        self.fps = float(rate) if rate else None

    def _timed_out(self, exc: BaseException) -> bool:
        """exc is PyAV's interrupt of a read that waited past the timeout (FFmpeg's AVERROR_EXIT)."""
        return self.timeout is not None and isinstance(exc, self.av.error.ExitError)

    def frames(self, first: int = 0, seek: bool = False) -> Iterator[Tuple[int, "object"]]:
        """(frame number, av.VideoFrame) in order, every frame (first and seek are Stream's; a stream is never
        sought)."""
        number = -1
        try:
            for number, frame in enumerate(self.container.decode(self.stream)):
                yield number, frame
        except self.errors as exc:
            if self._timed_out(exc):
                raise VideoDecodeError(f"{self.who}: {self.path}: no data for {self.timeout:g} s after "
                                       f"{number + 1} frames (--stream-timeout)") from exc
            raise VideoDecodeError(f"{self.who}: {self.path}: decoding the stream failed ({exc})") from exc

    def close(self) -> None:
        self.container.close()


class RGB:
    """av.VideoFrame -> uint8 [H, W, 3] RGB through one swscale context kept from frame to frame (to_ndarray
    builds one per frame: 2.6 ms for a 32x32 frame on the 2-core machine, against 0.08 ms); equal pixels."""

    def __init__(self) -> None:
        self._reformatter = None

    def __call__(self, frame) -> np.ndarray:
        if self._reformatter is None:
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()
        return self._reformatter.reformat(frame, format="rgb24").to_ndarray()


def open_in_order(path, who: str = "classify", stream_timeout: Optional[float] = DEFAULT_STREAM_TIMEOUT):
    """A source of every frame in order, each decoded once: a LiveStream for "-" and URLs (stream_timeout:
    LiveStream's timeout), else a Stream (frame count and fps known from the demuxer). Both have .fps,
    .num_frames, .frames(0, False), .close()."""
    return LiveStream(path, who, stream_timeout) if is_stream(path) else Stream(path, who)
