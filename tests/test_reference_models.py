"""The pure-PyTorch reference: architecture, parameter counts, lateral modes, train and eval."""
import pytest
import torch

import slowfast_reference as R

# Published parameter counts (400 classes); DESIGN.md. slow_r50_8x8: PyTorchVideo model zoo (32.45M).
PARAMS = {
    "slowfast_r50_8x8": 34_566_488,
    "slowfast_r50_4x16": 34_480_216,
    "slowfast_r101_8x8": 62_826_968,
    "slowfast_r101_16x8": 53_774_808,
    "slow_r50_8x8": 32_454_096,
}


def _inputs(model, n=1, size=32, frames=None):
    cfg = model.config
    t = frames or cfg.num_frames
    clip = torch.randn(n, 3, t, size, size)
    return [clip] if cfg.slow_only else R.pack_pathways(clip, cfg.alpha)


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_parameter_count(arch):
    model = R.build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[arch]


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_forward_shape_every_config(arch):
    model = R.build_model(arch, num_classes=7).eval()
    with torch.no_grad():
        out = model(_inputs(model, n=2, size=32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_r101_16x8_temporal_kernels():
    """res4 uses the temporal kernel in its first 6 blocks only (RESNET.NUM_BLOCK_TEMP_KERNEL)."""
    model = R.slowfast_r101_16x8()
    for pathway in range(2):
        blocks = model.blocks[3].multipathway_blocks[pathway].res_blocks
        kernels = [b.branch2.conv_a.kernel_size[0] for b in blocks]
        assert kernels == [3] * 6 + [1] * 17


@pytest.mark.parametrize("lateral", R.LATERAL_MODES)
def test_lateral_modes_concat(lateral):
    model = R.slowfast_r50_8x8(num_classes=5, lateral=lateral).eval()
    with torch.no_grad():
        out = model(_inputs(model, size=32))
    assert out.shape == (1, 5)
    fuse = model.blocks[0].multipathway_fusion
    assert (fuse.conv_fast_to_slow is not None) == (lateral == "time_strided_conv")


def test_sum_fusion_with_equal_channels():
    # time_to_channel with alpha == beta_inv (4x16: alpha 8) adds as many channels as Slow has.
    model = R.slowfast_r50_4x16(num_classes=3, lateral="time_to_channel", fusion="sum").eval()
    assert model.blocks[1].multipathway_blocks[0].res_blocks[0].branch2.conv_a.in_channels == 64
    with torch.no_grad():
        assert model(_inputs(model, size=32)).shape == (1, 3)


@pytest.mark.parametrize("lateral", ["time_strided_conv", "time_strided_sampling"])
def test_sum_fusion_with_unequal_channels_is_refused(lateral):
    with pytest.raises(ValueError, match="fusion='sum'.*channels"):
        R.slowfast_r50_8x8(lateral=lateral, fusion="sum")


def test_bad_arguments():
    with pytest.raises(ValueError, match="lateral must be one of"):
        R.slowfast_r50_8x8(lateral="time_warp")
    with pytest.raises(ValueError, match="head_act"):
        R.slowfast_r50_8x8(head_act="tanh")
    model = R.slowfast_r50_8x8().eval()
    with pytest.raises(ValueError, match="alpha"):
        model([torch.randn(1, 3, 8, 32, 32), torch.randn(1, 3, 30, 32, 32)])
    with pytest.raises(ValueError, match=r"\[slow, fast\]"):
        model(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match=r"\[N, 3, T, H, W\]"):
        model([torch.randn(3, 8, 32, 32), torch.randn(3, 32, 32, 32)])


def test_head_softmax_is_pyslowfast_test_time_probabilities():
    torch.manual_seed(0)
    logits_model = R.slowfast_r50_8x8(num_classes=6).eval()
    prob_model = R.slowfast_r50_8x8(num_classes=6, head_act="softmax").eval()
    prob_model.load_state_dict(logits_model.state_dict())
    x = _inputs(logits_model, n=2)
    with torch.no_grad():
        logits, probs = logits_model(x), prob_model(x)
    torch.testing.assert_close(probs, logits.softmax(-1))
    prob_model.train()
    assert not torch.allclose(prob_model(x).sum(-1), torch.ones(2))  # train mode: logits for the loss


def test_train_mode_uses_batch_stats_and_backprops():
    model = R.slowfast_r50_8x8(num_classes=4).train()
    x = _inputs(model, n=2)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    bn = model.blocks[0].multipathway_blocks[0].norm
    assert bn.num_batches_tracked.item() == 1 and not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_pack_pathways_linspace_semantics():
    frames = torch.arange(32.0).view(1, 32, 1, 1).expand(3, 32, 2, 2)
    slow, fast = R.pack_pathways(frames, 4)
    assert slow[0, :, 0, 0].tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert fast is frames
    batched = R.pack_pathways(frames[None].repeat(2, 1, 1, 1, 1), 8)[0]
    assert batched.shape == (2, 3, 4, 2, 2)
    assert batched[1, 0, :, 0, 0].tolist() == torch.linspace(0, 31, 4).long().float().tolist()
    with pytest.raises(ValueError, match="frames"):
        R.pack_pathways(torch.zeros(3, 4, 4), 4)
    with pytest.raises(ValueError, match="alpha"):
        R.pack_pathways(frames, 0)
