"""The fused model's conv runners (slowfast_kernels.plan): every runner variant that runs here against the
eager reference on odd shapes, 3D and through the 2D views of NDHWC memory, with residual and scratch."""
import pytest
import torch

from slowfast_kernels import _ext
from slowfast_kernels.plan import make_runner, view2d_kind

CL = torch.channels_last_3d
NATIVE = pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the cpu backend is the C++ extension")

# (N, C_in, T, H, W, C_out, kernel, stride, padding, dilation), view kind
SHAPES = [
    ((2, 5, 3, 7, 9, 6, (1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1)), "frames"),
    ((1, 6, 5, 9, 8, 4, (1, 3, 3), (1, 2, 2), (0, 1, 1), (1, 1, 1)), "frames"),   # spatial stride 2
    ((1, 7, 9, 5, 3, 5, (3, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1)), "time"),      # temporal kernel, odd T
    ((2, 4, 12, 3, 5, 8, (5, 1, 1), (4, 1, 1), (2, 0, 0), (1, 1, 1)), "time"),     # lateral: time-strided
    ((1, 3, 4, 11, 10, 8, (5, 7, 7), (1, 2, 2), (2, 3, 3), (1, 1, 1)), None),      # stem: no 2D view
    ((1, 9, 2, 4, 6, 3, (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1)), None),        # 1x1x1: a GEMM either way
]


def _case(shape, seed=0):
    n, cin, t, h, w, cout, k, s, p, d = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, t, h, w, generator=g).contiguous(memory_format=CL)
    weight = torch.randn(cout, cin, *k, generator=g) / (cin * k[0] * k[1] * k[2]) ** 0.5
    bias = torch.randn(cout, generator=g)
    return x, weight, bias, s, p, d


def _truth(x, weight, bias, s, p, d, residual, activation):
    y = torch.nn.functional.conv3d(x.double(), weight.double(), bias.double(), s, p, d)
    if residual is not None:
        y = y + residual.double()
    return torch.relu(y) if activation == "relu" else y


