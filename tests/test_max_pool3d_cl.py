"""max_pool3d_cl (the stems' CPU pool where no AMX kernel fuses it): equal to torch's max_pool3d on odd
shapes, both dtypes, every layout, the vector paths (AVX-512 where C is a multiple of 16, AVX2 where of 8)
and the per-channel one, NaN and inf (and the vector paths' NaN detector's false alarms), opcheck, bad input."""
import pytest
import torch

from slowfast_kernels import _ext
from slowfast_kernels.ops.max_pool3d_cl import max_pool3d_cl, supports

pytestmark = pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the kernel is part of the C++ extension")
CL = torch.channels_last_3d
op = torch.ops.slowfast_kernels.max_pool3d_cl if _ext.LOAD_ERROR is None else None

# (N, C, T, H, W, kernel, stride, padding)
SHAPES = [
    (2, 8, 5, 37, 45, (1, 3, 3), (1, 2, 2), (0, 1, 1)),     # the stems' pool, Fast-stem channels, odd sizes
    (1, 64, 3, 11, 14, (1, 3, 3), (1, 2, 2), (0, 1, 1)),    # Slow-stem channels (8 vectors a pixel)
    (1, 5, 4, 9, 10, (1, 3, 3), (1, 2, 2), (0, 1, 1)),      # C not a multiple of 8: the per-channel loop
    (2, 16, 7, 8, 9, (3, 2, 3), (2, 1, 3), (1, 1, 1)),      # a temporal window, uneven strides
    (1, 24, 2, 5, 6, (2, 5, 4), (1, 3, 2), (0, 2, 2)),      # padding at half the kernel
    (1, 3, 1, 1, 1, (1, 1, 1), (1, 1, 1), (0, 0, 0)),       # one pixel
]
IDS = ["fast_stem", "slow_stem", "c5", "temporal", "half_pad", "one_pixel"]


def _x(shape, dtype, layout, seed=0):
    n, c, t, h, w = shape[:5]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, t, h, 2 * w, generator=g).to(dtype)
    if layout == "strided":
        return x[..., ::2]
    x = x[..., :w].contiguous()
    return x.contiguous(memory_format=CL) if layout == "channels_last" else x


@pytest.mark.parametrize("layout", ["channels_last", "ncdhw", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_equals_torch(shape, dtype, layout):
    x = _x(shape, dtype, layout)
    k, s, p = shape[5:]
    truth = torch.nn.functional.max_pool3d(x, k, s, p)
    y = max_pool3d_cl(x, k, s, p)
    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)
    assert torch.equal(y, truth)  # a max selects an input value: exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels", [8, 16, 5], ids=["avx2", "avx512", "per_channel"])
def test_nan_and_inf_propagate_like_torch(dtype, channels):
    x = torch.randn(1, channels, 2, 9, 11).to(dtype).contiguous(memory_format=CL)
    x[0, 1, 0, 3, 3] = float("nan")   # an odd row and column: in four windows
    x[0, 2, 1, 0, 0] = float("inf")   # a corner
    x[0, 0, 1, 8, 10] = -float("inf")
    x[0, 3, 0, 2, 3] = float("nan")
    x[0, 3, 0, 2, 4] = float("inf")   # NaN and inf in one window: NaN
    x[0, 4, 1, 4, 5] = float("inf")   # inf and -inf in one window: inf (the vector paths' sum is NaN there)
    x[0, 4, 1, 5, 5] = -float("inf")
    x[0, 4, 0, 0:3, 0:3] = float("nan")
    x[0, 4, 0, 1, 1] = 1.0            # a NaN first in its windows, then a larger value: NaN
    truth = torch.nn.functional.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    y = max_pool3d_cl(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    # NaN: four windows of channel 1, two of channel 3, four of channel 4; inf: two of channel 4
    assert truth.isnan().sum() == 10 and truth[0, 4, 1].isinf().sum() == 2
    torch.testing.assert_close(y, truth, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels", [8, 16], ids=["avx2", "avx512"])
def test_overflowing_window_sums_keep_the_max(dtype, channels):
    """The vector paths detect a NaN by a running sum: finite values whose sum overflows (to inf, then inf -
    inf) take the exact pass and still give the max."""
    big = torch.finfo(dtype).max
    x = torch.full((1, channels, 1, 6, 6), big, dtype=dtype)
    x[..., 1::2, :] = -big
    x = x.contiguous(memory_format=CL)
    truth = torch.nn.functional.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    assert torch.equal(max_pool3d_cl(x, (1, 3, 3), (1, 2, 2), (0, 1, 1)), truth)


def test_opcheck_and_fallback():
    x = _x(SHAPES[0], torch.float32, "channels_last")[:1, :, :2, :9, :7].contiguous(memory_format=CL)
    torch.library.opcheck(op, (x, [1, 3, 3], [1, 2, 2], [0, 1, 1]))
    # what the kernel does not take (float16 here) falls back to torch's pool, channels_last_3d out
    h = x.half()
    assert supports(h, (1, 3, 3), (1, 2, 2), (0, 1, 1)) is not None
    y = max_pool3d_cl(h, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    assert y.is_contiguous(memory_format=CL)
    assert torch.equal(y, torch.nn.functional.max_pool3d(h, (1, 3, 3), (1, 2, 2), (0, 1, 1)))


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(1, 8, 2, 5, 5, dtype=torch.float16), [1, 3, 3], [1, 2, 2], [0, 1, 1]), "x: expected a float32 or bfloat16"),
    ((torch.zeros(8, 2, 5, 5), [1, 3, 3], [1, 2, 2], [0, 1, 1]), "x: expected a 5-d tensor"),
    ((torch.zeros(1, 8, 2, 5, 5), [1, 3, 3], [1, 2, 2], [0, 2, 1]), "padding: expected at most half the kernel"),
    ((torch.zeros(1, 8, 2, 5, 5), [1, 3, 3], [1, 0, 2], [0, 1, 1]), "kernel, stride: expected positive"),
    ((torch.zeros(1, 8, 2, 2, 5), [1, 5, 3], [1, 2, 2], [0, 1, 1]), "x: spatial size .* too small"),
    ((torch.zeros(1, 8, 2, 5, 5), [3, 3], [1, 2, 2], [0, 1, 1]), "kernel"),
])
def test_bad_input_is_named(args, match):
    with pytest.raises(RuntimeError, match=match):
        op(*args)
