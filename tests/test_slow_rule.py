"""pack_pathways(slow_rule=...): PySlowFast's linspace Slow frames and MMAction2's stride (its backbone's
nearest temporal resampling), every backend against the eager reference on odd shapes."""
import pytest
import torch
import torch.nn.functional as F

import slowfast_kernels as sk
import slowfast_reference as R

from conftest import cpu_backends, requires_cuda

BACKENDS = cpu_backends()

# (N or None, V, H, W, T, alpha, size, crop, spatial_idx)
CASES = [
    (None, 37, 27, 41, 7, 4, None, None, 1),   # T not a multiple of alpha: 7 // 4 = 1 slow frame
    (2, 19, 31, 23, 10, 3, 20, 17, 2),         # portrait, odd crop, alpha 3
    (1, 40, 17, 29, 32, 4, 17, 15, 0),         # MMAction2 8x8: slow 0, 4, ..., 28 of 32
    (1, 40, 21, 19, 32, 8, None, 19, 1),       # MMAction2 4x16: slow 0, 8, 16, 24
]


def mmaction2_slow(fast: torch.Tensor, alpha: int) -> torch.Tensor:
    """MMAction2 ResNet3dSlowFast.forward: x_slow = interpolate(x, mode='nearest', scale_factor=(1/alpha, 1, 1))."""
    return F.interpolate(fast, mode="nearest", scale_factor=(1.0 / alpha, 1.0, 1.0))


def test_rules_by_hand():
    assert R.slow_frame_indices(32, 4).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert R.slow_frame_indices(32, 4, rule="stride").tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    assert R.slow_frame_indices(32, 8, rule="stride").tolist() == [0, 8, 16, 24]
    assert R.slow_frame_indices(7, 4, rule="stride").tolist() == [0]
    with pytest.raises(ValueError, match="slow_rule"):
        R.slow_frame_indices(32, 4, rule="nearest")


@pytest.mark.parametrize("t,alpha", [(32, 4), (32, 8), (30, 4), (9, 2), (7, 3)])
def test_stride_equals_mmaction2_nearest_resampling(t, alpha):
    fast = torch.randn(1, 3, t, 5, 7, dtype=torch.float64)
    slow, same = R.pack_pathways(fast, alpha, slow_rule="stride")
    assert same is fast
    torch.testing.assert_close(slow, mmaction2_slow(fast, alpha), atol=0, rtol=0)


def _inputs(case):
    n, v, h, w, t, alpha, size, crop, sp = case
    video = torch.randint(0, 256, (v, h, w, 3) if n is None else (n, v, h, w, 3), dtype=torch.uint8)
    index = torch.randint(0, v, (t,))
    return video, index, dict(size=size, crop=crop, spatial_idx=sp), alpha


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_stride_rule_matches_reference(backend, case):
    video, index, kw, alpha = _inputs(case)
    ref_slow, ref_fast = sk.pack_pathways_ref(video, index, alpha, slow_rule="stride", dtype=torch.float64, **kw)
    slow, fast = sk.pack_pathways(video, index, alpha, slow_rule="stride", backend=backend, **kw)
    torch.testing.assert_close(fast.double(), ref_fast, atol=1e-5, rtol=0)
    torch.testing.assert_close(slow.double(), ref_slow, atol=1e-5, rtol=0)
    # the Slow frames are the Fast frames at 0, alpha, 2 * alpha, ... (MMAction2's resampling of its input)
    slow5, fast5 = (x if x.dim() == 5 else x.unsqueeze(0) for x in (slow, fast))
    torch.testing.assert_close(slow5, mmaction2_slow(fast5, alpha), atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stride_rule_with_out_and_channels_last(backend):
    video, index, kw, alpha = _inputs(CASES[1])
    ref = sk.pack_pathways_ref(video, index, alpha, slow_rule="stride", **kw)
    out = tuple(torch.full_like(r, float("nan")) for r in ref)
    sk.pack_pathways(video, index, alpha, slow_rule="stride", out=out, backend=backend, **kw)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=0)
    got = sk.pack_pathways(video, index, alpha, slow_rule="stride", channels_last=True, backend=backend, **kw)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_slow_rule_is_named(backend):
    video, index, kw, alpha = _inputs(CASES[0])
    with pytest.raises(ValueError, match="slow_rule: expected one of"):
        sk.pack_pathways(video, index, alpha, slow_rule="nearest", backend=backend)
    with pytest.raises(ValueError, match="slow_rule"):
        sk.pack_pathways_ref(video, index, alpha, slow_rule=None)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", CASES)
def test_stride_rule_cuda_matches_reference(backend, case):
    video, index, kw, alpha = _inputs(case)
    video, index = video.cuda(), index.cuda()
    ref = sk.pack_pathways_ref(video, index, alpha, slow_rule="stride", dtype=torch.float64, **kw)
    got = sk.pack_pathways(video, index, alpha, slow_rule="stride", backend=backend, **kw)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=0)
