"""The CPU temporal Winograd conv (F(4, 3) along time) against float64 conv3d: odd T (partial last tile),
odd channel counts, bias / residual / activation, in-place accumulation into the residual, both input
layouts, the plan's rule, and bad input. Its bf16 form (F(2, 3)): the runner against float64, each transform
bit for bit against torch's own bf16 rounding (AVX-512 and scalar), NaN through ReLU, the rule per ISA."""
import pytest
import torch

from slowfast_kernels import _ext, cpu_isa
from slowfast_kernels.ops.conv3d_winograd_time import (WinogradTimeConv, conv3d_winograd_time,
                                                       winograd_time_supports, winograd_time_wins)

pytestmark = pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the kernel is in the C++ extension")
CL = torch.channels_last_3d
GEOMETRY = ((1, 1, 1), (1, 0, 0), (1, 1, 1))


def _case(n, cin, t, h, w, cout, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, t, h, w, generator=g)
    weight = torch.randn(cout, cin, 3, 1, 1, generator=g) / (3 * cin) ** 0.5
    return x, weight, torch.randn(cout, generator=g), torch.randn(n, cout, t, h, w, generator=g)


def _truth(x, weight, bias, residual, activation):
    y = torch.nn.functional.conv3d(x.double(), weight.double(), None if bias is None else bias.double(),
                                   padding=(1, 0, 0))
    if residual is not None:
        y = y + residual.double()
    return y.relu() if activation == "relu" else y


def _assert_close(y, truth):
    # F(4, 3)'s transforms scale values by up to 8 before they cancel: fp32 error ~4e-6 of the output's range
    # on these shapes (oneDNN's direct conv: ~2e-6); 3e-5 leaves room without hiding a wrong tap or frame.
    assert y.shape == truth.shape and y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
    err = (y.double() - truth).abs().max().item()
    assert err <= 3e-5 * truth.abs().max().item(), err


@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 8, 11])
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last"])
@pytest.mark.parametrize("activation", ["relu", "none"])
def test_matches_conv3d(t, layout, activation):
    x, weight, bias, _ = _case(2, 19, t, 5, 3, 37)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    _assert_close(conv3d_winograd_time(x, weight, bias, activation), _truth(x, weight, bias, None, activation))


