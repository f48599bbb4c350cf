"""The reference against PyTorchVideo itself: same state dict layout, same logits, with PyTorchVideo's default
head (AvgPool3d with a fixed (T, 7, 7) window, stride 1) at 224, 256 and 288.

PyTorchVideo installs from the registry; it imports torchvision only for its detection head
(RoIAlign), which no torchvision CPU build exists for here, so that one import is stubbed.
"""
import pytest
import torch

import slowfast_reference as R
from _checkpoint_fixtures import pytorchvideo_builders, randomize


@pytest.fixture(scope="module")
def ptv():
    builders = pytorchvideo_builders()
    # pytorchvideo is a test dependency (pyproject's [test] extra): its absence is a failure, not a skip.
    assert builders is not None, "pytorchvideo (with fvcore) must be installed: pip install -e '.[test]'"
    return builders


def _softmax_per_position():
    return torch.nn.Softmax(dim=1)  # PyTorchVideo applies it to [N, classes, t, h, w]


@pytest.mark.parametrize("arch,alpha,kernel,size,head_act", [
    ("slowfast_r50_8x8", 4, 7, 224, None),
    ("slowfast_r50_8x8", 4, 7, 256, None),
    ("slowfast_r50_8x8", 4, 7, 288, "softmax"),
    ("slowfast_r50_4x16", 8, 5, 256, "softmax"),
    ("slowfast_r50_8x8", 4, 7, 48, None),    # smaller than the window: both pool globally
])
def test_slowfast_matches_pytorchvideo(ptv, arch, alpha, kernel, size, head_act):
    create_slowfast, _ = ptv
    t_slow = 32 // alpha
    small = size < 224
    theirs = create_slowfast(
        slowfast_fusion_conv_kernel_size=(kernel, 1, 1), slowfast_fusion_conv_stride=(alpha, 1, 1),
        head_pool=torch.nn.AdaptiveAvgPool3d if small else torch.nn.AvgPool3d,
        head_pool_kernel_sizes=((t_slow, 7, 7), (32, 7, 7)),
        head_activation=_softmax_per_position if head_act else None, model_num_class=11,
    ).eval()
    randomize(theirs)
    with torch.no_grad():  # logits of order 1 (random features are large), so the softmax is not one-hot
        theirs.blocks[-1].proj.weight.mul_(2e-3)
    ours = R.build_model(arch, num_classes=11, head_act=head_act).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    clip = torch.randn(1, 3, 32, size, size + 8)  # a wider frame: the width keeps one more position
    x = R.pack_pathways(clip, alpha)
    with torch.no_grad():
        expected = theirs([t.clone() for t in x])
        actual = ours(x)
        pooled_globally = R.build_model(arch, num_classes=11, head_act=head_act, head_pool="global").eval()
        pooled_globally.load_state_dict(theirs.state_dict())
        global_out = pooled_globally(x)
    # AvgPool3d and the permuted Linear run the same kernels in the same order: bit-identical at 224 and
    # below; above, PyTorchVideo's AdaptiveAvgPool3d over positions and our mean sum in different orders.
    tol = 0 if size <= 224 else 1e-6
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)
    if head_act:
        assert expected.max() < 0.99  # informative probabilities, not a saturated one-hot
    if size > 224:  # more than one position: a global pool is not the reference
        assert (global_out - expected).abs().max() > 1e-3 * expected.abs().max()


@pytest.mark.parametrize("size", [224, 256])
def test_slow_r50_matches_pytorchvideo(ptv, size):
    _, create_resnet = ptv
    theirs = create_resnet(
        stem_conv_kernel_size=(1, 7, 7), head_pool_kernel_size=(8, 7, 7),
        stage1_pool=None, stage_conv_a_kernel_size=((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)),
        model_num_class=9,
    ).eval()
    randomize(theirs)
    ours = R.slow_r50_8x8(num_classes=9).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 8, size, size)
    with torch.no_grad():
        # one position at 224: our mean and AvgPool3d sum the 392 values in different orders (fp32 rounding)
        torch.testing.assert_close(ours([x]), theirs(x), rtol=1e-5, atol=1e-5)


def test_train_crop_sets_the_window():
    model = R.slowfast_r50_8x8(train_crop=256)
    assert model.head_pool_kernels() == [(8, 8, 8), (32, 8, 8)]
    assert R.slowfast_r50_8x8().head_pool_kernels() == [(8, 7, 7), (32, 7, 7)]
    assert R.slowfast_r101_16x8().head_pool_kernels() == [(16, 7, 7), (64, 7, 7)]
    assert R.slow_r50_8x8().head_pool_kernels() == [(8, 7, 7)]
    assert R.slowfast_r50_8x8(head_pool="global").head_pool_kernels() is None
    with pytest.raises(ValueError, match="train_crop must be a positive multiple of 32"):
        R.slowfast_r50_8x8(train_crop=200)
    with pytest.raises(ValueError, match="head_pool must be one of"):
        R.slowfast_r50_8x8(head_pool="adaptive")
