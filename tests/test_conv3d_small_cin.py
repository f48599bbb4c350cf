"""conv3d_small_cin (the stems' CPU conv): against conv3d in float64 on odd shapes, every layout, both the
AVX-512 and the portable path, opcheck, bad input."""
import pytest
import torch

from slowfast_kernels import _ext
from slowfast_kernels.ops.conv3d_small_cin import conv3d_small_cin, small_cin_wins

pytestmark = pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the kernel is part of the C++ extension")
CL = torch.channels_last_3d

# (N, C_in, T, H, W, C_out, kernel, stride, padding)
SHAPES = [
    (3, 3, 7, 37, 45, 8, (5, 7, 7), (1, 2, 2), (2, 3, 3)),     # Fast stem, odd sizes
    (1, 3, 4, 37, 45, 20, (1, 7, 7), (1, 2, 2), (0, 3, 3)),    # Slow-stem kernel, C_out not a multiple of 8
    (2, 1, 3, 9, 11, 5, (3, 5, 5), (1, 2, 2), (0, 0, 2)),      # C_in 1, uneven padding
    (1, 4, 5, 13, 6, 16, (3, 3, 3), (1, 1, 1), (1, 1, 1)),     # C_in 4, stride 1
    (1, 2, 2, 3, 70, 3, (1, 3, 3), (1, 2, 2), (0, 1, 1)),      # a row longer than two 16-column blocks
    (1, 3, 3, 9, 224, 8, (5, 7, 7), (1, 2, 2), (2, 3, 3)),     # the 224 Fast stem's rows: 112 = 3 x 32 + 16
]
IDS = ["fast_stem", "slow_stem_k", "cin1", "cin4_s1", "long_row", "stem_row_224"]


def _case(shape, layout, seed=0):
    n, cin, t, h, w, cout, k, s, p = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, t, h, w, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    elif layout == "strided":
        x = torch.randn(n, cin, t, h, 2 * w, generator=g)[..., ::2]
    weight = torch.randn(cout, cin, *k, generator=g) / (cin * k[0] * k[1] * k[2]) ** 0.5
    bias = torch.randn(cout, generator=g)
    return x, weight, bias, s, p


@pytest.mark.parametrize("portable", [False, True], ids=["native", "portable"])
@pytest.mark.parametrize("activation", ["relu", "none"])
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_matches_conv3d(shape, layout, activation, portable):
    x, weight, bias, s, p = _case(shape, layout)
    truth = torch.nn.functional.conv3d(x.double(), weight.double(), bias.double(), s, p)
    if activation == "relu":
        truth = torch.relu(truth)
    y = conv3d_small_cin(x, weight, bias, s, p, activation=activation, portable=portable)
    assert y.shape == truth.shape and y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y.double(), truth, rtol=1e-5, atol=1e-5 * truth.abs().max().item())


def test_no_bias_and_opcheck():
    x, weight, _, s, p = _case(SHAPES[0], "channels_last")
    x = x[:1, :, :3, :12, :13].contiguous()
    truth = torch.nn.functional.conv3d(x.double(), weight.double(), None, s, p).relu()
    y = conv3d_small_cin(x, weight, None, s, p)
    torch.testing.assert_close(y.double(), truth, rtol=1e-5, atol=1e-5 * truth.abs().max().item())
    torch.library.opcheck(torch.ops.slowfast_kernels.conv3d_small_cin,
                          (x, weight, None, list(s), list(p), "relu", False))


def test_bad_input_is_named():
    x, weight, bias, s, p = _case(SHAPES[0], "ncdhw")
    with pytest.raises(ValueError, match="needs 1 to 4 input channels, got 5"):
        conv3d_small_cin(torch.randn(1, 5, 4, 8, 8), torch.randn(8, 5, 1, 3, 3), None, (1, 1, 1), (0, 1, 1))
    with pytest.raises(ValueError, match="needs float32 CPU tensors"):
        conv3d_small_cin(x.double(), weight, bias, s, p)
    with pytest.raises(ValueError, match=r"needs stride \(1, s, s\)"):
        conv3d_small_cin(x, weight, bias, (2, 2, 2), p)
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        conv3d_small_cin(x[:, :, :, :3, :3], weight, bias, s, (2, 0, 0))
    with pytest.raises(RuntimeError, match="weight: expected 3 input channels"):
        conv3d_small_cin(x, weight[:, :2], bias, s, p)
    with pytest.raises(RuntimeError, match="bias: expected a float32 tensor of shape"):
        conv3d_small_cin(x, weight, bias[:3], s, p)
    with pytest.raises(RuntimeError, match="activation: expected 'relu' or 'none'"):
        conv3d_small_cin(x, weight, bias, s, p, activation="gelu")


