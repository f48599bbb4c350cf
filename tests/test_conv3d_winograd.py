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


# --- bf16: F(2x2, 3x3) with VDPBF16PS ----------------------------------------------------------------------

from slowfast_kernels import cpu_isa  # noqa: E402
from slowfast_kernels.ops.conv3d_winograd import (WinogradBf16Conv, conv3d_winograd_bf16,  # noqa: E402
                                                  conv3d_winograd_bf16_weight, winograd_bf16_supports,
                                                  winograd_bf16_wins)

NATIVE_BF16 = "avx512_bf16" in cpu_isa.current().flags and "avx512bw" in cpu_isa.current().flags
# The VDPBF16PS path where the CPU has it; the scalar loops everywhere (the path on other CPUs).
PATHS = [pytest.param(False, id="vdpbf16ps", marks=pytest.mark.skipif(not NATIVE_BF16, reason="no AVX512_BF16")),
         pytest.param(True, id="scalar")]
BF16_SHAPES = [
    (2, 19, 3, 7, 9, 37),    # odd C_in (the zero pad channel), masked output tails, partial tiles
    (1, 32, 2, 1, 1, 16),    # one pixel
    (1, 150, 2, 5, 6, 40),   # over 64 channel pairs: the GEMM sums K in blocks
    (2, 19, 3, 26, 26, 37),  # over one block of tiles per thread
    (1, 24, 1, 4, 4, 64),    # fewer tiles than threads x 8: the output channels split between threads
]
BF16_IDS = ["19-37_7x9", "1x1", "150-40_kblocks", "blocks", "co_split"]


def _bf16_truth(x, weight, bias, residual, activation):
    y = torch.nn.functional.conv3d(x.bfloat16().double(), weight.bfloat16().double(), bias.double(),
                                   padding=(0, 1, 1))
    if residual is not None:
        y = y + residual.bfloat16().double()
    return y.relu() if activation == "relu" else y


def _assert_bf16_close(y, truth):
    # F(2x2) in bf16 rounds V to bf16 before the GEMMs: ~2x oneDNN's bf16 conv error (4-5e-3 of the output's
    # range against 2.3-2.5e-3 on the R50 layers, ops/conv3d_winograd.py). 2e-2 leaves room for these small
    # random shapes without hiding a wrong tap or tile (a dropped tap errs ~0.3).
    assert y.dtype == torch.bfloat16 and y.shape == truth.shape and y.is_contiguous(memory_format=CL)
    err = (y.double() - truth).abs().max().item()
    assert err <= 2e-2 * truth.abs().max().item(), err


@pytest.mark.parametrize("portable", PATHS)
@pytest.mark.parametrize("shape", BF16_SHAPES, ids=BF16_IDS)
@pytest.mark.parametrize("activation", ["relu", "none"])
def test_bf16_matches_conv3d(shape, activation, portable):
    x, weight, bias, residual = _case(shape)
    packed = conv3d_winograd_bf16_weight(weight)
    y = conv3d_winograd_bf16(x.bfloat16(), packed, bias, activation, None, portable)  # NCDHW: copied
    _assert_bf16_close(y, _bf16_truth(x, weight, bias, None, activation))
    xr = x.bfloat16().contiguous(memory_format=CL)
    y = conv3d_winograd_bf16(xr, packed, bias, activation, residual.bfloat16(), portable)
    _assert_bf16_close(y, _bf16_truth(x, weight, bias, residual, activation))


@pytest.mark.parametrize("portable", PATHS)
def test_bf16_split_and_blocks_under_one_and_two_threads(portable):
    x, weight, bias, _ = _case((1, 24, 1, 4, 4, 64))
    packed = conv3d_winograd_bf16_weight(weight)
    truth = _bf16_truth(x, weight, bias, None, "relu")
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            _assert_bf16_close(conv3d_winograd_bf16(x.bfloat16(), packed, bias, "relu", None, portable), truth)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("portable", PATHS)
def test_bf16_nan_and_inf_reach_the_output(portable):
    """A non-finite input spreads over its F(2x2) tiles (a superset of eager's positions, DESIGN.md); ReLU keeps
    NaN; every output eager makes non-finite is non-finite here, every other tile stays finite."""
    x, weight, bias, _ = _case((1, 16, 2, 8, 8, 16))
    x[0, 3, 0, 2, 5] = float("nan")
    x[0, 7, 1, 6, 1] = float("inf")
    y = conv3d_winograd_bf16(x.bfloat16(), conv3d_winograd_bf16_weight(weight), bias, "relu", None, portable)
    eager = torch.nn.functional.conv3d(x, weight, bias, padding=(0, 1, 1)).relu()
    assert (~y.float().isfinite())[~eager.isfinite()].all()
    assert y.float().isnan().any()
    assert y[0, :, 0, 6:, 6:].float().isfinite().all() and y[0, :, 1, :2, 4:].float().isfinite().all()


