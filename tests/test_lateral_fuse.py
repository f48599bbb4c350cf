"""lateral_fuse parity: every backend that runs here against the eager reference."""
import pytest
import torch

import slowfast_kernels as sk

SHAPES = [  # (N, Cs, Cf, T_slow, H, W, alpha)
    (1, 64, 8, 8, 14, 14, 4),
    (2, 5, 3, 3, 13, 13, 4),   # odd
    (1, 32, 5, 4, 7, 9, 8),    # odd, alpha 8
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_time_to_channel_concat_cpu(shape, dtype):
    n, cs, cf, t, h, w, alpha = shape
    slow = torch.randn(n, cs, t, h, w, dtype=dtype)
    fast = torch.randn(n, cf, t * alpha, h, w, dtype=dtype)
    out = sk.lateral_fuse(slow, fast, "time_to_channel", alpha, backend="cpu")
    torch.testing.assert_close(out, sk.lateral_fuse_ref(slow, fast, "time_to_channel", alpha), rtol=0, atol=0)
    # the definition, element by element, for one entry of each channel origin
    c, a, tt = cf - 1, alpha - 1, t - 1
    assert torch.equal(out[:, cs + c * alpha + a, tt], fast[:, c, tt * alpha + a])
    assert torch.equal(out[:, :cs], slow)


def test_bad_inputs_named():
    s, f = torch.randn(1, 4, 2, 5, 5), torch.randn(1, 2, 7, 5, 5)
    with pytest.raises(ValueError, match="fast has 7 frames, expected alpha"):
        sk.lateral_fuse(s, f, "time_to_channel", 4)
    with pytest.raises(ValueError, match="mode must be one of"):
        sk.lateral_fuse(s, f, "time_warp", 4)
    with pytest.raises(ValueError, match="slow: expected"):
        sk.lateral_fuse(s[0], f, "time_to_channel", 4)
