"""pack_pathways and temporal_indices: PySlowFast semantics, every backend that runs here against the
eager reference composition, on odd shapes; opcheck; torch.compile; bad input; int64 offsets."""
import numpy as np
import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels import _ext
from slowfast_kernels.backends import backend_unavailable_reason

from conftest import cpu_backends, requires_cuda

NATIVE = _ext.LOAD_ERROR is None
BACKENDS = cpu_backends()


def pyslowfast_indices(v, num_frames, sampling_rate, clip_idx, num_clips, fps=None, target_fps=30):
    """PySlowFast decoder.get_start_end_idx (use_offset=False) + temporal_sampling, written out; with fps,
    decoder.decode's clip size np.maximum(1.0, sampling_rate * num_frames / target_fps * fps)."""
    clip_size = num_frames * sampling_rate
    if fps is not None:
        clip_size = np.maximum(1.0, sampling_rate * num_frames / target_fps * fps)
    delta = max(v - clip_size, 0)
    start = delta * clip_idx / num_clips
    end = start + clip_size - 1
    return torch.clamp(torch.linspace(start, end, num_frames), 0, v - 1).long()


@pytest.mark.parametrize("v,t,rate,clip_idx,num_clips", [
    (300, 32, 2, 0, 1), (300, 32, 2, 1, 3), (300, 32, 2, 2, 3), (37, 8, 8, 0, 1),   # 37 < clip: clamped
    (64, 32, 2, 9, 10), (1, 4, 1, 0, 1), (250, 8, 8, 4, 10)])
def test_temporal_indices_match_pyslowfast(v, t, rate, clip_idx, num_clips):
    got = sk.temporal_indices(v, t, rate, clip_idx, num_clips)
    assert got.dtype == torch.long and got.shape == (t,)
    assert torch.equal(got, pyslowfast_indices(v, t, rate, clip_idx, num_clips))


@pytest.mark.parametrize("fps", [24, 25, 29.97, 30, 60])
@pytest.mark.parametrize("v,t,rate,clip_idx,num_clips", [
    (300, 32, 2, 0, 1), (300, 32, 2, 1, 3), (250, 8, 8, 9, 10), (1000, 32, 2, 4, 10),
    (50, 32, 2, 0, 1), (70, 32, 2, 2, 3)])  # 50 and 70 frames: shorter than the clip at some rates
def test_temporal_indices_scale_the_span_by_the_frame_rate(v, t, rate, clip_idx, num_clips, fps):
    got = sk.temporal_indices(v, t, rate, clip_idx, num_clips, fps=fps)
    assert torch.equal(got, pyslowfast_indices(v, t, rate, clip_idx, num_clips, fps=fps))
    span = t * rate * fps / 30  # frames of this video covered by one clip
    if v >= span:
        assert abs(int(got[-1] - got[0]) - (span - 1)) < 1
    else:  # clamped at the end (the last frame repeats once the clip is clearly longer than the video)
        assert got[0] == 0 and got[-1] == v - 1
        assert (got == v - 1).sum() > 1 or span - v < 2


def test_temporal_indices_fps_30_and_none_agree():
    for clip_idx in range(10):
        assert torch.equal(sk.temporal_indices(300, 32, 2, clip_idx, 10, fps=30),
                           sk.temporal_indices(300, 32, 2, clip_idx, 10))
    # target_fps moves the reference rate: 60 fps sampled at target 60 equals 30 fps at target 30
    assert torch.equal(sk.temporal_indices(300, 8, 8, 1, 3, fps=60, target_fps=60),
                       sk.temporal_indices(300, 8, 8, 1, 3, fps=30))


def test_temporal_indices_short_video_repeats_last_frame():
    idx = sk.temporal_indices(5, 8, 2)
    assert idx.max() == 4 and (idx == 4).sum() > 1 and torch.all(idx[1:] >= idx[:-1])


