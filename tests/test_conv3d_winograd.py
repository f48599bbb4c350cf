"""conv3d_winograd (the CPU Winograd 1x3x3 conv): against conv3d in float64 on odd shapes (H, W not multiples
of the tile, odd channel counts), F(4x4) and F(2x2), every layout, bias / residual / activation, into a
poisoned `out`, the runner, opcheck, bad input."""
import pytest
import torch

from slowfast_kernels import _ext
from slowfast_kernels.ops.conv3d_winograd import (WinogradConv, conv3d_winograd, conv3d_winograd_ref,
                                                  conv3d_winograd_weight, winograd_supports, winograd_wins)

pytestmark = pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the kernel is part of the C++ extension")
CL = torch.channels_last_3d

# (N, C_in, T, H, W, C_out)
SHAPES = [
    (2, 19, 3, 7, 9, 37),     # odd channels (masked vector tails), H, W not multiples of 4 or 2
    (2, 37, 3, 13, 11, 19),
    (1, 16, 2, 1, 1, 16),     # one pixel: every tap but the centre is padding
    (2, 5, 3, 2, 3, 33),      # smaller than one F(4x4) tile
    (1, 32, 2, 9, 17, 48),    # whole 16-channel vectors, several tiles per row
    (2, 8, 5, 6, 10, 5),      # fewer than 16 channels in and out (the Fast pathway's res2 has 8)
    (1, 100, 2, 5, 7, 24),    # over 64 input channels: the AVX-512 GEMM sums K in blocks
    (1, 260, 1, 5, 6, 20),    # over 256 input channels: MKL's GEMM instead of the AVX-512 kernel
]
IDS = ["19-37_7x9", "37-19_13x11", "1x1", "2x3", "32-48_9x17", "8-5_6x10", "100-24_5x7", "260-20_5x6"]
# F(4x4, 3x3) in fp32 rounds more than a direct conv (the transforms scale values by up to ~10); both stay
# within these bounds relative to the output's magnitude at these sizes (see ops/conv3d_winograd.py).
TOL = {4: 2e-5, 2: 5e-6}


def _case(shape, seed=0):
    n, cin, t, h, w, cout = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, t, h, w, generator=g)
    weight = torch.randn(cout, cin, 1, 3, 3, generator=g) / (9 * cin) ** 0.5
    bias = torch.randn(cout, generator=g)
    residual = torch.randn(n, cout, t, h, w, generator=g)
    return x, weight, bias, residual


def _layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=CL)
    if layout == "strided":  # channel stride 1, but a gap between pixels: read in place
        wide = torch.zeros(*t.shape[:1], t.shape[1] + 3, *t.shape[2:]).contiguous(memory_format=CL)
        wide[:, :t.shape[1]] = t
        return wide[:, :t.shape[1]]
    return t.contiguous()


def _truth(x, weight, bias, activation, residual):
    return conv3d_winograd_ref(x.double(), weight.double(), None if bias is None else bias.double(), activation,
                               None if residual is None else residual.double())


def assert_close_to_truth(y, truth, tile):
    assert y.shape == truth.shape and y.dtype == torch.float32
    assert y.is_contiguous(memory_format=CL)
    scale = truth.abs().max().item()
    torch.testing.assert_close(y.double(), truth, rtol=0, atol=TOL[tile] * scale)


def assert_matches_conv3d(shape, layout, activation, tile, portable):
    x, weight, bias, residual = _case(shape)
    packed = conv3d_winograd_weight(weight, tile)
    y = conv3d_winograd(_layout(x, layout), packed, bias, activation, portable=portable)
    assert_close_to_truth(y, _truth(x, weight, bias, activation, None), tile)
    y = conv3d_winograd(_layout(x, layout), packed, None, activation, residual=_layout(residual, layout),
                        portable=portable)
    assert_close_to_truth(y, _truth(x, weight, None, activation, residual), tile)


@pytest.mark.parametrize("tile", [4, 2])
@pytest.mark.parametrize("activation", ["relu", "none"])
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_matches_conv3d(shape, layout, activation, tile):
    assert_matches_conv3d(shape, layout, activation, tile, portable=False)


