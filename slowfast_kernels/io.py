"""Video decoding with PyAV: the frames a SlowFast clip needs, as uint8 [V, H, W, 3] RGB.

    clip = read_video("video.mp4", num_frames=32, sampling_rate=2)          # clip 0 of 1
    slow, fast = slowfast_kernels.pack_pathways(clip.frames, clip.index, alpha=4, size=256, crop=256)

read_video keeps only the frames the clip samples (clip.frames[clip.index] is the clip; seeking to the
keyframe before its first frame where the timestamps allow it), so the temporal gather happens in
pack_pathways' single pass; clip.frame_numbers[clip.index] are the video frame numbers. read_clips decodes the clips of several views in one pass, handing each over
as soon as its last frame is decoded. Frame k is the k-th frame the decoder delivers (variable frame
rate, restarted timestamps and edit lists included); the sampling rule (pyslowfast_clips) is a separate
function of the frame count and fps. probe_video gives frame count, fps and size without decoding;
kinetics_400_labels the class names of Kinetics-400 checkpoints.
PyAV is imported on first use: `import slowfast_kernels` works without it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, List, NamedTuple, Optional, Union

import numpy as np
import torch

from . import _decode
from ._decode import ClipSampler, VideoDecodeError
from .ops.pack_pathways import temporal_indices

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["ClipSampler", "DecodedClip", "VideoDecodeError", "VideoInfo", "kinetics_400_labels", "probe_video",
           "pyslowfast_clips", "read_clips", "read_video", "synthetic_video", "write_video"]


class VideoInfo(NamedTuple):
    num_frames: int        # frames the decoder delivers (the demuxer's packets, less those an edit list hides)
    fps: float             # average frame rate
    height: int
    width: int
    duration_s: Optional[float]


class DecodedClip(NamedTuple):
    frames: torch.Tensor   # uint8 [V', H, W, 3]: the clip's distinct frames in order (every frame when T is None)
    index: torch.Tensor    # int64 [T]: the clip's frames as indices into `frames`
    fps: float
    start_frame: int       # video frame number of frames[0] (the clip's first frame)
    num_video_frames: int  # frames in the whole video, as sampled
    frame_numbers: Optional[torch.Tensor] = None  # int64 [V']: video frame number of each of `frames`


def kinetics_400_labels() -> List[str]:
    """The 400 Kinetics-400 class names; list index = class id of PySlowFast / PyTorchVideo checkpoints."""
    return (Path(__file__).parent / "data" / "kinetics_400_labels.txt").read_text().splitlines()


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, fps, size and duration from the container and its packets, without decoding frames."""
    s = _decode.Stream(path, "probe_video")
    try:
        return VideoInfo(s.num_frames, s.fps or 0.0, s.stream.height, s.stream.width, s.duration_s)
    finally:
        s.close()


def pyslowfast_clips(num_frames: int, sampling_rate: int, clip_idx: Union[int, Iterable[int]] = 0,
                     num_clips: int = 1, generator: Optional[torch.Generator] = None,
                     target_fps: Optional[float] = 30) -> ClipSampler:
    """PySlowFast's temporal sampling as a ClipSampler: clip(s) `clip_idx` of `num_clips` (temporal_indices
    with the video's average fps; target_fps None: every `sampling_rate`-th frame whatever the rate)."""
    ids = [clip_idx] if isinstance(clip_idx, int) else list(clip_idx)

    def sample(num_video_frames: int, fps: Optional[float]) -> List[torch.Tensor]:
        rate = fps if target_fps is not None else None
        return [temporal_indices(num_video_frames, num_frames, sampling_rate, i, num_clips, generator, fps=rate,
                                 target_fps=target_fps if target_fps is not None else 30) for i in ids]

    return sample


def read_clips(path: PathLike, sampler: ClipSampler, *, seek: bool = True, budget=None) -> Iterator[DecodedClip]:
    """The clips `sampler` picks, decoded in one pass, each handed over once its last frame is decoded.

    sampler(num_video_frames, fps) gives one int64 [T] index tensor per clip (pyslowfast_clips, say); clips
    should come in order of their last frame (a clip waits for those before it). Only frames some clip uses
    are converted and held, each until the last clip using it has left: peak memory is the distinct frames
    of the clips that overlap in time, not their spans. `budget` (acquire(nbytes) / release(nbytes), called
    for every byte held here: classify's pipeline bounds its decoding threads with it) is optional; a
    caller passing one releases each clip's frames.nbytes when done with it. Raises as read_video.
    """
    for frames, index, numbers, fps, total in _decode.read_clips(path, sampler, seek=seek, budget=budget):
        yield DecodedClip(frames, index, fps, int(numbers[0]), total, numbers)


def read_video(path: PathLike, *, num_frames: Optional[int] = None, sampling_rate: int = 1, clip_idx: int = 0,
               num_clips: int = 1, generator: Optional[torch.Generator] = None, seek: bool = True,
               target_fps: Optional[float] = 30, frame_index=None) -> DecodedClip:
    """Decode a video, or only the frames of one clip.

    num_frames None: every frame; clip.index = arange(V). Otherwise the clip of num_frames frames
    `sampling_rate` apart at target_fps, number clip_idx of num_clips spread uniformly over the video
    (clip_idx -1: a random start), exactly PySlowFast's temporal sampling (pyslowfast_clips: a 25 fps
    video spans 25/30 as many of its frames per clip as a 30 fps one); target_fps=None samples every
    `sampling_rate`-th frame whatever the rate. clip.frames holds the clip's distinct frames only. A video
    shorter than the clip repeats its last frame. frame_index: another sampling rule, a callable (frame
    count, fps) -> absolute frame indices [T] (slowfast_kernels.sampling.frame_index_rule), replacing
    num_frames, sampling_rate, clip_idx and num_clips. Raises FileNotFoundError for a missing file and
    VideoDecodeError (naming the file) for a file that is not a video, has no video stream, is corrupt, or
    holds fewer packets than its index lists (truncated).
    """
    if num_frames is None and frame_index is None:
        frames, fps = _decode.read_all(path)
        every = torch.arange(frames.shape[0])
        return DecodedClip(frames, every, fps, 0, frames.shape[0], every)
    if frame_index is not None:
        def sample(num_video_frames: int, fps: Optional[float]) -> List[torch.Tensor]:
            return [torch.as_tensor(frame_index(num_video_frames, fps), dtype=torch.int64)]
    else:
        sample = pyslowfast_clips(num_frames, sampling_rate, clip_idx, num_clips, generator, target_fps)
    (frames, index, numbers, fps, total), = _decode.read_clips(path, sample, seek=seek, who="read_video")
    return DecodedClip(frames, index, fps, int(numbers[0]), total, numbers)


def write_video(path: PathLike, frames: torch.Tensor, fps: int = 30, crf: int = 18) -> Path:
    """Encode uint8 RGB frames [V, H, W, 3] (H, W even) to an H.264 MP4 with PyAV; returns the path."""
    av = _decode.import_av()
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