def test_temporal_indices_random_clip():
    gen = torch.Generator().manual_seed(3)
    a = sk.temporal_indices(300, 8, 8, clip_idx=-1, generator=gen)
    b = sk.temporal_indices(300, 8, 8, clip_idx=-1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a[0] >= 0 and a[-1] <= 299 and a[-1] - a[0] in (62, 63)
    starts = {int(sk.temporal_indices(300, 8, 8, clip_idx=-1)[0]) for _ in range(20)}
    assert len(starts) > 5 and max(starts) <= 300 - 64


def test_temporal_indices_bad_args():
    with pytest.raises(ValueError, match="num_frames: expected a positive int"):
        sk.temporal_indices(10, 0, 2)
    with pytest.raises(ValueError, match=r"clip_idx: expected -1 \(random\) or an int in \[0, 3\)"):
        sk.temporal_indices(10, 4, 2, clip_idx=3, num_clips=3)
    for bad in (0, -25, float("nan"), "25"):
        with pytest.raises(ValueError, match="fps: expected a positive number"):
            sk.temporal_indices(10, 4, 2, fps=bad)
    with pytest.raises(ValueError, match="target_fps: expected a positive number"):
        sk.temporal_indices(10, 4, 2, fps=25, target_fps=0)


def test_slow_frames_are_pyslowfast_linspace():
    video = torch.arange(32, dtype=torch.uint8).view(32, 1, 1, 1).expand(32, 2, 2, 3).contiguous()
    slow, fast = sk.pack_pathways(video, torch.arange(32), 4, mean=0.0, std=1 / 255, backend="reference")
    assert slow[0, :, 0, 0].round().long().tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert fast.shape == (3, 32, 2, 2)


# (N or None, V, H, W, T, alpha, size, crop, spatial_idx, per-sample index)
CASES = [
    (None, 37, 127, 171, 6, 4, None, None, 1, False),   # T not a multiple of alpha, odd frame
    (3, 37, 27, 41, 9, 4, 32, 30, 0, True),             # N=3, upscale, per-clip indices
    (2, 11, 41, 27, 5, 2, 20, 16, 2, False),            # portrait, downscale, crop at the end
    (1, 9, 127, 171, 4, 4, 64, 56, 1, False),           # short side 127 -> 64 (long 86)
    (1, 9, 30, 30, 3, 1, 30, 21, 2, False),             # short side already == size: no resize
]


def _inputs(case, dtype=torch.uint8):
    n, v, h, w, t, alpha, size, crop, sp, per_sample = case
    shape = (v, h, w, 3) if n is None else (n, v, h, w, 3)
    video = torch.randint(0, 256, shape, dtype=torch.uint8)
    if dtype != torch.uint8:
        video = (video.float() / 255).to(dtype)
    index = torch.randint(0, v, (n, t) if per_sample else (t,))
    return video, index, dict(size=size, crop=crop, spatial_idx=sp), alpha


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_fp32_matches_reference(backend, case):
    video, index, kw, alpha = _inputs(case)
    ref = sk.pack_pathways_ref(video, index, alpha, **kw)
    got = sk.pack_pathways(video, index, alpha, backend=backend, **kw)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == torch.float32 and g.is_contiguous()
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [CASES[1], CASES[2]])
def test_low_precision_within_twice_eager_error(backend, dtype, case):
    video, index, kw, alpha = _inputs(case)
    exact = sk.pack_pathways_ref(video, index, alpha, dtype=torch.float64, **kw)
    eager = sk.pack_pathways_ref(video, index, alpha, dtype=dtype, **kw)
    got = sk.pack_pathways(video, index, alpha, dtype=dtype, backend=backend, **kw)
    for g, e, x in zip(got, eager, exact):
        assert g.dtype == dtype
        eager_err = (e.double() - x).abs().max().item()
        assert (g.double() - x).abs().max().item() <= 2 * eager_err


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_float_video_input(backend, in_dtype):
    video, index, kw, alpha = _inputs(CASES[2], in_dtype)
    ref = sk.pack_pathways_ref(video, index, alpha, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), **kw)
    got = sk.pack_pathways(video, index, alpha, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), backend=backend, **kw)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_and_out(backend):
    video, index, kw, alpha = _inputs(CASES[1])
    ref = sk.pack_pathways_ref(video, index, alpha, **kw)
    slow, fast = sk.pack_pathways(video, index, alpha, channels_last=True, backend=backend, **kw)
    assert fast.is_contiguous(memory_format=torch.channels_last_3d)
    assert slow.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fast, ref[1], atol=1e-5, rtol=0)
    # out=: channel slices of wider buffers (strided outputs), written in place and returned.
    big_s = torch.full((3, 5, *ref[0].shape[2:]), -7.0)
    big_f = torch.full((3, 5, *ref[1].shape[2:]), -7.0)
    out = (big_s[:, 1:4], big_f[:, 2:5])
    res = sk.pack_pathways(video, index, alpha, out=out, backend=backend, **kw)
    assert res[0] is out[0] and res[1] is out[1]
    torch.testing.assert_close(big_s[:, 1:4], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(big_f[:, 2:5], ref[1], atol=1e-5, rtol=0)
    assert (big_s[:, 0] == -7).all() and (big_f[:, :2] == -7).all()


def test_bad_inputs_named():
    video = torch.randint(0, 256, (10, 20, 30, 3), dtype=torch.uint8)
    idx = torch.arange(8)
    with pytest.raises(ValueError, match="crop: 25 is larger than the 20x30 frame"):
        sk.pack_pathways(video, idx, 4, crop=25)
    with pytest.raises(ValueError, match="crop: 300 is larger than the 256x384 frame after resizing"):
        sk.pack_pathways(video, idx, 4, size=256, crop=300)
    with pytest.raises(ValueError, match=r"video: expected a \[V, H, W, 3\]"):
        sk.pack_pathways(video[..., :2], idx, 4)
    with pytest.raises(ValueError, match=r"fast_index: values must lie in \[0, 10\)"):
        sk.pack_pathways(video, torch.tensor([0, 10]), 1)
    with pytest.raises(ValueError, match="alpha: expected an int in"):
        sk.pack_pathways(video, idx, 9)
    with pytest.raises(ValueError, match="dtype: expected one of"):
        sk.pack_pathways(video, idx, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="spatial_idx"):
        sk.pack_pathways(video, idx, 4, spatial_idx=3)
    with pytest.raises(ValueError, match="video: expected dtype"):
        sk.pack_pathways(video.int(), idx, 4)
    with pytest.raises(ValueError, match=r"fast_index: a \[N, T\] index needs"):
        sk.pack_pathways(video, idx[None], 4)
    with pytest.raises(ValueError, match=r"out\[1\] \(fast\): expected"):
        sk.pack_pathways(video, idx, 4, out=(torch.empty(3, 2, 20, 30), torch.empty(3, 8, 20, 29)))
    with pytest.raises(ValueError, match="std: expected non-zero"):
        sk.pack_pathways(video, idx, 4, std=(0.2, 0.0, 0.2))


@pytest.mark.skipif(not NATIVE, reason="extension not built")
def test_native_op_rejects_bad_crop_box():
    video = torch.zeros(1, 4, 8, 8, 3, dtype=torch.uint8)
    idx = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="crop_box"):
        torch.ops.slowfast_kernels.pack_pathways(video, idx, idx[:, :1], [8, 8], [2, 2, 8, 8], [0.] * 3, [1.] * 3,
                                                 torch.float32, False)
    with pytest.raises(RuntimeError, match="fast_index: frame index 4 is outside"):
        torch.ops.slowfast_kernels.pack_pathways(video, idx + 4, idx[:, :1], [8, 8], [0, 0, 8, 8], [0.] * 3,
                                                 [1.] * 3, torch.float32, False)