@pytest.mark.parametrize("tile", [4, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_portable_matches_conv3d(shape, tile):
    """The loop the library runs on CPUs without AVX-512."""
    assert_matches_conv3d(shape, "channels_last", "relu", tile, portable=True)


@pytest.mark.parametrize("tile_block", [1, 5, 64])
@pytest.mark.parametrize("tile", [4, 2])
def test_tile_blocks_and_poisoned_out(tile, tile_block):
    """Blocks of tiles that split frames and rows; every element of a NaN-filled out is written."""
    x, weight, bias, residual = _case(SHAPES[1], seed=1)
    out = torch.full((x.shape[0], weight.shape[0], *x.shape[2:]), float("nan")).contiguous(memory_format=CL)
    y = conv3d_winograd(x.contiguous(memory_format=CL), conv3d_winograd_weight(weight, tile), bias, "relu",
                        residual, out=out, tile_block=tile_block)
    assert y is out and not torch.isnan(out).any()
    assert_close_to_truth(out, _truth(x, weight, bias, "relu", residual), tile)


def test_residual_accumulated_in_place():
    x, weight, bias, residual = _case(SHAPES[0])
    truth = _truth(x, weight, bias, "relu", residual)
    acc = residual.contiguous(memory_format=CL)
    y = conv3d_winograd(x, conv3d_winograd_weight(weight), bias, "relu", residual=acc, out=acc)
    assert y.data_ptr() == acc.data_ptr()
    assert_close_to_truth(acc, truth, 4)


@pytest.mark.parametrize("scratch", [False, True])
def test_runner(scratch):
    x, weight, bias, residual = _case(SHAPES[4])
    x, residual = x.contiguous(memory_format=CL), residual.contiguous(memory_format=CL)
    truth = _truth(x, weight, bias, "relu", residual)
    run = WinogradConv(weight, bias, "relu")
    assert_close_to_truth(run(x), _truth(x, weight, bias, "relu", None), 4)
    y = run(x, residual, residual_is_scratch=scratch)
    assert_close_to_truth(y, truth, 4)
    assert (y.data_ptr() == residual.data_ptr()) == scratch


def test_weight_transform_and_opcheck():
    x, weight, bias, residual = _case(SHAPES[3])
    for tile in (4, 2):
        packed = conv3d_winograd_weight(weight, tile)
        assert packed.shape == ((tile + 2) ** 2, weight.shape[1], weight.shape[0]) and packed.is_contiguous()
    ops = torch.ops.slowfast_kernels
    x = x.contiguous(memory_format=CL)
    torch.library.opcheck(ops.conv3d_winograd_weight, (weight, 4))
    torch.library.opcheck(ops.conv3d_winograd, (x, packed, bias, "relu", residual, 0, False))
    out = torch.empty(residual.shape).contiguous(memory_format=CL)
    torch.library.opcheck(ops.conv3d_winograd_out, (x, packed, None, "none", None, 0, False, out))


def test_bad_input_is_named():
    x, weight, bias, residual = _case(SHAPES[0])
    packed = conv3d_winograd_weight(weight)
    with pytest.raises(RuntimeError, match="x: expected float32, got Double"):
        conv3d_winograd(x.double(), packed, bias)
    with pytest.raises(RuntimeError, match="x: expected a 5-d tensor"):
        conv3d_winograd(x[0], packed, bias)
    with pytest.raises(RuntimeError, match=r"packed: expected 18 input channels \(x.s\), got shape \[36, 19, 37\]"):
        conv3d_winograd(x[:, :18], packed, bias)
    with pytest.raises(RuntimeError, match=r"packed: expected conv3d_winograd_weight's \[36 or 16"):
        conv3d_winograd(x, packed[:30], bias)
    with pytest.raises(RuntimeError, match="bias: expected a float32 CPU tensor of shape"):
        conv3d_winograd(x, packed, bias[:3])
    with pytest.raises(RuntimeError, match="residual: expected shape"):
        conv3d_winograd(x, packed, bias, residual=residual[:, :3])
    with pytest.raises(RuntimeError, match="activation: expected 'relu' or 'none', got 'gelu'"):
        conv3d_winograd(x, packed, bias, "gelu")
    with pytest.raises(RuntimeError, match="weight: expected a \\[C_out, C_in, 1, 3, 3\\] kernel"):
        conv3d_winograd_weight(torch.randn(8, 4, 3, 3, 3))
    with pytest.raises(RuntimeError, match="tile: expected 2"):
        conv3d_winograd_weight(weight, 3)
    out = torch.empty(residual.shape)
    with pytest.raises(RuntimeError, match="out: expected a channels_last_3d contiguous tensor"):
        conv3d_winograd(x, packed, bias, out=out)
    with pytest.raises(RuntimeError, match="out: expected shape"):
        conv3d_winograd(x, packed, bias, out=out[:, :, :1].contiguous(memory_format=CL))
    same = torch.randn(2, 19, 3, 7, 9).contiguous(memory_format=CL)
    with pytest.raises(RuntimeError, match="out: must not overlap x"):
        conv3d_winograd(same, conv3d_winograd_weight(torch.randn(19, 19, 1, 3, 3)), None, out=same)
    with pytest.raises(ValueError, match="weight: expected"):
        WinogradConv(torch.randn(8, 4, 3, 3, 3), None)
    with pytest.raises(ValueError, match="tile: expected one of"):
        WinogradConv(weight, None, tile=3)


def test_supports_and_rule():
    w = (256, 256, 1, 3, 3)
    assert winograd_supports((1, 256, 8, 14, 14), w, (1, 1, 1), (0, 1, 1), (1, 1, 1), torch.float32)
    assert not winograd_supports((1, 256, 8, 14, 14), w, (1, 1, 1), (0, 1, 1), (1, 1, 1), torch.bfloat16)
    assert not winograd_supports((1, 256, 8, 14, 14), w, (1, 2, 2), (0, 1, 1), (1, 1, 1), torch.float32)
    assert not winograd_supports((1, 256, 8, 14, 14), (256, 256, 3, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1),
                                 torch.float32)
    assert not winograd_supports((1, 128, 8, 14, 14), w, (1, 1, 1), (0, 1, 1), (1, 1, 1), torch.float32)
    from slowfast_kernels import cpu_isa

    with cpu_isa.override(cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC", frozenset({"avx2", "avx512f"}))):
        assert winograd_wins((1, 256, 8, 14, 14), w)
        assert winograd_wins((1, 32, 8, 14, 14), (32, 32, 1, 3, 3))
        assert not winograd_wins((1, 8, 32, 56, 56), (8, 8, 1, 3, 3))