def test_rule_takes_few_output_channels_only():
    """The avx512 tier's rule (the CPU faked: it is keyed by the ISA found at run time, tests/test_cpu_isa.py)."""
    from slowfast_kernels import cpu_isa

    x = torch.randn(1, 3, 4, 16, 16)
    with cpu_isa.override(cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC", frozenset({"avx2", "avx512f"}))):
        _rule_checks(x)


def _rule_checks(x):
    assert small_cin_wins(x, (8, 3, 5, 7, 7), (1, 2, 2), (2, 3, 3), (1, 1, 1))        # the Fast stem
    assert not small_cin_wins(x, (64, 3, 1, 7, 7), (1, 2, 2), (0, 3, 3), (1, 1, 1))  # the Slow stem: oneDNN
    assert not small_cin_wins(x.bfloat16(), (8, 3, 5, 7, 7), (1, 2, 2), (2, 3, 3), (1, 1, 1))


# ---- the bf16 kernel (AVX512_BF16 dot products; bf16 models on CPUs without AMX) ----------------------------
from slowfast_kernels import cpu_isa  # noqa: E402
from slowfast_kernels.ops.conv3d_small_cin import conv3d_small_cin_bf16, small_cin_bf16_wins, supports_bf16  # noqa: E402

HAS_BF16 = {"avx512_bf16", "avx512bw"} <= cpu_isa.current().flags
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="the bf16 kernel needs AVX512_BF16 (this CPU has none)")

# (N, C_in, T, H, W, C_out, kernel, stride, padding): stride (1, 2, 2) only
SHAPES_BF16 = [
    (3, 3, 7, 37, 45, 8, (5, 7, 7), (1, 2, 2), (2, 3, 3)),    # Fast stem, odd sizes (odd KW: the masked pair)
    (1, 3, 4, 37, 45, 20, (1, 7, 7), (1, 2, 2), (0, 3, 3)),   # C_out not a multiple of 8, three channel blocks
    (2, 1, 3, 9, 11, 5, (3, 4, 6), (1, 2, 2), (0, 0, 2)),     # C_in 1, even KW, uneven padding
    (1, 4, 5, 13, 6, 16, (3, 3, 3), (1, 2, 2), (1, 1, 1)),    # C_in 4
    (1, 2, 2, 3, 141, 3, (1, 3, 3), (1, 2, 2), (0, 1, 1)),    # a row longer than two 32-column blocks
    (1, 3, 3, 9, 224, 8, (5, 7, 7), (1, 2, 2), (2, 3, 3)),    # the 224 Fast stem's rows: 112 = 3 x 32 + 16
]
IDS_BF16 = ["fast_stem", "cout20", "cin1_even_kw", "cin4", "long_row", "stem_row_224"]


@needs_bf16
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["x_fp32", "x_bf16"])
@pytest.mark.parametrize("activation", ["relu", "none"])
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last", "strided"])
@pytest.mark.parametrize("shape", SHAPES_BF16, ids=IDS_BF16)
def test_bf16_matches_conv3d_of_rounded_operands(shape, layout, activation, x_dtype):
    """Against conv3d in float64 of x and weight rounded to bf16 (what the kernel multiplies, exactly): the
    fp32 sums and the bf16 output rounding are the only differences, <= one bf16 rounding of the result
    (2^-8 relative) plus fp32 accumulation."""
    x, weight, bias, s, p = _case(shape, layout)
    x = x.to(x_dtype)
    truth = torch.nn.functional.conv3d(x.bfloat16().double(), weight.bfloat16().double(), bias.double(), s, p)
    if activation == "relu":
        truth = torch.relu(truth)
    y = conv3d_small_cin_bf16(x, weight, bias, s, p, activation=activation)
    assert y.dtype == torch.bfloat16 and y.shape == truth.shape and y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y.double(), truth, rtol=2 ** -8, atol=1e-5 * truth.abs().max().item())


