"""The reference against PyTorchVideo itself: same state dict layout, same logits.

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


@pytest.mark.parametrize("arch,alpha,kernel", [("slowfast_r50_8x8", 4, 7), ("slowfast_r50_4x16", 8, 5)])
def test_slowfast_matches_pytorchvideo(ptv, arch, alpha, kernel):
    create_slowfast, _ = ptv
    theirs = create_slowfast(
        slowfast_fusion_conv_kernel_size=(kernel, 1, 1), slowfast_fusion_conv_stride=(alpha, 1, 1),
        head_pool=torch.nn.AdaptiveAvgPool3d, model_num_class=11,
    ).eval()
    randomize(theirs)
    ours = R.build_model(arch, num_classes=11).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    clip = torch.randn(2, 3, 32, 48, 40)
    x = R.pack_pathways(clip, alpha)
    with torch.no_grad():
        expected = theirs([t.clone() for t in x])
        actual = ours(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_slow_r50_matches_pytorchvideo(ptv):
    _, create_resnet = ptv
    theirs = create_resnet(
        stem_conv_kernel_size=(1, 7, 7), head_pool_kernel_size=(8, 2, 2),
        stage1_pool=None, stage_conv_a_kernel_size=((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)),
        model_num_class=9,
    ).eval()
    randomize(theirs)
    ours = R.slow_r50_8x8(num_classes=9).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 8, 64, 64)  # res5 output 2x2: PyTorchVideo's (8, 2, 2) pool is global
    with torch.no_grad():
        # AvgPool3d and mean() sum the 32 pooled values in different orders: fp32 rounding only.
        torch.testing.assert_close(ours([x]), theirs(x), rtol=1e-5, atol=1e-5)
