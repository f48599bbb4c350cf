"""Valid videos whose timestamps or headers mislead: variable frame rate, an MP4 trimmed by stream copy (edit
list), MPEG-TS parts joined with cat, a raw .h264 stream; and read_clips' single pass holding only the
sampled frames. Every frame carries its number in 8 wide bands (one bit each), read back exactly."""
from fractions import Fraction

import numpy as np
import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels import _decode, io

av = pytest.importorskip("av")

H, W = 48, 64


def numbered(i: int) -> np.ndarray:
    """Frame i: bit b of i as a dark (16) or bright (240) vertical band b of 8 px."""
    img = np.zeros((H, W, 3), np.uint8)
    for b in range(8):
        img[:, 8 * b:8 * b + 8] = 240 if (i >> b) & 1 else 16
    return img


def numbers_of(frames: torch.Tensor) -> torch.Tensor:
    """The frame numbers that `numbered` wrote into uint8 [V, H, W, 3] frames (lossy codec: band means)."""
    bands = frames[:, 8:40].float().mean(dim=(1, 3)).view(frames.shape[0], 8, 8).mean(-1)  # [V, 8 bands]
    bits = (bands > 128).long()
    return (bits * (2 ** torch.arange(8))).sum(-1)


def encode(path, numbers, fps=30, pts_ms=None, fmt=None, gop=10):
    """H.264 frames numbered(n) for n in `numbers`; pts_ms: explicit presentation times (variable rate)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"g": str(gop), "bf": "2", "crf": "10"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for k, n in enumerate(numbers):
            frame = av.VideoFrame.from_ndarray(numbered(n), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[k], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def clip_numbers(clip: io.DecodedClip) -> torch.Tensor:
    return numbers_of(clip.frames[clip.index])


def test_variable_frame_rate_frames_follow_decode_order(tmp_path):
    """Issue 7: bursts of 4 frames 5 ms apart, 120 ms between bursts. Frame k of the clip is the k-th decoded
    frame, not the frame whose pts rounds to k at the average rate (that picked 4, 16 and 15 of 16 wrong)."""
    gaps = [5, 5, 5, 120]
    pts = np.cumsum([0] + [gaps[k % len(gaps)] for k in range(119)]).tolist()
    path = encode(tmp_path / "vfr.mp4", range(120), pts_ms=pts)
    info = io.probe_video(path)
    assert info.num_frames == 120
    assert torch.equal(numbers_of(io.read_video(path).frames), torch.arange(120))
    for clip_idx in range(3):
        want = sk.temporal_indices(120, 16, 2, clip_idx, 3, fps=info.fps)
        for seek in (True, False):
            clip = io.read_video(path, num_frames=16, sampling_rate=2, clip_idx=clip_idx, num_clips=3, seek=seek)
            assert torch.equal(clip_numbers(clip), want), (clip_idx, seek)
            assert torch.equal(clip.frame_numbers[clip.index], want)


def test_seek_on_variable_frame_rate_lands_on_the_right_frame(tmp_path, monkeypatch):
    """The seek maps pts to frame numbers by rank among the packets' pts: exact whatever the gaps."""
    pts = np.cumsum([0] + [(7, 61, 29)[k % 3] for k in range(199)]).tolist()
    path = encode(tmp_path / "vfr_seek.mp4", range(200), pts_ms=pts, gop=12)
    seeks = []
    original = _decode.Stream._frames_after_seek
    monkeypatch.setattr(_decode.Stream, "_frames_after_seek", lambda s, first: seeks.append(first) or original(s, first))
    clip = io.read_video(path, num_frames=8, sampling_rate=4, clip_idx=4, num_clips=5)
    fps = io.probe_video(path).fps
    assert seeks == [int(sk.temporal_indices(200, 8, 4, 4, 5, fps=fps)[0])]  # it did seek
    assert torch.equal(clip_numbers(clip), sk.temporal_indices(200, 8, 4, 4, 5, fps=fps))


def remux_with_start_offset(src, dst, skip_frames):
    """Stream copy into a new MP4 whose first `skip_frames` frames get negative timestamps: the mov muxer
    writes an edit list that hides them, as `ffmpeg -ss 1 -i a.mp4 -c copy b.mp4` does."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        shift = int(skip_frames / s_in.average_rate / s_in.time_base)
        for packet in inp.demux(s_in):
            if packet.dts is None:
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = s_out
            out.mux(packet)
    return dst


def test_mp4_trimmed_by_stream_copy_is_sampled_from_the_decoded_frames(tmp_path):
    """Issue 6: header 90 frames, 60 presented (the edit list hides 30): was refused as truncated."""
    path = remux_with_start_offset(encode(tmp_path / "a.mp4", range(90), gop=45), tmp_path / "b.mp4", 30)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 90  # the header still lists every sample
    assert io.probe_video(path).num_frames == 60
    full = io.read_video(path)
    assert torch.equal(numbers_of(full.frames), torch.arange(30, 90))
    for clip_idx in (0, 2):
        for seek in (True, False):
            clip = io.read_video(path, num_frames=8, sampling_rate=2, clip_idx=clip_idx, num_clips=3, seek=seek)
            assert clip.num_video_frames == 60
            assert torch.equal(clip_numbers(clip), 30 + sk.temporal_indices(60, 8, 2, clip_idx, 3, fps=30))


def test_ts_parts_joined_with_cat(tmp_path):
    """Issue 6: two MPEG-TS files concatenated as bytes: the second part's timestamps start again."""
    a = encode(tmp_path / "a.ts", range(50), fmt="mpegts")
    b = encode(tmp_path / "b.ts", range(50, 90), fmt="mpegts")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    assert io.probe_video(joined).num_frames == 90
    assert torch.equal(numbers_of(io.read_video(joined).frames), torch.arange(90))
    sample = io.pyslowfast_clips(8, 2, range(10), 10)
    clips = list(io.read_clips(joined, sample))
    assert len(clips) == 10
    for clip, want in zip(clips, sample(90, 30.0)):
        assert torch.equal(clip_numbers(clip), want)
    clip = io.read_video(joined, num_frames=8, sampling_rate=2, clip_idx=2, num_clips=3)
    assert torch.equal(clip_numbers(clip), sk.temporal_indices(90, 8, 2, 2, 3, fps=30))