@needs_bf16
def test_bf16_nan_and_inf_propagate():
    """No data value meets a zero weight (the odd last tap pair is masked): an inf gives inf where conv3d
    does, NaN where it does; the padding stays zero."""
    x, weight, bias, s, p = _case(SHAPES_BF16[0], "ncdhw")
    weight = weight.abs() + 0.01  # positive weights: an inf input gives +inf, not inf - inf
    x[0, 1, 3, 10, 44] = float("inf")  # the last column: read through the masked pair by its neighbours
    x[1, 0, 2, 20, 20] = float("nan")
    truth = torch.nn.functional.conv3d(x.bfloat16().double(), weight.bfloat16().double(), bias.double(), s, p).relu()
    y = conv3d_small_cin_bf16(x, weight, bias, s, p).double()
    assert torch.equal(torch.isinf(y), torch.isinf(truth)) and torch.isinf(truth).any()
    assert torch.equal(torch.isnan(y), torch.isnan(truth)) and torch.isnan(truth).any()
    finite = torch.isfinite(truth)
    torch.testing.assert_close(y[finite], truth[finite], rtol=2 ** -8, atol=1e-5 * truth[finite].abs().max().item())


@needs_bf16
def test_bf16_opcheck_and_bad_input():
    x, weight, bias, s, p = _case(SHAPES_BF16[0], "ncdhw")
    x = x[:1, :, :3, :12, :13].contiguous()
    torch.library.opcheck(torch.ops.slowfast_kernels.conv3d_small_cin_bf16, (x, weight, bias, list(s), list(p), "relu"))
    with pytest.raises(ValueError, match=r"needs stride \(1, 2, 2\)"):
        conv3d_small_cin_bf16(x, weight, bias, (1, 1, 1), p)
    with pytest.raises(ValueError, match="needs float32 or bfloat16 CPU tensors"):
        conv3d_small_cin_bf16(x.double(), weight, bias, s, p)
    with pytest.raises(ValueError, match="1 to 4 input channels"):
        conv3d_small_cin_bf16(torch.randn(1, 5, 4, 8, 8), torch.randn(8, 5, 1, 3, 3), None, s, (0, 1, 1))
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        conv3d_small_cin_bf16(x[:, :, :, :3, :3], weight, bias, s, (2, 0, 0))
    with pytest.raises(RuntimeError, match="bias: expected a float32 tensor of shape"):
        conv3d_small_cin_bf16(x, weight, bias[:3], s, p)
    with pytest.raises(RuntimeError, match="activation: expected 'relu' or 'none'"):
        conv3d_small_cin_bf16(x, weight, bias, s, p, activation="gelu")


def test_bf16_rule():
    """bf16 kernel for <= 16 output channels on the avx512 tier with AVX512_BF16 (the CPU faked); not on AMX
    (the AMX kernel's), nor without AVX512_BF16."""
    x = torch.randn(1, 3, 4, 16, 16)
    zen4 = cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC", frozenset({"avx2", "avx512f", "avx512bw", "avx512_bf16"}))
    amx = cpu_isa.CpuIsa("GenuineIntel", "Xeon", zen4.flags | {"amx_tile", "amx_bf16"})
    plain = cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC", frozenset({"avx2", "avx512f", "avx512bw"}))
    fast, slow = ((8, 3, 5, 7, 7), (1, 2, 2), (2, 3, 3), (1, 1, 1)), ((64, 3, 1, 7, 7), (1, 2, 2), (0, 3, 3), (1, 1, 1))
    with cpu_isa.override(zen4):
        assert small_cin_bf16_wins(x, *fast) == (_ext.LOAD_ERROR is None)
        assert small_cin_bf16_wins(x, *slow) == (_ext.LOAD_ERROR is None)
        assert not small_cin_bf16_wins(x, (96,) + slow[0][1:], *slow[1:])  # past 64 output channels: oneDNN
        assert not small_cin_bf16_wins(x, (8, 3, 5, 7, 7), (1, 1, 1), (2, 3, 3), (1, 1, 1))
    with cpu_isa.override(amx):
        assert not small_cin_bf16_wins(x, *fast)
    with cpu_isa.override(plain):
        assert not small_cin_bf16_wins(x, *fast)
        assert "needs AVX512_BF16" in supports_bf16(x, *fast)
