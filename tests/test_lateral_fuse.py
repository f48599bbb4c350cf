"""lateral_fuse: every backend that runs here against the eager reference (forward, out=, autograd),
torch.library.opcheck of the native and Triton ops, the reference model's modes, and bad input."""
import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels.backends import BackendUnavailable, backend_unavailable_reason, triton_interpreter_enabled
from slowfast_reference.lateral import FuseFastToSlow, lateral_channels

from conftest import requires_cuda

MODES = ("time_to_channel", "time_strided_sampling", "time_strided_conv")
CPU_BACKENDS = [b for b in ("cpu", "triton", "reference") if backend_unavailable_reason(b, torch.device("cpu")) is None]

SHAPES = {  # (N, Cs, Cf, T_slow, H, W, alpha, K)
    "r50_8x8_stem": (1, 64, 8, 8, 6, 6, 4, 7),     # real channels and frames, small spatial
    "r50_4x16_res2": (1, 32, 32, 4, 5, 5, 8, 5),
    "res4_cf128": (1, 16, 128, 2, 3, 3, 4, 7),
    "odd": (2, 5, 5, 3, 13, 13, 4, 5),             # T=3, H=W=13, Cf=5
    "odd_alpha8": (1, 7, 3, 3, 5, 9, 8, 7),
}
# Copies are exact; fp32 convs differ from oneDNN/cuDNN only by summation order.
CONV_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4)}


def make_inputs(shape, mode, fusion="concat", dtype=torch.float32, layout="ncdhw", device="cpu", grad=False):
    n, cs, cf, t, h, w, alpha, k = shape
    if fusion == "sum":
        cs = lateral_channels(mode, cf, alpha)
    slow = torch.randn(n, cs, t, h, w, dtype=dtype, device=device)
    fast = torch.randn(n, cf, t * alpha, h, w, dtype=dtype, device=device)
    if layout == "channels_last":
        slow, fast = (x.to(memory_format=torch.channels_last_3d) for x in (slow, fast))
    weight = bias = None
    if mode == "time_strided_conv":
        weight = (torch.randn(2 * cf, cf, k, 1, 1, device=device) / (cf * k) ** 0.5).to(dtype)
        bias = torch.randn(2 * cf, device=device).to(dtype)
    tensors = [slow, fast, weight, bias]
    if grad:
        for x in tensors:
            if x is not None:
                x.requires_grad_(True)
    return tensors, alpha


def assert_matches_reference(out, args, mode, fusion, activation="relu", backend=None):
    slow, fast, weight, bias, alpha = args
    expected = sk.lateral_fuse_ref(slow, fast, mode, alpha, weight, bias, fusion, activation)
    if mode != "time_strided_conv":
        # Triton's interpreter rounds fp32 -> bf16 toward zero (a GPU rounds to nearest): one ulp there.
        inexact = (fusion == "sum" and slow.dtype == torch.bfloat16 and backend == "triton"
                   and triton_interpreter_enabled())
        torch.testing.assert_close(out, expected, atol=0, rtol=2**-7 if inexact else 0)
    elif slow.dtype == torch.float32:
        torch.testing.assert_close(out, expected, **CONV_TOL[torch.float32])
    else:
        # Low precision: at most twice eager PyTorch's own error against an fp32 computation (+ one ulp).
        up = [None if x is None else x.float() for x in (slow, fast, weight, bias)]
        exact = sk.lateral_fuse_ref(up[0], up[1], mode, alpha, up[2], up[3], fusion, activation)
        eager_err = (expected.float() - exact).abs().max().item()
        err = (out.float() - exact).abs().max().item()
        assert err <= 2 * eager_err + 1e-2, (err, eager_err)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last"])
def test_parity_concat(backend, shape, mode, layout):
    (slow, fast, weight, bias), alpha = make_inputs(shape, mode, layout=layout)
    out = sk.lateral_fuse(slow, fast, mode, alpha, weight, bias, backend=backend)
    assert_matches_reference(out, (slow, fast, weight, bias, alpha), mode, "concat")
    if backend != "reference":  # the kernels keep slow's layout; torch.cat picks its own
        assert out.is_contiguous(memory_format=torch.channels_last_3d if layout == "channels_last"
                                 else torch.contiguous_format)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last"])