@pytest.mark.parametrize("scratch", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_runner_residual_and_in_place(scratch, bias):
    x, weight, b, r = _case(1, 23, 7, 3, 4, 17)
    b = b if bias else None
    r = r.contiguous(memory_format=CL)
    truth = _truth(x, weight, b, r, "relu")
    runner = WinogradTimeConv(weight, b, *GEOMETRY, "relu", x.contiguous(memory_format=CL))
    r_in = r.clone()
    y = runner(x.contiguous(memory_format=CL), r_in, scratch)
    _assert_close(y, truth)
    assert (y.data_ptr() == r_in.data_ptr()) == scratch  # scratch: accumulated into the residual's memory
    if not scratch:
        assert torch.equal(r_in, r)


def test_every_output_written():
    """Each output frame comes from exactly one tile, also in a partial last tile: NaN poison never leaks."""
    x, weight, b, _ = _case(1, 8, 6, 2, 3, 5)
    out = torch.full((1, 5, 6, 2, 3), float("nan")).contiguous(memory_format=CL)
    m = [torch.mm(v, u) for v, u in zip(torch.ops.slowfast_kernels.winograd_time_input(x),
                                        torch.ops.slowfast_kernels.conv3d_winograd_time_weight(weight))]
    torch.ops.slowfast_kernels.winograd_time_output(m, b, "none", None, out)
    _assert_close(out, _truth(x, weight, b, None, "none"))


def test_rule():
    x8 = torch.empty(1, 1024, 8, 14, 14)
    assert winograd_time_wins(x8, (256, 1024, 3, 1, 1), *GEOMETRY)
    assert not winograd_time_wins(x8[:, :64], (32, 64, 3, 1, 1), *GEOMETRY)  # memory bound: oneDNN
    assert not winograd_time_wins(torch.empty(1, 1024, 6, 14, 14), (256, 1024, 3, 1, 1), *GEOMETRY)  # T % 4
    assert winograd_time_supports(x8.bfloat16(), (256, 1024, 3, 1, 1), *GEOMETRY)  # F(2, 3)
    assert not winograd_time_supports(x8.double(), (256, 1024, 3, 1, 1), *GEOMETRY)
    assert not winograd_time_supports(x8, (256, 1024, 3, 1, 1), (2, 1, 1), (1, 0, 0), (1, 1, 1))
    assert not winograd_time_supports(x8, (256, 1024, 1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1))


def test_bad_input():
    x, weight, b, _ = _case(1, 4, 4, 2, 2, 3)
    with pytest.raises(ValueError, match="x: expected a float32 CPU tensor"):
        conv3d_winograd_time(x.double(), weight, b)
    with pytest.raises(ValueError, match=r"weight: expected \[C_out, 4, 3, 1, 1\]"):
        conv3d_winograd_time(x, weight[:, :3], b)
    with pytest.raises(ValueError, match="weight: expected"):
        conv3d_winograd_time(x, torch.randn(3, 4, 1, 3, 3), b)
    packed = torch.ops.slowfast_kernels.conv3d_winograd_time_weight(weight)
    with pytest.raises(RuntimeError, match="bias: expected a contiguous float32 CPU tensor of shape \\[3\\]"):
        torch.ops.slowfast_kernels.conv3d_winograd_time(x, packed, torch.zeros(5), "relu", None)
    with pytest.raises(RuntimeError, match="activation: expected relu or none"):
        torch.ops.slowfast_kernels.conv3d_winograd_time(x, packed, b, "gelu", None)
    with pytest.raises(RuntimeError, match="residual: expected a float32 CPU tensor of shape"):
        torch.ops.slowfast_kernels.conv3d_winograd_time(x, packed, b, "relu", torch.zeros(1, 3, 4, 2, 3))
    with pytest.raises(RuntimeError, match="packed: expected a float32 CPU \\[6, 4, C_out\\]"):
        torch.ops.slowfast_kernels.conv3d_winograd_time(x, packed[:, :3], b, "relu", None)
    with pytest.raises(RuntimeError, match="out: expected a channels_last_3d float32"):
        torch.ops.slowfast_kernels.winograd_time_output([torch.zeros(8, 3)] * 6, b, "relu", None,
                                                       torch.zeros(1, 3, 4, 2, 2))


def test_opcheck():
    x, weight, b, r = _case(1, 5, 5, 2, 3, 4)
    packed = torch.ops.slowfast_kernels.conv3d_winograd_time_weight(weight)
    torch.library.opcheck(torch.ops.slowfast_kernels.conv3d_winograd_time, (x, packed, b, "relu", r),
                          test_utils=("test_schema", "test_faketensor"))


def test_fused_model_takes_it_for_the_wide_temporal_layers():
    """The CPU plan picks the kernel for SlowFast's wide 3x1x1 layers, and the fused model stays exact."""
    import slowfast_kernels as sk
    import slowfast_reference as R
    from _checkpoint_fixtures import randomize

    model = randomize(R.slowfast_r50_8x8(num_classes=4)).eval()
    fused = sk.fuse(model)
    x = R.pack_pathways(torch.randn(1, 3, 32, 32, 32), 4)
    with torch.no_grad():
        expected, actual = model(x), fused(x)
    runners = [r for m in fused.modules() for per_part in getattr(m, "_runners", {}).values()
               for r in per_part.values()]
    assert sum(isinstance(r, WinogradTimeConv) for r in runners) >= 10  # Slow res4 + res5 conv a, Fast res4/res5
    assert ((actual - expected).abs().max() / expected.abs().max()).item() < 1e-4


# --- bf16: F(2, 3) ---------------------------------------------------------------------------------------

OPS = torch.ops.slowfast_kernels if _ext.LOAD_ERROR is None else None
ZEN4 = cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC 9654", frozenset({"avx2", "avx512f", "avx512bw", "avx512_bf16"}),
                      "AVX512", "25", "17")


def _bf16_truth(x, weight, bias, residual, activation):
    """float64 conv of the operands as the bf16 runner sees them (x, weight and residual rounded to bf16)."""
    return _truth(x.bfloat16(), weight.bfloat16(), bias, None if residual is None else residual.bfloat16(),
                  activation)


def _assert_bf16_close(y, truth):
    # F(2, 3) in bf16 rounds V and the GEMM products to bf16 besides the output: ~2x the error of oneDNN's
    # bf16 direct conv (4e-3 of the output's range against 2e-3 on the R50 layers). 2e-2 leaves room for
    # these small random shapes without hiding a wrong tap or frame (a dropped tap errs ~0.3).
    assert y.shape == truth.shape and y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=CL)
    err = (y.double() - truth).abs().max().item()
    assert err <= 2e-2 * truth.abs().max().item(), err


