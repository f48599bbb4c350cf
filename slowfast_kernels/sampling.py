"""Temporal sampling rules of the test protocols: which frames of a video make clip `clip_idx` of `num_clips`.

Every rule returns absolute frame indices, int64 [num_frames], into the video's frames in presentation
order (frame k = the k-th frame the decoder returns); io.read_video(frame_index=...) decodes just those.

  rule               whose code                                                        used by preset
  pyslowfast         PySlowFast datasets/decoder.py get_start_end_idx + temporal_sampling,   pyslowfast,
                     over the whole video (temporal_indices)                                 pytorchvideo
  pyslowfast-pyav    PySlowFast datasets/decoder.py pyav_decode + decode: a window chosen    (option)
                     by timestamps, then the same linspace inside the window
  mmaction2          MMAction2 v0.x datasets/pipelines/loading.py SampleFrames(test_mode=True)  mmaction2
  charades           PySlowFast datasets/charades.py Charades.get_seq_frames (test mode)       charades
  ssv2               PySlowFast datasets/ssv2.py Ssv2.get_seq_frames (test mode)                ssv2
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from slowfast_reference._args import is_int

from .ops.pack_pathways import temporal_indices

RULES = ("pyslowfast", "pyslowfast-pyav", "mmaction2", "charades", "ssv2")

FrameIndex = Callable[[int, Optional[float]], torch.Tensor]


def _check(num_video_frames: int, num_frames: int, sampling_rate: int, clip_idx: int, num_clips: int,
           where: str) -> None:
    for name, value in (("num_video_frames", num_video_frames), ("num_frames", num_frames),
                        ("sampling_rate", sampling_rate), ("num_clips", num_clips)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{where}: {name}: expected a positive int, got {value!r}")
    if not is_int(clip_idx) or not 0 <= clip_idx < num_clips:
        raise ValueError(f"{where}: clip_idx: expected an int in [0, {num_clips}), got {clip_idx!r}")


def mmaction2_indices(num_video_frames: int, clip_len: int, frame_interval: int, clip_idx: int = 0,
                      num_clips: int = 1) -> torch.Tensor:
    """MMAction2's SampleFrames(clip_len, frame_interval, num_clips, test_mode=True) (v0.24
    mmaction/datasets/pipelines/loading.py, the rule its Kinetics-400 SlowFast checkpoints were tested with).

    ori_clip_len = clip_len * frame_interval; avg_interval = (V - ori_clip_len + 1) / num_clips; offset of
    clip i = int(i * avg_interval + avg_interval / 2) when V > ori_clip_len - 1, else 0; frames offset +
    arange(clip_len) * frame_interval, out-of-range frames looped (out_of_bound_opt="loop": mod V).
    """
    _check(num_video_frames, clip_len, frame_interval, clip_idx, num_clips, "mmaction2_indices")
    ori_clip_len = clip_len * frame_interval
    avg_interval = (num_video_frames - ori_clip_len + 1) / float(num_clips)
    if num_video_frames > ori_clip_len - 1:
        offset = int(np.arange(num_clips)[clip_idx] * avg_interval + avg_interval / 2.0)
    else:
        offset = 0
    frames = offset + np.arange(clip_len) * frame_interval
    return torch.from_numpy(np.mod(frames, num_video_frames).astype(np.int64))


def charades_indices(num_video_frames: int, num_frames: int, sampling_rate: int, clip_idx: int = 0,
                     num_clips: int = 1) -> torch.Tensor:
    """PySlowFast's Charades test clips (datasets/charades.py Charades.get_seq_frames, frames of 24 fps
    Charades videos, no frame-rate scaling).

    clip_length = (num_frames - 1) * sampling_rate + 1, gap = max(V - clip_length, 0) / (num_clips - 1),
    start = int(round(gap * clip_idx)) (Python's round, halves to even), frames clamp(start + i *
    sampling_rate, 0, V - 1). num_clips = 1 divides by zero in PySlowFast; here it takes start 0.
    """
    _check(num_video_frames, num_frames, sampling_rate, clip_idx, num_clips, "charades_indices")
    clip_length = (num_frames - 1) * sampling_rate + 1
    gap = float(max(num_video_frames - clip_length, 0)) / (num_clips - 1) if num_clips > 1 else 0.0
    start = int(round(gap * clip_idx))
    return torch.tensor([max(min(start + i * sampling_rate, num_video_frames - 1), 0) for i in range(num_frames)],
                        dtype=torch.int64)


def ssv2_indices(num_video_frames: int, num_frames: int) -> torch.Tensor:
    """PySlowFast's Something-Something v2 test frames (datasets/ssv2.py Ssv2.get_seq_frames; PyTorchVideo's
    SSv2 dataset samples alike): the video cut into num_frames segments, seg_size = (V - 1) / num_frames,
    frame i = (round(seg_size * i) + round(seg_size * (i + 1))) // 2 (np.round, halves to even). One clip
    per video; the views are its spatial crops."""
    _check(num_video_frames, num_frames, 1, 0, 1, "ssv2_indices")
    seg_size = float(num_video_frames - 1) / num_frames
    seq = [(int(np.round(seg_size * i)) + int(np.round(seg_size * (i + 1)))) // 2 for i in range(num_frames)]
    return torch.tensor(seq, dtype=torch.int64)


def pyav_window_indices(frame_pts: Sequence[int], header_frames: int, duration_pts: Optional[int], fps: float,
                        num_frames: int, sampling_rate: int, clip_idx: int = 0, num_clips: int = 1,
                        target_fps: float = 30) -> torch.Tensor:
    """PySlowFast's pyav decoding of a test clip (datasets/decoder.py at 287ec00, pyav_decode + decode,
    use_offset=False), as indices into the frames in presentation order.

    frame_pts: every frame's pts, ascending. header_frames, duration_pts: the stream's `frames` and
    `duration` (time_base units) from the container header.
    1. Window: clip_size = max(1, ceil(sampling_rate * (num_frames - 1) / target_fps * fps)),
       start = max(header_frames - clip_size, 0) * clip_idx / num_clips, end = start + clip_size - 1,
       timebase = duration_pts / header_frames, pts range [int(start * timebase), int(end * timebase)]
       (the stream's start time is not subtracted); pyav_decode_stream keeps the frames inside it and the
       first frame past its end (buffer_size=0 breaks after adding it).
    2. Inside the window of L frames: clip_sz = max(1, sampling_rate * num_frames / target_fps * fps),
       index = clamp(linspace(0, clip_sz - 1, num_frames), 0, L - 1).long() (float32 linspace).
    Without a duration in the header PySlowFast decodes the whole video and samples it by the
    whole-video rule (temporal_indices).
    """
    pts = [int(p) for p in frame_pts]
    num_video_frames = len(pts)
    _check(max(num_video_frames, 1), num_frames, sampling_rate, clip_idx, num_clips, "pyav_window_indices")
    if num_video_frames == 0:
        raise ValueError("pyav_window_indices: frame_pts: expected the pts of at least one frame, got none")
    if duration_pts is None or not header_frames:
        return temporal_indices(num_video_frames, num_frames, sampling_rate, clip_idx, num_clips, fps=fps,
                                target_fps=target_fps)
    window_size = max(1.0, math.ceil(sampling_rate * (num_frames - 1) / target_fps * fps))
    delta = max(header_frames - window_size, 0)
    start = delta * clip_idx / num_clips
    end = start + window_size - 1
    timebase = duration_pts / header_frames
    start_pts, end_pts = int(start * timebase), int(end * timebase)
    window: List[int] = []
    for k, p in enumerate(pts):
        if p < start_pts:
            continue
        window.append(k)
        if p > end_pts:  # the first frame past the end is kept, then decoding stops
            break
    if not window:
        raise ValueError(f"pyav_window_indices: no frame has a pts in [{start_pts}, {end_pts}] (last pts "
                         f"{pts[-1]}): the header's duration does not match the stream")
    clip_sz = max(1.0, sampling_rate * num_frames / target_fps * fps)
    inside = torch.clamp(torch.linspace(0, clip_sz - 1, num_frames), 0, len(window) - 1).long()
    return torch.tensor(window, dtype=torch.int64)[inside]


def read_pts(path: str) -> List[int]:
    """Every video frame's pts in presentation order, from the packets (demuxing only, no decoding)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(int(p.pts) for p in container.demux(stream) if p.pts is not None and p.size > 0)


def stream_header(path: str):
    """(header frame count, duration in time_base units or None) of the first video stream."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return int(stream.frames), (int(stream.duration) if stream.duration is not None else None)


def frame_index_rule(rule: str, num_frames: int, sampling_rate: int, clip_idx: int, num_clips: int,
                     target_fps: float = 30, path: Optional[str] = None) -> FrameIndex:
    """The callable (num_video_frames, fps) -> absolute frame indices that io.read_video(frame_index=...)
    takes, for one clip by `rule` (one of RULES; pyslowfast-pyav also reads the packets' pts of `path`)."""
    if rule not in RULES:
        raise ValueError(f"sampling rule: expected one of {RULES}, got {rule!r}")

    def index(num_video_frames: int, fps: Optional[float]) -> torch.Tensor:
        if rule == "pyslowfast":
            return temporal_indices(num_video_frames, num_frames, sampling_rate, clip_idx, num_clips, fps=fps or None,
                                    target_fps=target_fps)
        if rule == "mmaction2":
            return mmaction2_indices(num_video_frames, num_frames, sampling_rate, clip_idx, num_clips)
        if rule == "charades":
            return charades_indices(num_video_frames, num_frames, sampling_rate, clip_idx, num_clips)
        if rule == "ssv2":
            return ssv2_indices(num_video_frames, num_frames)
        if path is None:
            raise ValueError("sampling rule pyslowfast-pyav: needs the video's path (its frames' timestamps)")
        header_frames, duration = stream_header(path)
        return pyav_window_indices(read_pts(path), header_frames, duration, fps or 30.0, num_frames, sampling_rate,
                                   clip_idx, num_clips, target_fps)

    return index