def _op_args(dtype=torch.bfloat16):
    video = torch.randint(0, 256, (2, 6, 9, 13, 3), dtype=torch.uint8)
    fi = torch.randint(0, 6, (2, 5))
    return video, fi, fi[:, [0, 2, 4]].contiguous(), [12, 17], [1, 2, 10, 11], [0.45] * 3, [0.225] * 3


@pytest.mark.parametrize("name", [pytest.param("pack_pathways", marks=pytest.mark.skipif(not NATIVE, reason="no ext")),
                                  "pack_pathways_triton"])
def test_opcheck(name):
    if name.endswith("triton") and backend_unavailable_reason("triton", torch.device("cpu")):
        pytest.skip("triton cannot run on CPU here")
    args = _op_args()
    op = getattr(torch.ops.slowfast_kernels, name)
    torch.library.opcheck(op, (*args, torch.bfloat16, True))
    video, fi, si, *_ = args
    slow, fast = torch.empty(2, 3, 3, 10, 11), torch.empty(2, 3, 5, 10, 11)
    into = getattr(torch.ops.slowfast_kernels, name + "_into")
    torch.library.opcheck(into, (*args, slow, fast))


@pytest.mark.skipif(not NATIVE, reason="extension not built")
def test_torch_compile_fullgraph():
    video, index, kw, alpha = _inputs(CASES[2])

    def f(v, i):
        slow, fast = sk.pack_pathways(v, i, alpha, dtype=torch.bfloat16, backend="cpu", **kw)
        return slow.float().mean() + fast.float().mean()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(video, index), f(video, index))


