"""features(): the pooled per-pathway vectors and their concat, before dropout and the classifier; the
reference's and the fused model's equal; the classifier applied to them gives the logits."""
import pytest
import torch

import slowfast_reference as R
import slowfast_kernels as sk

SIZE = 64


def _inputs(model, batch=2, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    if cfg.slow_only:
        return [torch.randn(batch, 3, cfg.num_frames, size, size, generator=g)]
    return [torch.randn(batch, 3, cfg.num_frames // cfg.alpha, size, size, generator=g),
            torch.randn(batch, 3, cfg.num_frames, size, size, generator=g)]


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    return R.slowfast_r50_8x8().eval()


@pytest.mark.parametrize("size", [64, 96])  # 96: at train_crop 64 the head window leaves 2 x 2 positions
def test_reference_features_give_the_logits(size):
    torch.manual_seed(0)
    model = R.slowfast_r50_8x8(train_crop=64).eval()
    x = _inputs(model, size=size)
    with torch.no_grad():
        f = model.features(x)
        logits = model(x)
    assert f["slow"].shape == (2, 2048) and f["fast"].shape == (2, 256) and f["concat"].shape == (2, 2304)
    torch.testing.assert_close(f["concat"], torch.cat([f["slow"], f["fast"]], dim=1))
    torch.testing.assert_close(model.blocks[-1].proj(f["concat"]), logits, rtol=1e-4, atol=1e-5)


def test_fused_features_equal_the_reference(r50):
    fused = sk.fuse(r50)
    x = _inputs(r50, seed=1)
    with torch.no_grad():
        want = r50.features(x)
    got = fused.features(x)
    assert set(got) == {"slow", "fast", "concat"}
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    logits, both = fused.logits_and_features(x)
    torch.testing.assert_close(logits, fused(x))
    torch.testing.assert_close(both["concat"], got["concat"])


def test_slow_only_features():
    torch.manual_seed(0)
    model = R.slow_r50_8x8(num_classes=5).eval()
    x = _inputs(model, batch=1)
    with torch.no_grad():
        want = model.features(x)
        logits = model(x)
    assert set(want) == {"slow", "concat"} and want["concat"].shape == (1, 2048)
    torch.testing.assert_close(model.blocks[-1].proj(want["concat"]), logits, rtol=1e-4, atol=1e-5)
    got = sk.fuse(model).features(x)
    torch.testing.assert_close(got["concat"], want["concat"], rtol=1e-4, atol=1e-5)


def test_features_check_their_inputs(r50):
    fused = sk.fuse(r50)
    slow, fast = _inputs(r50)
    for model in (r50, fused):
        with pytest.raises(ValueError, match="inputs"):
            model.features([slow, fast[:, :, :5]])
