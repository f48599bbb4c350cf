"""The CPU temporal Winograd conv (F(4, 3) along time) against float64 conv3d: odd T (partial last tile),
odd channel counts, bias / residual / activation, in-place accumulation into the residual, both input
layouts, the plan's rule, and bad input."""
import pytest
import torch

from slowfast_kernels import _ext
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
    assert not winograd_time_supports(x8.bfloat16(), (256, 1024, 3, 1, 1), *GEOMETRY)
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