@pytest.mark.skipif(not NATIVE, reason="extension not built")
def test_int64_offsets_past_2_31_elements():
    # 3000 x 512 x 512 x 3 uint8 = 2.36e9 elements; torch.empty leaves the untouched pages unallocated.
    video = torch.empty((1, 3000, 512, 512, 3), dtype=torch.uint8)
    assert video.numel() > 2 ** 31
    for f in (5, 2999):
        video[0, f] = torch.randint(0, 256, (512, 512, 3), dtype=torch.uint8)
    index = torch.tensor([5, 2999])
    kw = dict(size=200, crop=160, spatial_idx=2)
    ref = sk.pack_pathways_ref(video, index, 2, **kw)
    got = sk.pack_pathways(video, index, 2, backend="cpu", **kw)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)


def test_auto_backend_on_cpu():
    video, index, kw, alpha = _inputs(CASES[2])
    got = sk.pack_pathways(video, index, alpha, **kw)
    ref = sk.pack_pathways_ref(video, index, alpha, **kw)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=0)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_cuda_matches_reference(backend, dtype, case):
    video, index, kw, alpha = _inputs(case)
    video, index = video.cuda(), index.cuda()
    exact = sk.pack_pathways_ref(video, index, alpha, dtype=torch.float64, **kw)
    ref = sk.pack_pathways_ref(video, index, alpha, dtype=dtype, **kw)
    got = sk.pack_pathways(video, index, alpha, dtype=dtype, backend=backend, **kw)
    for g, r, x in zip(got, ref, exact):
        if dtype == torch.float32:
            torch.testing.assert_close(g, r, atol=1e-5, rtol=0)
        else:
            assert (g.double() - x).abs().max() <= 2 * (r.double() - x).abs().max()


@requires_cuda
@pytest.mark.cuda
def test_cuda_batch_64_clips_int64():
    video = torch.randint(0, 256, (64, 40, 256, 256, 3), dtype=torch.uint8, device="cuda")
    index = torch.stack([torch.randperm(40, device="cuda")[:32].sort().values for _ in range(64)])
    got = sk.pack_pathways(video, index, 4, backend="cuda")
    assert got[1].numel() * 4 > 2 ** 31
    ref = sk.pack_pathways_ref(video[-2:], index[-2:], 4)
    torch.testing.assert_close(got[1][-2:], ref[1], atol=1e-5, rtol=0)


# -- value_range: float frames holding 0-255 values, or any (lo, hi) ------------------------------------------

