"""Video decoding with PyAV: the frames a SlowFast clip needs, as uint8 [V, H, W, 3] RGB.

    clip = read_video("video.mp4", num_frames=32, sampling_rate=2)          # the centre clip
    slow, fast = slowfast_kernels.pack_pathways(clip.frames, clip.index, alpha=4, size=256, crop=256)

read_video decodes only the frames between the clip's first and last index when the container can
seek (it seeks to the keyframe before the first one); clip.index holds the clip's frame indices
(PySlowFast's sampling, see temporal_indices) relative to clip.frames, so the temporal gather happens
in pack_pathways' single pass. probe_video gives frame count, fps and size without decoding the video;
kinetics_400_labels the class names of Kinetics-400 checkpoints.
PyAV is imported on first use: `import slowfast_kernels` works without it.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from .ops.pack_pathways import temporal_indices

PathLike = Union[str, "os.PathLike[str]"]


class VideoDecodeError(RuntimeError):
    """The file exists but is not a decodable video (corrupt, truncated, no video stream)."""


class VideoInfo(NamedTuple):
    num_frames: int        # frames in the video stream
    fps: float             # average frame rate
    height: int
    width: int
    duration_s: Optional[float]


class DecodedClip(NamedTuple):
    frames: torch.Tensor   # uint8 [V', H, W, 3]: the decoded frames, video frames start_frame ...
    index: torch.Tensor    # int64 [T]: the clip's frames, as indices into `frames` (all frames when T is None)
    fps: float
    start_frame: int       # video frame number of frames[0]
    num_video_frames: int  # frames in the whole video


def kinetics_400_labels() -> List[str]:
    """The 400 Kinetics-400 class names; list index = class id of PySlowFast / PyTorchVideo checkpoints."""
    return (Path(__file__).parent / "data" / "kinetics_400_labels.txt").read_text().splitlines()


def _import_av():
    try:
        import av
    except ImportError as exc:
        raise ImportError("slowfast_kernels.io needs PyAV: pip install av") from exc
    return av


def _decode_errors(av) -> Tuple[type, ...]:
    return (av.error.FFmpegError, OSError, ValueError)


class _Stream:
    """An open container, its video stream and the pts <-> frame number map (constant frame rate)."""

    def __init__(self, path: PathLike):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise VideoDecodeError(f"read_video: {self.path}: is a directory, not a video file")
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"read_video: {self.path}: no such file")
        self.av = av = _import_av()
        try:
            self.container = av.open(self.path)
        except _decode_errors(av) as exc:
            raise VideoDecodeError(f"read_video: {self.path}: not a readable video file ({exc})") from exc
        if not self.container.streams.video:
            self.container.close()
            raise VideoDecodeError(f"read_video: {self.path}: the file has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.rate = Fraction(rate) if rate else None
        self.fps = float(rate) if rate else None
        self.time_base = self.stream.time_base
        self.start_pts = self.stream.start_time or 0

    def close(self) -> None:
        self.container.close()

    def frame_number(self, pts: Optional[int], fallback: int) -> int:
        if pts is None or self.rate is None or self.time_base is None:
            return fallback
        return round((pts - self.start_pts) * self.time_base * self.rate)

    def frames(self, seek_to: int = 0) -> Iterator[Tuple[int, "object"]]:
        """(frame number, av.VideoFrame) in presentation order, from the keyframe before `seek_to`."""
        count = 0
        if seek_to > 0 and self.rate and self.time_base:
            target = self.start_pts + int(seek_to / self.rate / self.time_base)
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
            count = None  # frame numbers come from pts after a seek
        try:
            for frame in self.container.decode(self.stream):
                if count is None:
                    number = self.frame_number(frame.pts, -1)
                    if number < 0:
                        raise VideoDecodeError(f"read_video: {self.path}: frames without timestamps cannot be "
                                               "sought; pass seek=False")
                else:
                    number = self.frame_number(frame.pts, count)
                    count += 1
                yield number, frame
        except _decode_errors(self.av) as exc:
            raise VideoDecodeError(f"read_video: {self.path}: decoding failed, the file is corrupt or truncated "
                                   f"({exc})") from exc

    def num_frames(self) -> int:
        if self.stream.frames > 0:
            return int(self.stream.frames)
        # No frame count in the header: count the packets (demuxing only, no decoding).
        n = sum(1 for packet in self.container.demux(self.stream) if packet.size > 0)
        self.container.seek(0, stream=self.stream, backward=True, any_frame=False)
        if n == 0:
            raise VideoDecodeError(f"read_video: {self.path}: the video stream holds no frames")
        return n


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, fps, size and duration from the container, without decoding frames."""
    s = _Stream(path)
    try:
        n = s.num_frames()
        duration = float(s.stream.duration * s.time_base) if s.stream.duration and s.time_base else None
        return VideoInfo(n, s.fps or 0.0, s.stream.height, s.stream.width, duration)
    finally:
        s.close()


def _to_tensor(frames: List[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames))