def test_bf16_weight_layout():
    """U as channel pairs: packed[k, c // 2, o, c % 2] = (G g G^T)[o, c, k // 4, k % 4], an odd C_in padded."""
    weight = torch.randn(5, 3, 1, 3, 3)
    G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
    u = (G @ weight.double()[:, :, 0] @ G.t())  # [5, 3, 4, 4]
    packed = conv3d_winograd_bf16_weight(weight)
    assert packed.shape == (16, 2, 5, 2) and packed.dtype == torch.bfloat16
    for k in range(16):
        for c in range(3):
            assert torch.equal(packed[k, c // 2, :, c % 2], u[:, c, k // 4, k % 4].bfloat16())
    assert not packed[:, 1, :, 1].any()  # the pad channel


# The CPU the bf16 F(2x2) rule was measured on (AMD family 25), as the rules see it.
ZEN4 = cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC 9654", frozenset({"avx2", "avx512f", "avx512bw", "avx512_bf16"}),
                      "AVX512", "25", "17")


def test_bf16_runner_and_rule():
    x, weight, bias, residual = _case((1, 20, 2, 5, 6, 12))
    run = WinogradBf16Conv(weight, bias, "relu")
    _assert_bf16_close(run(x.bfloat16(), residual.bfloat16()), _bf16_truth(x, weight, bias, residual, "relu"))
    g = ((1, 1, 1), (0, 1, 1), (1, 1, 1))
    assert winograd_bf16_supports((1, 128, 8, 28, 28), (128, 128, 1, 3, 3), *g, torch.bfloat16)
    assert not winograd_bf16_supports((1, 128, 8, 28, 28), (128, 128, 1, 3, 3), *g, torch.float32)
    zen5 = cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC", ZEN4.flags | {"avx_vnni"}, "AVX512", "26", "2")
    amx = cpu_isa.CpuIsa("GenuineIntel", "Xeon", frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}))
    with cpu_isa.override(ZEN4):
        assert winograd_bf16_wins((1, 128, 8, 28, 28), (128, 128, 1, 3, 3))
        assert winograd_bf16_wins((1, 256, 8, 14, 14), (256, 256, 1, 3, 3))
        assert not winograd_bf16_wins((1, 64, 8, 56, 56), (64, 64, 1, 3, 3))      # even with oneDNN
        assert not winograd_bf16_wins((1, 512, 8, 7, 7), (512, 512, 1, 3, 3))     # even, noisy
        assert not winograd_bf16_wins((1, 32, 32, 14, 14), (32, 32, 1, 3, 3))     # the Fast pathway: slower
    with cpu_isa.override(amx):
        assert not winograd_bf16_wins((1, 128, 8, 28, 28), (128, 128, 1, 3, 3))  # not measured with AMX
    with cpu_isa.override(zen5):  # full-width AVX-512: oneDNN measured faster in the model
        assert not winograd_bf16_wins((1, 128, 8, 28, 28), (128, 128, 1, 3, 3))
        assert not winograd_bf16_wins((1, 256, 8, 14, 14), (256, 256, 1, 3, 3))


def test_bf16_bad_input_is_named():
    x, weight, bias, _ = _case((1, 4, 2, 3, 3, 6))
    packed = conv3d_winograd_bf16_weight(weight)
    ops = torch.ops.slowfast_kernels
    with pytest.raises(RuntimeError, match="x: expected bfloat16"):
        ops.conv3d_winograd_bf16(x, packed, bias, "relu", None)
    with pytest.raises(RuntimeError, match=r"packed: expected conv3d_winograd_bf16_weight's .* \[16, 3, C_out, 2\]"):
        ops.conv3d_winograd_bf16(torch.zeros(1, 6, 2, 3, 3, dtype=torch.bfloat16), packed, bias, "relu", None)
    with pytest.raises(RuntimeError, match=r"bias: expected a contiguous float32 CPU tensor of shape \[6\]"):
        ops.conv3d_winograd_bf16(x.bfloat16(), packed, bias.bfloat16(), "relu", None)
    with pytest.raises(RuntimeError, match="activation: expected 'relu' or 'none'"):
        ops.conv3d_winograd_bf16(x.bfloat16(), packed, bias, "gelu", None)
    with pytest.raises(RuntimeError, match="residual: expected a bfloat16 CPU tensor of shape"):
        ops.conv3d_winograd_bf16(x.bfloat16(), packed, bias, "relu", torch.zeros(1, 6, 2, 3, 3))
    with pytest.raises(RuntimeError, match=r"weight: expected a \[C_out, C_in, 1, 3, 3\] kernel"):
        conv3d_winograd_bf16_weight(torch.zeros(6, 4, 3, 1, 1))
    with pytest.raises(ValueError, match="WinogradBf16Conv: weight: expected"):
        WinogradBf16Conv(torch.zeros(6, 4, 3, 1, 1), None)


def test_bf16_opcheck():
    x, weight, bias, residual = _case((1, 5, 2, 3, 4, 4))
    packed = conv3d_winograd_bf16_weight(weight)
    torch.library.opcheck(torch.ops.slowfast_kernels.conv3d_winograd_bf16,
                          (x.bfloat16(), packed, bias, "relu", residual.bfloat16(), True),
                          test_utils=("test_schema", "test_faketensor"))


def test_fused_bf16_model_takes_it_on_avx512_bf16():
    """With a Zen 4 CPU seen by the rules, the bf16 plan runs Slow res3 / res4 conv_b by F(2x2), and the fused
    bf16 model stays within twice eager bf16's error (test_fuse's bound for bf16)."""
    import slowfast_kernels as sk
    import slowfast_reference as R
    from _checkpoint_fixtures import randomize

    model = randomize(R.slowfast_r50_8x8(num_classes=4)).eval()
    x = R.pack_pathways(torch.randn(1, 3, 32, 64, 64), 4)
    with cpu_isa.override(ZEN4), torch.no_grad():
        fused = sk.fuse(model, dtype=torch.bfloat16)
        actual = fused(x)
        runners = [r for m in fused.modules() for per_part in getattr(m, "_runners", {}).values()
                   for r in per_part.values()]
        exact = model.double()([t.double() for t in x])
        eager = model.float().bfloat16()([t.bfloat16() for t in x]).float()
    model.float()
    assert sum(isinstance(r, WinogradBf16Conv) for r in runners) == 8  # Slow res3 (3) + res4 (5) stride-1 conv_b
    err = (actual.double() - exact).abs().max().item()
    assert err <= 2 * (eager.double() - exact).abs().max().item(), err