@pytest.mark.parametrize("t", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("activation", ["relu", "none"])
def test_bf16_runner_matches_conv3d(t, activation):
    x, weight, bias, _ = _case(2, 19, t, 5, 3, 37)
    x = x.bfloat16()  # NCDHW: the input transform reads it as channels_last_3d
    runner = WinogradTimeConv(weight, bias, *GEOMETRY, activation, x)
    _assert_bf16_close(runner(x), _bf16_truth(x, weight, bias, None, activation))


@pytest.mark.parametrize("scratch", [False, True])
def test_bf16_runner_residual_and_in_place(scratch):
    x, weight, b, r = _case(1, 40, 7, 3, 4, 33)
    x, r = x.bfloat16().contiguous(memory_format=CL), r.bfloat16().contiguous(memory_format=CL)
    truth = _bf16_truth(x, weight, b, r, "relu")
    r_in = r.clone()
    y = WinogradTimeConv(weight, b, *GEOMETRY, "relu", x)(x, r_in, scratch)
    _assert_bf16_close(y, truth)
    assert (y.data_ptr() == r_in.data_ptr()) == scratch
    if not scratch:
        assert torch.equal(r_in, r)


def _transform_input_ref(x):
    """V of F(2, 3) in torch: fp32 differences of the bf16 frames, rounded by torch's own bf16 cast."""
    n, c, t, h, w = x.shape
    tiles = -(-t // 2)
    xp = torch.zeros(n, c, 2 * tiles + 2, h, w)
    xp[:, :, 1:t + 1] = x.float()
    d = [torch.stack([xp[:, :, 2 * i + j] for i in range(tiles)], 1) for j in range(4)]  # [n, tiles, c, h, w]
    v = [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
    return torch.stack([vk.permute(0, 1, 3, 4, 2).reshape(-1, c) for vk in v]).bfloat16()


def _special_values(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    flat = x.view(-1)
    flat[::7] = float("nan")
    flat[3::11] = float("inf")
    flat[5::13] = -float("inf")
    flat[1::17] = 1e38  # sums overflow to inf
    flat[2::19] = 0.0
    return x


@pytest.mark.parametrize("portable", [False, True], ids=["avx512", "scalar"])
@pytest.mark.parametrize("c", [16, 21])  # whole vectors, a masked tail
def test_bf16_input_transform_bit_exact(portable, c):
    x = _special_values((2, c, 5, 3, 2), 1).bfloat16()
    v = OPS.winograd_time_input_bf16(x, portable)
    ref = _transform_input_ref(x)
    assert v.shape == ref.shape and v.dtype == torch.bfloat16
    assert torch.equal(v.isnan(), ref.isnan()) and v.isnan().any() and v.isinf().any()
    assert torch.equal(v.float().nan_to_num(0.5, 7.0, -7.0), ref.float().nan_to_num(0.5, 7.0, -7.0))


@pytest.mark.parametrize("portable", [False, True], ids=["avx512", "scalar"])
@pytest.mark.parametrize("co", [32, 27])
@pytest.mark.parametrize("t", [4, 5])  # the last tile whole / one frame
def test_bf16_output_transform_bit_exact(portable, co, t):
    """y0 = m0 + m1 + m2 + b, y1 = m1 - m2 - m3 + b (fp32, in this order), + residual, ReLU keeping NaN,
    rounded by torch's bf16 cast; a partial last tile writes its one frame only (the rest stays poisoned)."""
    n, h, w = 1, 2, 3
    rows = n * -(-t // 2) * h * w
    m = [_special_values((rows, co), 10 + k).bfloat16() for k in range(4)]
    bias = torch.randn(co)
    residual = _special_values((n, co, t, h, w), 20).bfloat16().contiguous(memory_format=CL)
    out = torch.full((n, co, t, h, w), 12345.0, dtype=torch.bfloat16).contiguous(memory_format=CL)
    OPS.winograd_time_output_bf16(m, bias, "relu", residual, portable, out)
    f = [mk.float() for mk in m]
    y = torch.stack([((f[0] + f[1]) + f[2]) + bias, ((f[1] - f[2]) - f[3]) + bias], 1)  # [rows, 2, co]
    y = y.view(n, -1, h, w, 2, co).permute(0, 5, 1, 4, 2, 3).reshape(n, co, -1, h, w)[:, :, :t]
    y = torch.relu(y + residual.float()).bfloat16()  # torch.relu keeps NaN
    assert torch.equal(out.float().nan_to_num(0.5, 7.0, -7.0), y.float().nan_to_num(0.5, 7.0, -7.0))
    assert torch.equal(out.isnan(), y.isnan()) and out.isnan().any()


def test_bf16_rule_per_isa():
    x = torch.empty(1, 1024, 8, 14, 14, dtype=torch.bfloat16)
    no_bf16 = cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC 9R14", frozenset({"avx2", "avx512f", "avx512bw"}))
    amx = cpu_isa.CpuIsa("GenuineIntel", "Xeon", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile",
                                                            "amx_bf16"}))
    with cpu_isa.override(ZEN4):
        assert winograd_time_wins(x, (256, 1024, 3, 1, 1), *GEOMETRY)
        assert winograd_time_wins(x[:, :256], (512, 256, 3, 1, 1), *GEOMETRY)
        assert not winograd_time_wins(x[:, :128], (256, 128, 3, 1, 1), *GEOMETRY)  # measured slower
        assert not winograd_time_wins(x[:, :256], (128, 256, 3, 1, 1), *GEOMETRY)
    for isa in (no_bf16, amx):  # not measured on AMX; without AVX512_BF16 bf16 convs are slow anyway
        with cpu_isa.override(isa):
            assert not winograd_time_wins(x, (256, 1024, 3, 1, 1), *GEOMETRY)


def test_bf16_bad_input():
    x, weight, b, _ = _case(1, 4, 4, 2, 2, 3)
    with pytest.raises(RuntimeError, match="winograd_time_input_bf16: x: expected bfloat16"):
        OPS.winograd_time_input_bf16(x)
    m = [torch.zeros(4, 3, dtype=torch.bfloat16)] * 4
    out = torch.zeros(1, 3, 4, 2, 2, dtype=torch.bfloat16).contiguous(memory_format=CL)
    with pytest.raises(RuntimeError, match="m: expected 4 tensors"):
        OPS.winograd_time_output_bf16(m[:3], b, "relu", None, False, out)
    with pytest.raises(RuntimeError, match=r"m: expected 4 contiguous bfloat16 CPU tensors of shape \[8, 3\]"):
        OPS.winograd_time_output_bf16(m, b, "relu", None, False, out)
    m = [torch.zeros(8, 3, dtype=torch.bfloat16)] * 4
    with pytest.raises(RuntimeError, match="out: expected a channels_last_3d bfloat16"):
        OPS.winograd_time_output_bf16(m, b, "relu", None, False, out.float())
    with pytest.raises(RuntimeError, match="residual: expected a bfloat16 CPU tensor"):
        OPS.winograd_time_output_bf16(m, b, "relu", out.float(), False, out)
    with pytest.raises(ValueError, match="WinogradTimeConv: x: expected a float32 or bfloat16"):
        WinogradTimeConv(weight, b, (1, 1, 1), (0, 0, 0), (1, 1, 1), "relu", x.bfloat16())


def test_fused_bf16_model_takes_it_on_avx512_bf16():
    """With a Zen 4 CPU seen by the rules, the bf16 plan runs the wide Slow 3x1x1 layers by F(2, 3), and the
    fused bf16 model stays within twice eager bf16's error (test_fuse's bound for bf16)."""
    import slowfast_kernels as sk
    import slowfast_reference as R
    from _checkpoint_fixtures import randomize

    model = randomize(R.slowfast_r50_8x8(num_classes=4)).eval()
    x = R.pack_pathways(torch.randn(1, 3, 32, 32, 32), 4)
    with cpu_isa.override(ZEN4), torch.no_grad():
        fused = sk.fuse(model, dtype=torch.bfloat16)
        actual = fused(x)
        runners = [r for m in fused.modules() for per_part in getattr(m, "_runners", {}).values()
                   for r in per_part.values()]
        exact = model.double()([t.double() for t in x])
        eager = model.float().bfloat16()([t.bfloat16() for t in x]).float()
    model.float()
    assert sum(isinstance(r, WinogradTimeConv) and r.bf16 for r in runners) >= 7  # Slow res4 + res5 conv a
    err = (actual.double() - exact).abs().max().item()
    assert err <= 2 * (eager.double() - exact).abs().max().item(), err