def read_video(path: PathLike, *, num_frames: Optional[int] = None, sampling_rate: int = 1, clip_idx: int = 0,
               num_clips: int = 1, generator: Optional[torch.Generator] = None, seek: bool = True,
               target_fps: Optional[float] = 30, frame_index=None) -> DecodedClip:
    """Decode a video, or only the frames of one clip.

    num_frames None: every frame; clip.index = arange(V). Otherwise the clip of num_frames frames
    `sampling_rate` apart at target_fps, number clip_idx of num_clips spread uniformly over the video
    (clip_idx -1: a random start), exactly PySlowFast's temporal sampling (temporal_indices with the
    stream's average frame rate as fps: a 25 fps video spans 25/30 as many of its frames per clip as a
    30 fps one); target_fps=None samples every `sampling_rate`-th frame whatever the rate. A video shorter
    than the clip repeats its last frame. frame_index: another sampling rule, a callable (frame count, fps)
    -> absolute frame indices [T] (slowfast_kernels.sampling.frame_index_rule), replacing num_frames,
    sampling_rate, clip_idx and num_clips. Raises FileNotFoundError for a missing file and VideoDecodeError
    for a file that is not a video, has no video stream, or is corrupt or truncated.
    """
    s = _Stream(path)
    try:
        if num_frames is None and frame_index is None:
            frames = [f.to_ndarray(format="rgb24") for _, f in s.frames()]
            if not frames:
                raise VideoDecodeError(f"read_video: {s.path}: the video stream holds no frames")
            expected = int(s.stream.frames)
            if expected > 0 and len(frames) < expected - _slack(expected):
                raise VideoDecodeError(f"read_video: {s.path}: truncated: decoded {len(frames)} of the "
                                       f"{expected} frames the container lists")
            return DecodedClip(_to_tensor(frames), torch.arange(len(frames)), s.fps or 0.0, 0, len(frames))

        total = s.num_frames()
        fps = s.fps if target_fps is not None else None
        if frame_index is not None:
            index = torch.as_tensor(frame_index(total, s.fps), dtype=torch.int64)
        else:
            index = temporal_indices(total, num_frames, sampling_rate, clip_idx, num_clips, generator, fps=fps,
                                     target_fps=target_fps if target_fps is not None else 30)
        first, last = int(index.min()), int(index.max())
        window = _decode_window(s, first, last, seek)
        if window is None and seek:  # the seek landed after `first` (imprecise index): decode from the start
            window = _decode_window(_reopen(s), first, last, False)
        if window is None:
            raise VideoDecodeError(f"read_video: {s.path}: truncated: frame {first} of the {total} frames the "
                                   "container lists could not be decoded")
        got_last, frames = window
        if got_last < last:
            if got_last < total - 1 - _slack(total):
                raise VideoDecodeError(f"read_video: {s.path}: truncated: decoding ended at frame {got_last}, the "
                                       f"clip needs frame {last} of the {total} the container lists")
            frames += [frames[-1]] * (last - got_last)  # PySlowFast's clamp to the last decoded frame
        return DecodedClip(_to_tensor(frames), index - first, s.fps or 0.0, first, total)
    finally:
        s.close()


def _slack(total: int) -> int:
    """Frames a header may over-count (edit lists, a dropped last frame) before a short stream is an error."""
    return max(1, total // 100)


def _reopen(s: _Stream) -> _Stream:
    s.container.seek(0, stream=s.stream, backward=True, any_frame=False)
    return s


def _decode_window(s: _Stream, first: int, last: int, seek: bool):
    """(last frame number decoded, frames first..last) or None when frame `first` was not reached.

    A frame number missing from the stream (a dropped or variable-rate frame) takes the previous frame.
    """
    frames: List[np.ndarray] = []
    number = -1
    for number, frame in s.frames(first if seek else 0):
        if number < first:
            continue
        if not frames and number > first:
            return None
        while first + len(frames) < min(number, last + 1):
            frames.append(frames[-1])
        if number <= last:
            frames.append(frame.to_ndarray(format="rgb24"))
        if number >= last:
            break
    if not frames:
        return None
    return min(number, last), frames


def write_video(path: PathLike, frames: torch.Tensor, fps: int = 30, crf: int = 18) -> Path:
    """Encode uint8 RGB frames [V, H, W, 3] (H, W even) to an H.264 MP4 with PyAV; returns the path."""
    av = _import_av()
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video: frames: expected uint8 [V, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"write_video: frames: H.264 (yuv420p) needs even H and W, got {h}x{w}")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames.numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def synthetic_video(num_frames: int = 64, height: int = 256, width: int = 340, seed: int = 0) -> torch.Tensor:
    """Moving coloured rectangles over a gradient: uint8 [V, H, W, 3], every frame different (demo, tests)."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(height).view(-1, 1)
    xs = torch.arange(width).view(1, -1)
    base = torch.stack([xs.expand(height, width) * 120 // width, ys.expand(height, width) * 120 // height,
                        torch.full((height, width), 40)], dim=-1)
    boxes = [(torch.randint(0, height // 2, (1,), generator=g).item(), torch.randint(0, width // 2, (1,), generator=g).item(),
              torch.randint(0, 256, (3,), generator=g), torch.randint(-6, 7, (2,), generator=g)) for _ in range(3)]
    frames = base.unsqueeze(0).repeat(num_frames, 1, 1, 1)
    bh, bw = height // 4, width // 4
    for t in range(num_frames):
        for y0, x0, colour, (vy, vx) in boxes:
            y = (y0 + int(vy) * t) % (height - bh)
            x = (x0 + int(vx) * t) % (width - bw)
            frames[t, y:y + bh, x:x + bw] = colour
    return frames.to(torch.uint8)
