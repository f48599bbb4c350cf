"""Temporal sampling rules (slowfast_kernels.sampling) against the frameworks' code written out by hand, on
odd lengths; PySlowFast's pyav window rule against its decoding loop run on a real file (25 and 60 fps)."""
import numpy as np
import pytest
import torch

from slowfast_kernels import io, sampling


def mmaction2_by_hand(total, clip_len, interval, num_clips):
    """MMAction2 v0.24 SampleFrames._get_test_clips + __call__ (out_of_bound_opt='loop'), as written there."""
    ori_clip_len = clip_len * interval
    avg_interval = (total - ori_clip_len + 1) / float(num_clips)
    if total > ori_clip_len - 1:
        base_offsets = np.arange(num_clips) * avg_interval
        clip_offsets = (base_offsets + avg_interval / 2.0).astype(int)
    else:
        clip_offsets = np.zeros((num_clips,), dtype=int)
    inds = clip_offsets[:, None] + np.arange(clip_len)[None, :] * interval
    return np.mod(inds, total)


@pytest.mark.parametrize("total", [20, 63, 64, 65, 250, 301])
@pytest.mark.parametrize("num_clips", [1, 3, 10])
def test_mmaction2_sample_frames_test_mode(total, num_clips):
    expected = mmaction2_by_hand(total, 32, 2, num_clips)
    for c in range(num_clips):
        got = sampling.mmaction2_indices(total, 32, 2, c, num_clips)
        assert got.tolist() == expected[c].tolist()


def test_mmaction2_short_video_loops_and_centres():
    # 20 frames < the 64-frame span: offsets 0, frames 0, 2, ..., 18, then 20 % 20 = 0, 2, ... (looped)
    assert sampling.mmaction2_indices(20, 32, 2).tolist()[:12] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 0, 2]
    # 300 frames, 1 clip: avg_interval 237, offset int(118.5) = 118
    assert sampling.mmaction2_indices(300, 32, 2).tolist()[:2] == [118, 120]


def charades_by_hand(video_length, num_frames, sampling_rate, t, num_views):
    """PySlowFast datasets/charades.py Charades.get_seq_frames, test mode."""
    clip_length = (num_frames - 1) * sampling_rate + 1
    gap = float(max(video_length - clip_length, 0)) / (num_views - 1)
    start = int(round(gap * t))
    return [max(min(start + i * sampling_rate, video_length - 1), 0) for i in range(num_frames)]


@pytest.mark.parametrize("length", [17, 63, 64, 200, 777])
def test_charades_clips(length):
    for t in range(10):
        assert sampling.charades_indices(length, 32, 2, t, 10).tolist() == charades_by_hand(length, 32, 2, t, 10)
    assert sampling.charades_indices(length, 8, 8, 0, 1).tolist()[0] == 0  # 1 clip: PySlowFast divides by 0


@pytest.mark.parametrize("length", [8, 31, 32, 33, 97])
def test_ssv2_segments(length):
    seg_size = float(length - 1) / 32
    expected = [(int(np.round(seg_size * i)) + int(np.round(seg_size * (i + 1)))) // 2 for i in range(32)]
    assert sampling.ssv2_indices(length, 32).tolist() == expected


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="clip_idx"):
        sampling.mmaction2_indices(100, 32, 2, 3, 3)
    with pytest.raises(ValueError, match="num_frames"):
        sampling.ssv2_indices(100, 0)
    with pytest.raises(ValueError, match="sampling rule"):
        sampling.frame_index_rule("tsn", 32, 2, 0, 1)


def test_pyav_window_by_hand():
    # 25 fps, time_base 1/12800: pts 512 * k; header 100 frames, duration 51200
    pts = [512 * k for k in range(100)]
    # window clip_size = ceil(2 * 31 / 30 * 25) = 52; clip 1 of 3: start = 48 / 3 = 16, end 67; pts [8192, 34304]
    got = sampling.pyav_window_indices(pts, 100, 51200, 25.0, 32, 2, 1, 3)
    window = list(range(16, 68)) + [68]  # frames 16..67, and 68: the first past the end
    clip_sz = 2 * 32 / 30 * 25
    inside = torch.clamp(torch.linspace(0, clip_sz - 1, 32), 0, len(window) - 1).long()
    assert got.tolist() == [window[i] for i in inside.tolist()]
    # a fractional start (clip 1 of 10: 4.8) picks the window from frame 5, where the whole-video rule
    # floors 4.8 + ...: the two rules differ by one frame there
    window_rule = sampling.pyav_window_indices(pts, 100, 51200, 25.0, 32, 2, 1, 10)
    whole = sampling.temporal_indices(100, 32, 2, 1, 10, fps=25.0)
    assert window_rule[0] == 5 and whole[0] == 4


def pyslowfast_pyav_decode(path, num_frames, sampling_rate, clip_idx, num_clips, target_fps=30):
    """PySlowFast decoder.pyav_decode + pyav_decode_stream + decode's temporal_sampling (287ec00), as written
    there: the frames of one test clip, uint8 [T, H, W, 3]."""
    import av

    container = av.open(str(path))
    stream = container.streams.video[0]
    fps = float(stream.average_rate)
    frames_length, duration = stream.frames, stream.duration
    clip_size = np.maximum(1.0, np.ceil(sampling_rate * (num_frames - 1) / target_fps * fps))
    delta = max(frames_length - clip_size, 0)
    start_idx = delta * clip_idx / num_clips
    end_idx = start_idx + clip_size - 1
    timebase = duration / frames_length
    start_pts, end_pts = int(start_idx * timebase), int(end_idx * timebase)
    container.seek(max(start_pts - 1024, 0), any_frame=False, backward=True, stream=stream)
    frames, buffer_count = {}, 0
    for frame in container.decode(video=0):
        if frame.pts < start_pts:
            continue
        frames[frame.pts] = frame
        if frame.pts > end_pts:
            buffer_count += 1
            if buffer_count >= 0:
                break
    video = torch.as_tensor(np.stack([frames[p].to_rgb().to_ndarray() for p in sorted(frames)]))
    container.close()
    clip_sz = np.maximum(1.0, sampling_rate * num_frames / target_fps * fps)
    index = torch.clamp(torch.linspace(0, clip_sz - 1, num_frames), 0, video.shape[0] - 1).long()
    return video[index]


@pytest.mark.parametrize("fps,num_video_frames", [(25, 90), (60, 150)])
def test_pyav_window_rule_decodes_pyslowfast_frames(tmp_path, fps, num_video_frames):
    path = io.write_video(tmp_path / f"v{fps}.mp4", io.synthetic_video(num_video_frames, 32, 48, seed=fps), fps=fps)
    for clip_idx in range(3):
        expected = pyslowfast_pyav_decode(path, 8, 8, clip_idx, 3)
        rule = sampling.frame_index_rule("pyslowfast-pyav", 8, 8, clip_idx, 3, path=str(path))
        clip = io.read_video(path, frame_index=rule)
        assert torch.equal(clip.frames[clip.index], expected)


def test_pyav_window_without_duration_is_the_whole_video_rule():
    got = sampling.pyav_window_indices(list(range(40)), 40, None, 30.0, 8, 2, 1, 3)
    assert got.tolist() == sampling.temporal_indices(40, 8, 2, 1, 3, fps=30.0).tolist()
