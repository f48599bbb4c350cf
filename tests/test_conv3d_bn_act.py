"""conv3d_bn_act, fold_bn, Conv3dBNAct and the tuning cache: parity of every backend that runs here
against the eager reference, in every dtype and layout, with residual, activation and out= slices."""
import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels import _ext, tuning
from slowfast_kernels.backends import backend_unavailable_reason

from conftest import requires_cuda

CL = torch.channels_last_3d

# (N, C_in, T, H, W, C_out, kernel, stride, padding, dilation)
SHAPES = [
    (1, 16, 3, 6, 5, 24, (1, 1, 1), 1, 0, 1),            # 1x1x1: the plain-GEMM path
    (2, 5, 4, 7, 9, 7, (3, 1, 1), 1, (1, 0, 0), 1),       # odd channels, temporal kernel
    (1, 6, 2, 9, 8, 10, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1),  # spatial stride 2, odd H/W
    (1, 3, 3, 11, 10, 8, (3, 7, 7), (1, 2, 2), (1, 3, 3), 1),  # stem-like, C_in 3
    (1, 4, 9, 3, 4, 6, (5, 1, 1), (4, 1, 1), (2, 0, 0), 1),  # lateral: time-strided
    (1, 8, 3, 6, 6, 12, (1, 3, 3), 1, (0, 2, 2), (1, 2, 2)),  # dilation
    (2, 20, 2, 5, 3, 33, (1, 1, 1), (1, 2, 2), 0, 1),      # strided 1x1x1 shortcut
]
IDS = ["1x1x1", "3x1x1_odd", "1x3x3_s2", "stem", "lateral", "dilated", "1x1x1_s2"]

# Low precision: the fused result may be off the fp64 truth by 2x eager's own error at that precision.
LOW = (torch.bfloat16, torch.float16)
FP32_RTOL = 1e-4


def runnable(backend, dtype=torch.float32):
    why = backend_unavailable_reason(backend, torch.device("cpu"), "conv3d_bn_act" if backend == "cpu" else None)
    if why is None and backend == "cpu" and dtype == torch.float16 and not torch.ops.mkldnn._is_mkldnn_fp16_supported():
        why = "oneDNN has no float16 convolution on this CPU"
    if why is None and backend == "cpu" and dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        why = "oneDNN has no bfloat16 convolution on this CPU (needs avx512bw/avx512_bf16)"
    return why


def make(shape, dtype=torch.float32, layout=torch.contiguous_format, residual=False, seed=0):
    n, cin, t, h, w, cout, k, s, p, d = shape
    g = torch.Generator().manual_seed(seed)
    k = (k,) * 3 if isinstance(k, int) else k
    x = torch.randn(n, cin, t, h, w, generator=g).to(dtype).contiguous(memory_format=layout)
    weight = torch.randn(cout, cin, *k, generator=g) / (cin * k[0] * k[1] * k[2]) ** 0.5
    bias = torch.randn(cout, generator=g)
    r = None
    if residual:
        ref = sk.conv3d_bn_act_ref(x.double(), weight.double(), None, s, p, d, activation="none")
        r = torch.randn(ref.shape, generator=g).to(dtype).contiguous(memory_format=layout)
    return x, weight, bias, s, p, d, r