@NATIVE
@pytest.mark.parametrize("variant", ["3d", "2d", "winograd", "winograd_time", "time_gemm"])
@pytest.mark.parametrize("residual,scratch", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("activation", ["relu", "none"])
@pytest.mark.parametrize("shape,kind", SHAPES, ids=[f"{s[6]}s{s[7][1]}t{s[7][0]}" for s, _ in SHAPES])
def test_cpu_runner_matches_conv3d(shape, kind, variant, residual, scratch, activation):
    x, weight, bias, s, p, d = _case(shape)
    assert view2d_kind(weight.shape, s, p, d) == kind
    if variant == "2d" and kind is None:
        with pytest.raises(ValueError, match="variant '2d' needs"):
            make_runner(weight, bias, s, p, d, activation, x, "cpu", variant="2d")
        return
    needs = {"winograd": ((1, 3, 3), (1, 1, 1), (0, 1, 1)), "winograd_time": ((3, 1, 1), (1, 1, 1), (1, 0, 0))}
    k = tuple(weight.shape[2:])
    time_gemm_ok = k[1:] == (1, 1) and k[0] % 2 == 1 and s == (1, 1, 1) and p == ((k[0] - 1) // 2, 0, 0)
    if (variant in needs and (k, s, p) != needs[variant]) or (variant == "time_gemm" and not time_gemm_ok):
        with pytest.raises(ValueError, match=f"variant '{variant}' needs"):
            make_runner(weight, bias, s, p, d, activation, x, "cpu", variant=variant)
        return
    runner = make_runner(weight, bias, s, p, d, activation, x, "cpu", variant=variant)
    out_shape = torch.nn.functional.conv3d(x, weight, None, s, p, d).shape
    r = torch.randn(out_shape).contiguous(memory_format=CL) if residual else None
    truth = _truth(x, weight, bias, s, p, d, r, activation)
    y = runner(x, None if r is None else r.clone(), scratch)
    assert y.shape == truth.shape and y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y.double(), truth, rtol=1e-5, atol=1e-5 * truth.abs().max().item())


@NATIVE
def test_cpu_runner_in_low_precision_within_eager_error():
    x, weight, bias, s, p, d = _case(SHAPES[2][0])
    xb = x.bfloat16()
    truth = _truth(x, weight, bias, s, p, d, None, "relu")
    eager = torch.relu(torch.nn.functional.conv3d(xb, weight.bfloat16(), bias.bfloat16(), s, p, d))
    bound = 2 * (eager.double() - truth).abs().max().item() + 1e-6
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bfloat16 convolution on this CPU")
    for variant in ("3d", "2d", "time_gemm"):
        y = make_runner(weight, bias, s, p, d, "relu", xb, "cpu", variant=variant)(xb)
        assert (y.double() - truth).abs().max().item() <= bound


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("scratch", [False, True])
def test_time_gemm_on_odd_shapes_in_bf16_with_residual_and_nan(scratch, with_bias):
    """TimeGemmConv (K GEMMs over the [N, T*H*W, C] view) against float64: batch 2, odd T/H/W, K = 1, 3, 5,
    with and without bias; a scratch residual is accumulated into (the result is its memory), another is
    added and left as it was; a NaN in x reaches exactly the output frames whose taps read it, through the
    ReLU."""
    for n, cin, t, h, w, cout, kt in ((2, 32, 5, 3, 7, 24, 3), (1, 16, 3, 5, 5, 16, 1), (3, 8, 7, 2, 3, 40, 5)):
        g = torch.Generator().manual_seed(kt)
        x = torch.randn(n, cin, t, h, w, generator=g).bfloat16().contiguous(memory_format=CL)
        weight = (torch.randn(cout, cin, kt, 1, 1, generator=g) / (cin * kt) ** 0.5).bfloat16().float()
        bias = torch.randn(cout, generator=g).bfloat16().float() if with_bias else None
        r = torch.randn(n, cout, t, h, w, generator=g).bfloat16().contiguous(memory_format=CL)
        runner = make_runner(weight, bias, (1, 1, 1), (kt // 2, 0, 0), (1, 1, 1), "relu", x, "cpu",
                             variant="time_gemm")
        truth = _truth(x.float(), weight, torch.zeros(cout) if bias is None else bias, (1, 1, 1),
                       (kt // 2, 0, 0), (1, 1, 1), r.float(), "relu")
        given = r.clone()
        y = runner(x, given, residual_is_scratch=scratch)
        assert y.shape == truth.shape and y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=CL)
        assert (y.data_ptr() == given.data_ptr()) == scratch and (scratch or torch.equal(given, r))
        # each of the kt partial sums and the residual add round to bf16 (relative 2^-9 each), and the bias add
        # where it is a pass of its own (into a scratch residual): bounded by the sum of absolute terms,
        # conv(|x|, |W|) + |r| + |b|, times 2^-8 per rounding (a 2x margin)
        scale = torch.nn.functional.conv3d(x.double().abs(), weight.double().abs(), None, 1, (kt // 2, 0, 0))
        scale = scale + r.double().abs() + (0 if bias is None else bias.double().abs().view(1, -1, 1, 1, 1))
        bound = 2 ** -8 * (kt + 1 + (scratch and with_bias)) * scale
        assert ((y.double() - truth).abs() <= bound).all()
        x_nan = x.clone()
        x_nan[0, 0, t // 2, 0, 0] = float("nan")
        y = runner(x_nan, r.clone(), residual_is_scratch=scratch)
        frames = [f for f in range(t) if abs(f - t // 2) <= kt // 2]
        assert y[0, :, frames, 0, 0].isnan().all() and y.isnan().sum() == cout * len(frames)


def test_reference_backend_runner_and_2d_refusal():
    x, weight, bias, s, p, d = _case(SHAPES[0][0])
    y = make_runner(weight, bias, s, p, d, "relu", x, "reference")(x)
    truth = _truth(x, weight, bias, s, p, d, None, "relu")
    torch.testing.assert_close(y.double(), truth, rtol=1e-5, atol=1e-5 * truth.abs().max().item())
    with pytest.raises(ValueError, match="the cpu or cuda backend"):
        make_runner(weight, bias, s, p, d, "relu", x, "reference", variant="2d")
    ncdhw = x.contiguous()  # the views are copies unless the input is channels_last_3d
    with pytest.raises(ValueError, match="channels_last_3d"):
        make_runner(weight, bias, s, p, d, "relu", ncdhw, "cpu", variant="2d")


@NATIVE
def test_folded_conv_keeps_the_last_shapes_and_shares_shape_independent_weights():
    """An LRU of max_cached_shapes input signatures per layer; the Winograd transformed filter (independent of
    the input shape) is one tensor for every shape's runner, oneDNN's packed weight is per shape."""
    from slowfast_kernels import cpu_isa
    from slowfast_kernels.ops.conv3d_winograd import WinogradConv
    from slowfast_kernels.plan import FoldedConv

    # the avx512 tier's rule (Winograd from 32 channels), whatever this CPU is
    with cpu_isa.override(cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC", frozenset({"avx2", "avx512f"}))):
        _shares_weights(FoldedConv, WinogradConv)


def _shares_weights(FoldedConv, WinogradConv):
    conv = torch.nn.Conv3d(32, 40, (1, 3, 3), padding=(0, 1, 1), bias=False)
    bn = torch.nn.BatchNorm3d(40).eval()
    layer = FoldedConv(conv, bn, "relu", "cpu", max_cached_shapes=2)
    xs = [torch.randn(n, 32, 2, h, h).contiguous(memory_format=CL) for n, h in ((1, 5), (2, 6), (1, 7))]

    def check(x):
        y = layer.run(x)
        with torch.no_grad():
            torch.testing.assert_close(y, torch.relu(bn(conv(x))), rtol=1e-4, atol=1e-4)

    for x in xs[:2]:
        check(x)
    runners = list(layer._runners[None].values())
    assert all(isinstance(r, WinogradConv) for r in runners) and runners[0].packed is runners[1].packed
    check(xs[0])  # a hit: xs[1] becomes the least recently used
    check(xs[2])
    assert layer.cached_shapes() == 2
    assert [tuple(k[0]) for k in layer._runners[None]] == [tuple(xs[0].shape), tuple(xs[2].shape)]
    assert len(layer._shared[None]) == 1
    with pytest.raises(ValueError, match="max_cached_shapes"):
        FoldedConv(conv, bn, "relu", "cpu", max_cached_shapes=0)
