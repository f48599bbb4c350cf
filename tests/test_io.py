"""slowfast_kernels.io: PyAV decoding of real MP4 files the tests encode themselves (moving shapes)."""
import numpy as np
import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels import io

av = pytest.importorskip("av")

FRAMES, H, W, FPS = 40, 48, 64, 25


def frame_image(i: int) -> np.ndarray:
    """A bright square moving right 2 px per frame over a dark gradient: every frame differs."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 2] = np.linspace(0, 80, W, dtype=np.uint8)[None]
    x = (2 * i) % (W - 12)
    img[16:28, x:x + 12] = (240, 200, 40)
    return img


def encode(path, frames=FRAMES, faststart=False, gop=8):
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"g": str(gop), "crf": "12", "bf": "2"}  # keyframes every 8: seeking matters
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def encode_rate(path, fps, frames):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    paths = {"moving": encode(d / "moving.mp4"), "faststart": encode(d / "faststart.mp4", faststart=True)}
    for name in ("moving", "faststart"):
        data = paths[name].read_bytes()
        paths[f"{name}_truncated"] = d / f"{name}_truncated.mp4"
        paths[f"{name}_truncated"].write_bytes(data[: len(data) * 2 // 3])
    paths["text"] = d / "notes.mp4"
    paths["text"].write_text("not a video\n" * 20)
    paths["empty"] = d / "empty.mp4"
    paths["empty"].write_bytes(b"")
    return paths


@pytest.fixture(scope="module")
def full(videos):
    return io.read_video(videos["moving"])


def test_probe(videos):
    info = io.probe_video(videos["moving"])
    assert (info.num_frames, info.fps, info.height, info.width) == (FRAMES, FPS, H, W)
    assert info.duration_s == pytest.approx(FRAMES / FPS, abs=0.05)


def test_read_all_frames(full):
    assert full.frames.dtype == torch.uint8 and full.frames.shape == (FRAMES, H, W, 3)
    assert torch.equal(full.index, torch.arange(FRAMES)) and full.fps == FPS and full.num_video_frames == FRAMES
    for i in (0, 17, FRAMES - 1):  # lossy codec: close to the encoded image, and in the right order
        err = (full.frames[i].float() - torch.from_numpy(frame_image(i)).float()).abs().mean()
        other = (full.frames[i].float() - torch.from_numpy(frame_image(i + 3)).float()).abs().mean()
        assert err < 6 and err < other / 2


@pytest.mark.parametrize("seek", [True, False])
@pytest.mark.parametrize("clip_idx", [0, 1, 2])
def test_clip_frames_equal_full_decode(videos, full, clip_idx, seek):
    clip = io.read_video(videos["moving"], num_frames=8, sampling_rate=2, clip_idx=clip_idx, num_clips=3, seek=seek)
    want = sk.temporal_indices(FRAMES, 8, 2, clip_idx, 3, fps=FPS)
    assert clip.start_frame == int(want.min()) and clip.num_video_frames == FRAMES
    assert clip.frames.shape[0] == len(set(want.tolist()))  # only the sampled frames were kept, not the span
    assert torch.equal(clip.frames[clip.index], full.frames[want])


def test_short_video_repeats_last_frame(videos, full):
    clip = io.read_video(videos["moving"], num_frames=32, sampling_rate=2)
    assert torch.equal(clip.frames[clip.index], full.frames[sk.temporal_indices(FRAMES, 32, 2, fps=FPS)])
    assert (clip.frame_numbers[clip.index] == FRAMES - 1).sum() > 1


@pytest.mark.parametrize("fps", [24, 25, 30, 60])
def test_clip_span_follows_the_frame_rate(tmp_path, fps):
    """PySlowFast's decoder scales the clip by fps / 30: 8 frames every 4 at 30 fps span 32 frames of a 30 fps
    video, 26.7 of a 25 fps one, 64 of a 60 fps one."""
    path = tmp_path / f"v{fps}.mp4"
    encode_rate(path, fps, frames=120)
    clip = io.read_video(path, num_frames=8, sampling_rate=4, clip_idx=1, num_clips=3)
    assert clip.fps == fps
    want = sk.temporal_indices(120, 8, 4, 1, 3, fps=fps)
    assert torch.equal(clip.frame_numbers[clip.index], want)
    assert abs(int(want[-1] - want[0]) - (32 * fps / 30 - 1)) < 1  # the span in this video's frames
    legacy = io.read_video(path, num_frames=8, sampling_rate=4, clip_idx=1, num_clips=3, target_fps=None)
    assert torch.equal(legacy.frame_numbers[legacy.index], sk.temporal_indices(120, 8, 4, 1, 3))


def test_random_clip_reproducible(videos, full):
    a = io.read_video(videos["moving"], num_frames=4, sampling_rate=4, clip_idx=-1,
                      generator=torch.Generator().manual_seed(1))
    b = io.read_video(videos["moving"], num_frames=4, sampling_rate=4, clip_idx=-1,
                      generator=torch.Generator().manual_seed(1))
    assert a.start_frame == b.start_frame and torch.equal(a.frames[a.index], b.frames[b.index])


def test_read_and_pack_end_to_end(videos):
    clip = io.read_video(videos["faststart"], num_frames=8, sampling_rate=4, clip_idx=1, num_clips=3)
    slow, fast = sk.pack_pathways(clip.frames, clip.index, 4, size=40, crop=32)
    assert slow.shape == (3, 2, 32, 32) and fast.shape == (3, 8, 32, 32)
    ref = sk.pack_pathways_ref(clip.frames, clip.index, 4, size=40, crop=32)
    torch.testing.assert_close(fast, ref[1], atol=1e-5, rtol=0)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        io.read_video(tmp_path / "absent.mp4")


@pytest.mark.parametrize("name", ["text", "empty", "moving_truncated"])
def test_not_a_video(videos, name):
    with pytest.raises(io.VideoDecodeError, match="not a readable video file"):
        io.read_video(videos[name])
    with pytest.raises(io.VideoDecodeError):
        io.probe_video(videos[name])


def test_truncated_stream(videos):
    # moov first (faststart): the header lists 40 frames, the data stops early.
    with pytest.raises(io.VideoDecodeError, match="truncated|corrupt"):
        io.read_video(videos["faststart_truncated"])
    with pytest.raises(io.VideoDecodeError, match="truncated|corrupt"):
        io.read_video(videos["faststart_truncated"], num_frames=8, sampling_rate=2, clip_idx=2, num_clips=3)


def test_no_video_stream(tmp_path):
    path = tmp_path / "audio.mka"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(io.VideoDecodeError, match="no video stream"):
        io.read_video(path)


def test_kinetics_400_labels():
    labels = io.kinetics_400_labels()
    assert len(labels) == 400 and len(set(labels)) == 400
    assert labels[0] == "abseiling" and labels[1] == "air drumming" and labels[399] == "zumba"
    assert labels == sorted(labels)  # the standard order is alphabetical