def check_close(y, x, weight, bias, s, p, d, r, activation):
    truth = sk.conv3d_bn_act_ref(x.double(), weight.double(), bias.double(), s, p, d,
                                 None if r is None else r.double(), activation)
    if x.dtype == torch.float32:
        torch.testing.assert_close(y.double(), truth, rtol=FP32_RTOL, atol=FP32_RTOL * truth.abs().max().item())
        return
    eager = sk.conv3d_bn_act_ref(x, weight, bias, s, p, d, r, activation)
    eager_err = (eager.double() - truth).abs().max().item()
    err = (y.double() - truth).abs().max().item()
    assert err <= 2 * eager_err + 1e-3, f"{x.dtype}: fused error {err:.3g} > 2x eager's {eager_err:.3g}"


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_parity(shape, dtype, backend):
    why = runnable(backend, dtype)
    if why:
        pytest.skip(why)
    layout = CL if shape[1] % 2 == 0 else torch.contiguous_format
    x, weight, bias, s, p, d, _ = make(shape, dtype, layout)
    y = sk.conv3d_bn_act(x, weight, bias, s, p, d, backend=backend)
    assert y.dtype == dtype
    assert y.is_contiguous(memory_format=layout)
    check_close(y, x, weight, bias, s, p, d, None, "relu")


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL], ids=["ncdhw", "ndhwc"])
@pytest.mark.parametrize("activation", ["relu", "none"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[4]], ids=["1x1x1", "1x3x3_s2", "lateral"])
def test_residual_activation_out_slice(shape, activation, layout, backend):
    why = runnable(backend)
    if why:
        pytest.skip(why)
    x, weight, bias, s, p, d, r = make(shape, torch.float32, layout, residual=True)
    y = sk.conv3d_bn_act(x, weight, bias, s, p, d, residual=r, activation=activation, backend=backend)
    check_close(y, x, weight, bias, s, p, d, r, activation)
    # store into channels [3, 3 + C_out) of a wider NDHWC buffer; the rest stays untouched
    n, cout, to, ho, wo = y.shape
    out = torch.full((n, cout + 7, to, ho, wo), -7.0).contiguous(memory_format=CL)
    view = sk.conv3d_bn_act(x, weight, bias, s, p, d, residual=r, activation=activation, out=out,
                            out_channel_offset=3, backend=backend)
    assert view.data_ptr() == out[:, 3:].data_ptr() and view.shape == y.shape
    torch.testing.assert_close(out[:, 3:3 + cout], y, rtol=FP32_RTOL, atol=1e-5)
    assert (out[:, :3] == -7).all() and (out[:, 3 + cout:] == -7).all()


def test_bias_none_and_scalar_args():
    x, weight, _, s, p, d, _ = make(SHAPES[1])
    for backend in ("cpu", "triton", "reference"):
        if runnable(backend):
            continue
        y = sk.conv3d_bn_act(x, weight, None, s, p, d, backend=backend)
        check_close(y, x, weight, torch.zeros(weight.shape[0]), s, p, d, None, "relu")


def test_fold_bn_exact():
    conv = torch.nn.Conv3d(6, 10, (3, 1, 1), padding=(1, 0, 0), bias=True).double()
    bn = torch.nn.BatchNorm3d(10, eps=1e-3).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3)
        bn.weight.normal_()
        bn.bias.normal_()
    w, b = sk.fold_bn(conv, bn)
    assert w.dtype == torch.float32 and b.dtype == torch.float32 and w.shape == conv.weight.shape
    x = torch.randn(2, 6, 4, 5, 5, dtype=torch.float64)
    want = bn(conv(x))
    got = torch.nn.functional.conv3d(x, w.double(), b.double(), padding=(1, 0, 0))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # bf16 model: folding still happens in fp32 from the stored values
    wb, bb = sk.fold_bn(conv.bfloat16(), bn.bfloat16())
    assert wb.dtype == torch.float32 and bb.dtype == torch.float32


def test_bad_inputs_named():
    x, weight, bias, *_ = make(SHAPES[0])
    with pytest.raises(ValueError, match="x: expected a \\[N, C_in, T, H, W\\]"):
        sk.conv3d_bn_act(x[0], weight, bias)
    with pytest.raises(ValueError, match="weight: expected \\[C_out, 16"):
        sk.conv3d_bn_act(x, weight[:, :3], bias)
    with pytest.raises(ValueError, match="bias: expected a \\[24\\]"):
        sk.conv3d_bn_act(x, weight, bias[:5])
    with pytest.raises(ValueError, match="activation must be one of"):
        sk.conv3d_bn_act(x, weight, bias, activation="gelu")
    with pytest.raises(ValueError, match="stride: expected"):
        sk.conv3d_bn_act(x, weight, bias, stride=(1, 2))
    with pytest.raises(ValueError, match="residual: expected shape"):
        sk.conv3d_bn_act(x, weight, bias, residual=torch.zeros(1, 24, 3, 6, 4))
    with pytest.raises(ValueError, match="out_channel_offset"):
        sk.conv3d_bn_act(x, weight, bias, out=torch.zeros(1, 30, 3, 6, 5), out_channel_offset=10)
    with pytest.raises(ValueError, match="x: expected float32"):
        sk.conv3d_bn_act(x.double(), weight, bias)
    with pytest.raises(ValueError, match="backend must be one of"):
        sk.conv3d_bn_act(x, weight, bias, backend="fastest")
    with pytest.raises(sk.BackendUnavailable, match="cuda"):
        sk.conv3d_bn_act(x, weight, bias, backend="cuda")


@pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the compiled extension is not built")
def test_opcheck_native():
    x, weight, bias, s, p, d, r = make(SHAPES[2], layout=CL, residual=True)
    args = (x, weight, bias, list(s), list(p), [d] * 3 if isinstance(d, int) else list(d))
    for extra in ((None, "relu"), (r, "relu"), (r, "none")):
        torch.library.opcheck(torch.ops.slowfast_kernels.conv3d_bn_act.default, args + extra)


@pytest.mark.skipif(runnable("triton") is not None, reason="triton cannot run here")
def test_opcheck_triton():
    x, weight, bias, s, p, d, r = make(SHAPES[2], layout=CL, residual=True)
    s, p, d = list(s), list(p), [d] * 3
    torch.library.opcheck(torch.ops.slowfast_kernels.conv3d_bn_act_triton.default,
                          (x, weight, bias, s, p, d, r, "relu"))
    out = torch.zeros(1, 14, 2, 5, 4).contiguous(memory_format=CL)
    torch.library.opcheck(torch.ops.slowfast_kernels.conv3d_bn_act_triton_into.default,
                          (x, weight, bias, s, p, d, None, "relu", out, 2))


def test_torch_compile_fullgraph_traces():
    x, weight, bias, s, p, d, _ = make(SHAPES[0], layout=CL)
    fn = torch.compile(lambda a: sk.conv3d_bn_act(a, weight, bias, s, p, d), fullgraph=True, backend="eager")
    torch.testing.assert_close(fn(x), sk.conv3d_bn_act(x, weight, bias, s, p, d), rtol=FP32_RTOL, atol=1e-5)


# -- Conv3dBNAct ---------------------------------------------------------------------------------------

def reference_pair(cin=6, cout=10, k=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)):
    conv = torch.nn.Conv3d(cin, cout, k, stride, padding, bias=False)
    bn = torch.nn.BatchNorm3d(cout)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    return conv, bn


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL], ids=["ncdhw", "ndhwc"])
@pytest.mark.parametrize("backend", ["auto", "triton", "reference"])
def test_module_eval_matches_reference(backend, layout):
    if backend == "triton" and runnable("triton"):
        pytest.skip(runnable("triton"))
    conv, bn = reference_pair()
    m = sk.Conv3dBNAct.from_conv_bn(conv, bn, activation="relu", backend=backend).eval()
    conv.eval(), bn.eval()
    x = torch.randn(2, 6, 3, 9, 7).contiguous(memory_format=layout)
    r = torch.randn(2, 10, 3, 5, 4).contiguous(memory_format=layout)
    with torch.no_grad():
        want = torch.relu(bn(conv(x)) + r)
        got = m(x, residual=r)
        out = torch.zeros(2, 13, 3, 5, 4).contiguous(memory_format=CL)
        view = m(x, residual=r, out=out, out_channel_offset=1)
    torch.testing.assert_close(got, want, rtol=FP32_RTOL, atol=1e-5)
    assert got.is_contiguous(memory_format=layout)
    torch.testing.assert_close(view, want, rtol=FP32_RTOL, atol=1e-5)
    assert (out[:, 0] == 0).all() and (out[:, 11:] == 0).all()


def test_module_train_mode_is_eager_with_autograd():
    conv, bn = reference_pair()
    m = sk.Conv3dBNAct.from_conv_bn(conv, bn).train()
    conv.train(), bn.train()
    x = torch.randn(2, 6, 3, 9, 7)
    want = torch.relu(bn(conv(x)))
    got = m(x)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert m.conv.weight.grad is not None and m.norm.weight.grad is not None
    torch.testing.assert_close(m.norm.running_mean, bn.running_mean)  # batch statistics updated alike
    assert set(m.state_dict()) == {"conv.weight", "norm.weight", "norm.bias", "norm.running_mean",
                                   "norm.running_var", "norm.num_batches_tracked"}


def test_module_cache_follows_parameter_changes():
    conv, bn = reference_pair()
    m = sk.Conv3dBNAct.from_conv_bn(conv, bn).eval()
    x = torch.randn(1, 6, 2, 9, 7).contiguous(memory_format=CL)
    with torch.no_grad():
        y1 = m(x)
        assert torch.equal(m(x), y1)  # cached folding/packing: same result
        m.norm.running_mean.add_(1.0)  # in-place change of a BN statistic
        y2 = m(x)
        m.conv.weight.mul_(2.0)
        y3 = m(x)
    ref = sk.Conv3dBNAct.from_conv_bn(m.conv, m.norm, backend="reference").eval()
    with torch.no_grad():
        torch.testing.assert_close(y3, ref(x), rtol=FP32_RTOL, atol=1e-5)
    assert not torch.equal(y1, y2) and not torch.equal(y2, y3)
    m.train()
    assert m._cache == {}