def test_parity_sum_dtypes(backend, mode, dtype, layout):
    (slow, fast, weight, bias), alpha = make_inputs(SHAPES["odd"], mode, "sum", dtype, layout)
    out = sk.lateral_fuse(slow, fast, mode, alpha, weight, bias, fusion="sum", backend=backend)
    assert_matches_reference(out, (slow, fast, weight, bias, alpha), mode, "sum", backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_time_to_channel_definition_and_activation_none(backend, mode):
    (slow, fast, weight, bias), alpha = make_inputs(SHAPES["odd_alpha8"], mode, dtype=torch.bfloat16)
    out = sk.lateral_fuse(slow, fast, mode, alpha, weight, bias, activation="none", backend=backend)
    expected = sk.lateral_fuse_ref(slow, fast, mode, alpha, weight, bias, activation="none")
    if mode == "time_strided_conv":
        assert (out[:, slow.shape[1]:] < 0).any()  # no ReLU
        assert_matches_reference(out, (slow, fast, weight, bias, alpha), mode, "concat", "none")
        return
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    if mode == "time_to_channel":
        cs, c, a, t = slow.shape[1], fast.shape[1] - 1, alpha - 1, slow.shape[2] - 1
        assert torch.equal(out[:, cs + c * alpha + a, t], fast[:, c, t * alpha + a])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last"])
def test_out_zero_copy(backend, mode, layout):
    """slow already written into out[:, :Cs] by its producer: the op fills only the lateral channels."""
    (slow, fast, weight, bias), alpha = make_inputs(SHAPES["odd"], mode, layout=layout)
    expected = sk.lateral_fuse_ref(slow, fast, mode, alpha, weight, bias)
    fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    buf = torch.full(expected.shape, float("nan")).contiguous(memory_format=fmt)
    cs = slow.shape[1]
    buf[:, :cs] = slow
    res = sk.lateral_fuse(buf[:, :cs], fast, mode, alpha, weight, bias, out=buf, backend=backend)
    assert res.data_ptr() == buf.data_ptr()
    tol = CONV_TOL[torch.float32] if mode == "time_strided_conv" else dict(atol=0, rtol=0)
    torch.testing.assert_close(buf, expected, **tol)
    # slow given separately (not a view of out): copied in.
    buf2 = torch.full(expected.shape, float("nan")).contiguous(memory_format=fmt)
    sk.lateral_fuse(slow, fast, mode, alpha, weight, bias, out=buf2, backend=backend)
    torch.testing.assert_close(buf2, expected, **tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_out_sum_in_place(backend):
    (slow, fast, _, _), alpha = make_inputs(SHAPES["odd"], "time_to_channel", "sum", layout="channels_last")
    expected = sk.lateral_fuse_ref(slow, fast, "time_to_channel", alpha, fusion="sum")
    res = sk.lateral_fuse(slow, fast, "time_to_channel", alpha, fusion="sum", out=slow, backend=backend)
    assert res is slow
    torch.testing.assert_close(slow, expected, atol=0, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_autograd_matches_eager(backend, mode, fusion):
    tensors, alpha = make_inputs(SHAPES["odd"], mode, fusion, grad=True)
    ref_tensors = [None if x is None else x.detach().clone().requires_grad_(True) for x in tensors]
    out = sk.lateral_fuse(*tensors[:2], mode, alpha, *tensors[2:], fusion=fusion, backend=backend)
    expected = sk.lateral_fuse_ref(*ref_tensors[:2], mode, alpha, *ref_tensors[2:], fusion=fusion)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    for name, x, r in zip(("slow", "fast", "weight", "bias"), tensors, ref_tensors):
        if x is not None:
            torch.testing.assert_close(x.grad, r.grad, atol=1e-4, rtol=1e-4, msg=lambda m: f"grad of {name}: {m}")


def _opcheck_cases():
    for mode in MODES:
        for fusion in ("concat", "sum"):
            yield mode, fusion


@pytest.mark.parametrize("mode,fusion", list(_opcheck_cases()))
@pytest.mark.parametrize("op", ["native", "triton"])
def test_opcheck(op, mode, fusion):
    backend = "cpu" if op == "native" else "triton"
    if backend not in CPU_BACKENDS:
        pytest.skip(f"{backend}: {backend_unavailable_reason(backend, torch.device('cpu'))}")
    name = "lateral_fuse" if op == "native" else "lateral_fuse_triton"
    (slow, fast, weight, bias), alpha = make_inputs((1, 4, 3, 2, 3, 5, 4, 3), mode, fusion, grad=True)
    args = (slow, fast, mode, alpha, weight, bias, fusion, "relu")
    torch.library.opcheck(getattr(torch.ops.slowfast_kernels, name).default, args)
    out = sk.lateral_fuse_ref(*[x.detach() if isinstance(x, torch.Tensor) else x for x in args])
    plain = tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in args)
    torch.library.opcheck(getattr(torch.ops.slowfast_kernels, name + "_out").default,
                          plain + (torch.empty_like(out),))


@pytest.mark.parametrize("mode", MODES)
def test_reference_module_swaps_for_lateral_fuse(mode):
    """FuseFastToSlow (eval, BN folded into the conv) and lateral_fuse give the same result."""
    cf, alpha = 8, 4
    mod = FuseFastToSlow(mode, cf, alpha, kernel_size=7).eval()
    weight = bias = None
    if mode == "time_strided_conv":
        bn = mod.norm
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = (mod.conv_fast_to_slow.weight * scale[:, None, None, None, None]).detach()
        bias = (bn.bias - bn.running_mean * scale).detach()
    slow, fast = torch.randn(2, 16, 3, 7, 7), torch.randn(2, cf, 12, 7, 7)
    with torch.no_grad():
        expected = mod([slow, fast])[0]
        for backend in CPU_BACKENDS:
            out = sk.lateral_fuse(slow, fast, mode, alpha, weight, bias, backend=backend)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_backend_choice():
    (slow, fast, _, _), alpha = make_inputs(SHAPES["odd"], "time_to_channel", dtype=torch.float64)
    out = sk.lateral_fuse(slow, fast, "time_to_channel", alpha)  # auto: the kernels take no float64
    torch.testing.assert_close(out, sk.lateral_fuse_ref(slow, fast, "time_to_channel", alpha))
    if "cpu" in CPU_BACKENDS:
        with pytest.raises(BackendUnavailable, match="float32, bfloat16 or float16"):
            sk.lateral_fuse(slow, fast, "time_to_channel", alpha, backend="cpu")


def test_bad_inputs_named():
    s, f = torch.randn(1, 4, 2, 5, 5), torch.randn(1, 2, 7, 5, 5)
    with pytest.raises(ValueError, match="fast has 7 frames, expected alpha"):
        sk.lateral_fuse(s, f, "time_to_channel", 4)
    with pytest.raises(ValueError, match="mode must be one of"):
        sk.lateral_fuse(s, f, "time_warp", 4)
    with pytest.raises(ValueError, match="slow: expected"):
        sk.lateral_fuse(s[0], f, "time_to_channel", 4)
    f8 = torch.randn(1, 2, 8, 5, 5)
    with pytest.raises(ValueError, match="batch, H and W must match"):
        sk.lateral_fuse(s, f8[..., :4], "time_to_channel", 4)
    with pytest.raises(ValueError, match="batch, H and W must match"):
        sk.lateral_fuse(s, torch.randn(2, 2, 8, 5, 5), "time_to_channel", 4)
    with pytest.raises(ValueError, match="expected one dtype"):
        sk.lateral_fuse(s, f8.double(), "time_to_channel", 4)
    with pytest.raises(ValueError, match="expected one device"):
        sk.lateral_fuse(s, f8.to("meta"), "time_to_channel", 4)
    with pytest.raises(ValueError, match="fusion must be one of"):
        sk.lateral_fuse(s, f8, "time_to_channel", 4, fusion="max")
    with pytest.raises(ValueError, match="fusion='sum' needs as many lateral channels"):
        sk.lateral_fuse(s, f8, "time_to_channel", 4, fusion="sum")
    with pytest.raises(ValueError, match="weight: time_strided_conv needs"):
        sk.lateral_fuse(s, f8, "time_strided_conv", 4)
    with pytest.raises(ValueError, match="K must be odd"):
        sk.lateral_fuse(s, f8, "time_strided_conv", 4, torch.randn(4, 2, 4, 1, 1))
    with pytest.raises(ValueError, match="bias: expected"):
        sk.lateral_fuse(s, f8, "time_strided_conv", 4, torch.randn(4, 2, 5, 1, 1), torch.randn(3))
    with pytest.raises(ValueError, match="weight/bias"):
        sk.lateral_fuse(s, f8, "time_to_channel", 4, torch.randn(4, 2, 5, 1, 1))
    with pytest.raises(ValueError, match="alpha"):
        sk.lateral_fuse(s, f8, "time_to_channel", 0)
    with pytest.raises(ValueError, match="out: expected shape"):
        sk.lateral_fuse(s, f8, "time_to_channel", 4, out=torch.empty(1, 11, 2, 5, 5))
    with pytest.raises(RuntimeError, match="out= does not support autograd"):
        sk.lateral_fuse(s.requires_grad_(), f8, "time_to_channel", 4, out=torch.empty(1, 12, 2, 5, 5))


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the compiled extension is not built")
def test_native_op_validates_itself():
    s, f = torch.randn(1, 4, 2, 5, 5), torch.randn(1, 2, 7, 5, 5)
    op = torch.ops.slowfast_kernels.lateral_fuse
    with pytest.raises(RuntimeError, match="fast: expected alpha"):
        op(s, f, "time_to_channel", 4, None, None, "concat", "relu")
    with pytest.raises(RuntimeError, match="mode: expected"):
        op(s, f[:, :, :8], "warp", 4, None, None, "concat", "relu")
    with pytest.raises(RuntimeError, match="out: expected shape"):
        torch.ops.slowfast_kernels.lateral_fuse_out(s, torch.randn(1, 2, 8, 5, 5), "time_to_channel", 4, None, None,
                                                    "concat", "relu", torch.empty(1, 4, 2, 5, 5))


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last"])
def test_parity_cuda(backend, shape, mode, dtype, layout):
    (slow, fast, weight, bias), alpha = make_inputs(shape, mode, dtype=dtype, layout=layout, device="cuda")
    out = sk.lateral_fuse(slow, fast, mode, alpha, weight, bias, backend=backend)
    assert_matches_reference(out, (slow, fast, weight, bias, alpha), mode, "concat")
    cs = slow.shape[1]
    buf = torch.empty_like(out)
    buf[:, :cs] = slow
    sk.lateral_fuse(buf[:, :cs], fast, mode, alpha, weight, bias, out=buf, backend=backend)
    torch.testing.assert_close(buf, out, atol=0, rtol=0)


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("mode", MODES)
def test_autograd_and_opcheck_cuda(backend, mode):
    tensors, alpha = make_inputs(SHAPES["odd"], mode, grad=True, device="cuda")
    ref_tensors = [None if x is None else x.detach().clone().requires_grad_(True) for x in tensors]
    out = sk.lateral_fuse(*tensors[:2], mode, alpha, *tensors[2:], backend=backend)
    expected = sk.lateral_fuse_ref(*ref_tensors[:2], mode, alpha, *ref_tensors[2:])
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    for x, r in zip(tensors, ref_tensors):
        if x is not None:
            torch.testing.assert_close(x.grad, r.grad, atol=2e-3, rtol=2e-3)
    name = "lateral_fuse" if backend == "cuda" else "lateral_fuse_triton"
    torch.library.opcheck(getattr(torch.ops.slowfast_kernels, name).default,
                          (*tensors[:2], mode, alpha, *tensors[2:], "concat", "relu"))


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last"])
def test_parity_sum_and_no_activation_cuda(backend, mode, dtype, layout):
    (slow, fast, weight, bias), alpha = make_inputs(SHAPES["odd"], mode, "sum", dtype, layout, device="cuda")
    out = sk.lateral_fuse(slow, fast, mode, alpha, weight, bias, fusion="sum", backend=backend)
    assert_matches_reference(out, (slow, fast, weight, bias, alpha), mode, "sum", backend=backend)
    (slow, fast, weight, bias), alpha = make_inputs(SHAPES["odd_alpha8"], mode, dtype=dtype, layout=layout,
                                                    device="cuda")
    out = sk.lateral_fuse(slow, fast, mode, alpha, weight, bias, activation="none", backend=backend)
    assert_matches_reference(out, (slow, fast, weight, bias, alpha), mode, "concat", "none", backend=backend)