def _float_case(case=CASES[1]):
    video, index, kw, alpha = _inputs(case)
    return video, index, kw, alpha


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16])
def test_float_0_255_with_value_range_equals_uint8(backend, in_dtype):
    video, index, kw, alpha = _float_case()
    ref = sk.pack_pathways_ref(video, index, alpha, **kw)  # the uint8 clip
    as_float = video.to(in_dtype)  # 0..255 is exact in float16 too
    for fn in (sk.pack_pathways_ref, lambda *a, **k: sk.pack_pathways(*a, backend=backend, **k)):
        got = fn(as_float, index, alpha, value_range=(0, 255), **kw)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, atol=2e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_range_maps_lo_hi_to_0_1(backend):
    video, index, kw, alpha = _float_case(CASES[2])
    unit = video.float() / 255
    ref = sk.pack_pathways_ref(unit, index, alpha, **kw)
    got = sk.pack_pathways(unit * 2 - 1, index, alpha, value_range=(-1, 1), backend=backend, **kw)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)
    # (0, 1) given explicitly is the default
    same = sk.pack_pathways(unit, index, alpha, value_range=(0.0, 1.0), backend=backend, **kw)
    assert all(torch.equal(a, b) for a, b in zip(same, sk.pack_pathways(unit, index, alpha, backend=backend, **kw)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_0_255_without_value_range_is_refused(backend):
    video, index, kw, alpha = _float_case()
    as_float = video.float()
    match = r"video: float frames hold values in \[0, 25[0-9]\], outside value_range=\(0, 1\).*value_range=\(0, 255\)"
    with pytest.raises(ValueError, match=match):
        sk.pack_pathways(as_float, index, alpha, backend=backend, **kw)
    with pytest.raises(ValueError, match=match):
        sk.pack_pathways_ref(as_float, index, alpha, **kw)
    # already-normalized frames (about -2 .. 2.4) are refused too, without the 0-255 hint
    normalized = (video.float() / 255 - 0.45) / 0.225
    with pytest.raises(ValueError, match=r"video: float frames hold values in \[-2, 2\.4[0-9]*\], outside") as err:
        sk.pack_pathways(normalized, index, alpha, backend=backend, **kw)
    assert "0, 255" not in str(err.value)


def test_value_range_margin():
    video = torch.full((4, 8, 8, 3), 0.5)
    idx = torch.arange(4)
    video[1, 2, 3, 0] = 1.49  # within half the range above 1: an unclamped colour conversion may overshoot
    video[2, 0, 0, 1] = -0.49
    sk.pack_pathways(video, idx, 2)
    sk.pack_pathways_ref(video, idx, 2)
    for bad in (1.51, -0.51):
        video[3, 0, 0, 2] = bad
        with pytest.raises(ValueError, match="outside value_range=\\(0, 1\\)"):
            sk.pack_pathways(video, idx, 2)
        with pytest.raises(ValueError, match="outside value_range=\\(0, 1\\)"):
            sk.pack_pathways_ref(video, idx, 2)
        video[3, 0, 0, 2] = 0.5
    video[3] = 255.0  # within (0, 255)
    sk.pack_pathways(video, idx, 2, value_range=(0, 255))


def test_value_range_bad_arguments():
    video = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    idx = torch.arange(4)
    with pytest.raises(ValueError, match=r"value_range: uint8 frames are always 0-255"):
        sk.pack_pathways(video, idx, 2, value_range=(0, 1))
    with pytest.raises(ValueError, match=r"value_range: uint8 frames are always 0-255"):
        sk.pack_pathways_ref(video, idx, 2, value_range=(0, 1))
    sk.pack_pathways(video, idx, 2, value_range=(0, 255))  # the uint8 range, stated: accepted
    for bad in ((1, 0), (0, 0), (0,), (0, 1, 2), (0, float("inf")), ("a", "b"), 255, (True, 2)):
        with pytest.raises(ValueError, match=r"value_range: expected \(lo, hi\)"):
            sk.pack_pathways(video.float() / 255, idx, 2, value_range=bad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.float32])
def test_checks_read_back_from_the_device_once_per_call(backend, in_dtype, monkeypatch):
    """The index bounds and the value range cost one host readback together (one sync on a GPU)."""
    video, index, kw, alpha = _inputs(CASES[1], in_dtype)
    readbacks = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            readbacks.append(_name)
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    sk.pack_pathways(video, index, alpha, backend=backend, **kw)
    assert len(readbacks) == 1, readbacks