def test_module_constructor_and_bare_conv():
    m = sk.Conv3dBNAct(4, 6, (3, 1, 1), padding=(1, 0, 0), activation="none", norm=False).eval()
    x = torch.randn(1, 4, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.conv(x), rtol=FP32_RTOL, atol=1e-5)
    with pytest.raises(ValueError, match="activation must be one of"):
        sk.Conv3dBNAct(4, 6, 1, activation="tanh")
    with pytest.raises(ValueError, match="groups=1"):
        sk.Conv3dBNAct.from_conv_bn(torch.nn.Conv3d(4, 4, 1, groups=2))


# -- tuning cache --------------------------------------------------------------------------------------

def test_tuning_cache_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path))
    tuning.clear_cache()
    calls = []
    slow = lambda: (calls.append("slow"), sum(range(20000)))  # noqa: E731
    fast = lambda: calls.append("fast")  # noqa: E731
    key = tuning.make_key("conv3d_bn_act", torch.device("cpu"), torch.float32, (1, 2, 3))
    assert tuning.choose(key, {"slow": slow, "fast": fast}, torch.device("cpu")) == "fast"
    assert (tmp_path / tuning.CACHE_FILE).exists()
    calls.clear()
    assert tuning.choose(key, {"slow": slow, "fast": fast}, torch.device("cpu")) == "fast"
    assert calls == []  # cached: nothing timed again
    tuning._memory.clear()
    tuning._loaded = False  # a new process reads the disk cache
    assert tuning.lookup(key) == "fast"
    tuning.clear_cache()
    assert tuning.lookup(key) is None and not (tmp_path / tuning.CACHE_FILE).exists()


# -- CUDA (skipped here) -------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_parity_cuda(shape, dtype, backend, tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path))
    x, weight, bias, s, p, d, r = make(shape, dtype, CL, residual=True)
    x, weight, bias, r = x.cuda(), weight.cuda(), bias.cuda(), r.cuda()
    y = sk.conv3d_bn_act(x, weight, bias, s, p, d, residual=r, backend=backend)
    check_close(y.cpu(), x.cpu(), weight.cpu(), bias.cpu(), s, p, d, r.cpu(), "relu")
    out = torch.zeros(y.shape[0], y.shape[1] + 4, *y.shape[2:], dtype=dtype, device="cuda").contiguous(memory_format=CL)
    sk.conv3d_bn_act(x, weight, bias, s, p, d, residual=r, out=out, out_channel_offset=4, backend=backend)
    torch.testing.assert_close(out[:, 4:], y)


@requires_cuda
def test_opcheck_cuda():
    x, weight, bias, s, p, d, r = make(SHAPES[2], layout=CL, residual=True)
    args = (x.cuda(), weight.cuda(), bias.cuda(), list(s), list(p), [d] * 3, r.cuda(), "relu")
    torch.library.opcheck(torch.ops.slowfast_kernels.conv3d_bn_act.default, args)
    torch.library.opcheck(torch.ops.slowfast_kernels.conv3d_bn_act_triton.default, args)


@pytest.mark.parametrize("activation", ["relu", "none"])
def test_module_residual_is_scratch_gives_the_same_result(activation):
    """The eval path may accumulate into a scratch residual's memory (oneDNN in place): same values."""
    conv = torch.nn.Conv3d(16, 24, (1, 3, 3), padding=(0, 1, 1), bias=False)
    bn = torch.nn.BatchNorm3d(24).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    module = sk.Conv3dBNAct.from_conv_bn(conv.eval(), bn, activation=activation).eval()
    x = torch.randn(2, 16, 3, 9, 7).contiguous(memory_format=CL)
    residual = torch.randn(2, 24, 3, 9, 7).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = module(x, residual=residual.clone())
        scratch = residual.clone()
        actual = module(x, residual=scratch, residual_is_scratch=True)
        y = bn(conv(x)) + residual
        reference = torch.relu(y) if activation == "relu" else y
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    torch.testing.assert_close(actual, reference, rtol=1e-4, atol=1e-5)