def test_raw_h264_stream(tmp_path):
    """A raw elementary stream: no container, no timestamps, no frame count; it cannot seek."""
    path = encode(tmp_path / "raw.h264", range(50), fmt="h264")
    info = io.probe_video(path)
    assert (info.num_frames, info.fps) == (50, 30)  # the codec's rate, not the raw demuxer's 25 fps default
    clip = io.read_video(path, num_frames=8, sampling_rate=2, clip_idx=2, num_clips=3)
    assert torch.equal(clip_numbers(clip), sk.temporal_indices(50, 8, 2, 2, 3, fps=30))
    broken = tmp_path / "broken.h264"
    broken.write_bytes(b"\x00\x00\x00\x01" + bytes(range(256)) * 8)
    with pytest.raises(io.VideoDecodeError, match=r"broken\.h264") as err:
        io.read_video(broken, num_frames=8, sampling_rate=2)
    assert "\n" not in str(err.value)


def test_decoded_frames_are_the_truth_when_the_demuxer_overcounts(tmp_path, monkeypatch):
    """When decoding ends before the count the demuxer gave, the clip is sampled from the frames decoded."""
    path = encode(tmp_path / "v.mp4", range(60))
    index = _decode.Stream._index

    def overcount(s):
        index(s)
        s.num_frames += 25

    monkeypatch.setattr(_decode.Stream, "_index", overcount)
    clip = io.read_video(path, num_frames=8, sampling_rate=2, clip_idx=2, num_clips=3)
    assert clip.num_video_frames == 60
    assert torch.equal(clip_numbers(clip), sk.temporal_indices(60, 8, 2, 2, 3, fps=30))


def test_read_clips_one_pass_equals_read_video(tmp_path, monkeypatch):
    path = encode(tmp_path / "v.mp4", range(150))
    passes = []
    original = _decode.Stream.frames
    monkeypatch.setattr(_decode.Stream, "frames", lambda s, first, seek: passes.append(first) or original(s, first, seek))
    sample = io.pyslowfast_clips(8, 2, range(10), 10)
    clips = list(io.read_clips(path, sample))
    assert passes == [0]  # the ten clips in one decoding pass
    for t, clip in enumerate(clips):
        one = io.read_video(path, num_frames=8, sampling_rate=2, clip_idx=t, num_clips=10)
        assert torch.equal(clip.frames[clip.index], one.frames[one.index])
        assert torch.equal(clip_numbers(clip), sk.temporal_indices(150, 8, 2, t, 10, fps=30))


class PeakBytes:
    """A read_clips budget that records the peak of the bytes held."""

    def __init__(self):
        self.used = self.peak = 0

    def acquire(self, nbytes):
        self.used += nbytes
        self.peak = max(self.peak, self.used)

    def release(self, nbytes):
        self.used -= nbytes


def test_read_clips_holds_only_the_sampled_frames(tmp_path):
    """Issue 3: 10 clips of 8 frames 8 apart at 120 fps span 256 frames each. The old decoder held 10
    windows of 256 frames; one pass holds the sampled frames of the clips overlapping in time, plus the
    clip being handed over."""
    path = encode(tmp_path / "v120.mp4", range(1000), fps=120, gop=30)
    sample = io.pyslowfast_clips(8, 8, range(10), 10)
    wanted = sample(1000, 120.0)
    assert int(wanted[0][-1] - wanted[0][0]) == 255
    budget = PeakBytes()
    for clip in io.read_clips(path, sample, budget=budget):
        assert clip.frames.shape[0] == 8
        budget.release(clip.frames.nbytes)  # the caller's part: done with the clip
    assert budget.used == 0
    # Just before clip i leaves: the frames of clips i.. decoded so far, then clip i's 8 frames stacked.
    held = max(len({int(n) for c in wanted[i:] for n in c if n <= wanted[i][-1]}) for i in range(10))
    frame = H * W * 3
    assert budget.peak <= (held + 8) * frame
    assert held + 8 <= 40  # vs 10 x 256 frames held before
