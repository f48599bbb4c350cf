"""conv3d_bn_act_maxpool (the stems) and the small-C_in Triton kernels: parity with a float64 eager
conv3d + bias + ReLU + max_pool3d on odd shapes, every output element written, bad input refused, the
module, and the CUDA shape rule of conv3d_bn_act."""
import pytest
import torch
import torch.nn.functional as F

import slowfast_kernels as sk
from slowfast_kernels import tuning
from slowfast_kernels.backends import backend_unavailable_reason
from slowfast_kernels.ops import conv3d_bn_act_maxpool as stem_op
from slowfast_kernels.ops.conv3d_bn_act_maxpool import fuse_pool_rule, small_cin_triton_rule

from conftest import requires_cuda

CL = torch.channels_last_3d
NCDHW = torch.contiguous_format
FAST = dict(kernel=(5, 7, 7), padding=(2, 3, 3))  # Fast stem conv
SLOW = dict(kernel=(1, 7, 7), padding=(0, 3, 3))  # Slow stem conv
FP32_RTOL = 1e-4


def skip_reason(backend, dtype=torch.float32):
    why = backend_unavailable_reason(backend, torch.device("cpu"), "conv3d_bn_act" if backend == "cpu" else None)
    if why is None and backend == "cpu" and dtype == torch.float16 and not torch.ops.mkldnn._is_mkldnn_fp16_supported():
        why = "oneDNN has no float16 convolution on this CPU"
    if (why is None and backend == "cpu" and dtype == torch.bfloat16
            and not torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        why = "oneDNN has no bfloat16 convolution on this CPU"
    return why


def make(stem, n=3, t=7, h=37, w=45, c_in=3, c_out=8, dtype=torch.float32, layout=NCDHW, seed=0):
    """Odd shapes by default (batch 3, T 7, H 37, W 45)."""
    g = torch.Generator().manual_seed(seed)
    k = stem["kernel"]
    x = torch.randn(n, c_in, t, h, w, generator=g).to(dtype).contiguous(memory_format=layout)
    weight = torch.randn(c_out, c_in, *k, generator=g) / (c_in * k[0] * k[1] * k[2]) ** 0.5
    bias = torch.randn(c_out, generator=g)
    return x, weight, bias


def check_close(y, x, weight, bias, stride, padding, activation="relu", pool=stem_op.STEM_POOL):
    kw = dict(activation=activation, pool_kernel=pool[0], pool_stride=pool[1], pool_padding=pool[2])
    truth = sk.conv3d_bn_act_maxpool_ref(x.double(), weight.double(), bias.double(), stride, padding, **kw)
    assert y.shape == truth.shape and y.dtype == x.dtype
    assert y.is_contiguous(memory_format=CL)
    if x.dtype == torch.float32:
        torch.testing.assert_close(y.double(), truth, rtol=FP32_RTOL, atol=FP32_RTOL * truth.abs().max().item())
        return
    # Low precision: within 2x eager's own error against the float64 truth (the flash-attention rule).
    eager = sk.conv3d_bn_act_maxpool_ref(x, weight, bias, stride, padding, **kw)
    eager_err = (eager.double() - truth).abs().max().item()
    err = (y.double() - truth).abs().max().item()
    assert eager_err > 0, "eager is exact here: the rule needs a shape with rounding error"
    assert err <= 2 * eager_err, f"{x.dtype}: error {err:.3g} > 2x eager's {eager_err:.3g}"


needs_triton = pytest.mark.skipif(skip_reason("triton") is not None, reason=str(skip_reason("triton")))


# -- parity --------------------------------------------------------------------------------------------

@needs_triton
@pytest.mark.parametrize("fuse_pool", [True, False], ids=["pool_fused", "pool_separate"])
@pytest.mark.parametrize("stem", [FAST, SLOW], ids=["fast", "slow"])
def test_triton_full_odd_shape(stem, fuse_pool):
    """The issue's shape: batch 3, T 7, H 37, W 45, stride (1, 2, 2), fp32 NCDHW."""
    x, weight, bias = make(stem, c_out=8 if stem is FAST else 20)
    y = sk.conv3d_bn_act_maxpool(x, weight, bias, (1, 2, 2), stem["padding"], fuse_pool=fuse_pool, backend="triton")
    check_close(y, x, weight, bias, (1, 2, 2), stem["padding"])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("layout", [NCDHW, CL], ids=["ncdhw", "ndhwc"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("stem", [FAST, SLOW], ids=["fast", "slow"])
def test_triton_parity(stem, stride, layout, dtype):
    """Every stem kernel x stride x layout x dtype, pool fused; T and batch cut (the interpreter's cost),
    H and W kept odd."""
    t = 3 if stem is FAST else 2
    x, weight, bias = make(stem, n=1, t=t, h=21 if stride == 1 else 37, w=19 if stride == 1 else 45, c_in=3,
                           c_out=8, dtype=dtype, layout=layout)
    s = (1, stride, stride)
    y = sk.conv3d_bn_act_maxpool(x, weight, bias, s, stem["padding"], backend="triton")
    check_close(y, x, weight, bias, s, stem["padding"])


@needs_triton
@pytest.mark.parametrize("c_in,c_out", [(1, 5), (4, 17), (2, 64)])
def test_triton_channel_counts_and_no_relu(c_in, c_out):
    """C_in 1, 2, 4 (the kernel's range), C_out off the padding (5, 17 -> two N tiles at BLOCK_N 16) and 64."""
    x, weight, bias = make(SLOW, n=1, t=2, h=17, w=23, c_in=c_in, c_out=c_out, layout=CL)
    for fuse_pool in (True, False):
        y = sk.conv3d_bn_act_maxpool(x, weight, bias, (1, 2, 2), (0, 3, 3), activation="none", fuse_pool=fuse_pool,
                                     backend="triton")
        check_close(y, x, weight, bias, (1, 2, 2), (0, 3, 3), activation="none")


@needs_triton
def test_triton_other_pool_runs_separately():
    x, weight, bias = make(SLOW, n=1, t=2, h=15, w=13, layout=CL)
    pool = ((1, 2, 2), (1, 2, 2), (0, 0, 0))
    y = sk.conv3d_bn_act_maxpool(x, weight, bias, 1, (0, 3, 3), pool_kernel=pool[0], pool_stride=pool[1],
                                 pool_padding=pool[2], backend="triton")
    check_close(y, x, weight, bias, 1, (0, 3, 3), pool=pool)
    assert not fuse_pool_rule(tuple(weight.shape), x.dtype, pool)


def test_fuse_pool_rule_on_the_stems():
    """The cost model's picks (see fuse_pool_rule): both stems pool fused in the tap-row kernels; the Fast
    stem at column stride 1 (the element-gather kernel) pools separately."""
    bf16, pool = torch.bfloat16, stem_op.STEM_POOL
    assert fuse_pool_rule((8, 3, 5, 7, 7), bf16, pool)
    assert fuse_pool_rule((64, 3, 1, 7, 7), bf16, pool)
    assert fuse_pool_rule((64, 3, 1, 7, 7), torch.float32, pool)
    assert not fuse_pool_rule((8, 3, 5, 7, 7), bf16, pool, (1, 1, 1), (2, 3, 3))
    assert not fuse_pool_rule((64, 3, 1, 7, 7), bf16, ((1, 3, 3), (1, 2, 2), (0, 0, 0)))


# -- the tap-row kernels (4-channel NDHWC input, even W, even column stride) ----------------------------

def tap_rows_module():
    from slowfast_kernels.triton import conv3d_bn_act_maxpool_tap_rows as tap_rows

    return tap_rows


TAP_ROWS_CASES = [  # stem, C_out, fuse_pool, dtype
    pytest.param(FAST, 8, True, torch.bfloat16, id="fast-pool_fused-bf16"),
    pytest.param(FAST, 8, False, torch.float32, id="fast-pool_separate-fp32"),
    pytest.param(FAST, 5, True, torch.float32, id="fast_c5-pool_fused-fp32"),
    pytest.param(FAST, 5, False, torch.float16, id="fast_c5-pool_separate-fp16"),
    pytest.param(SLOW, 20, True, torch.bfloat16, id="slow_c20-pool_fused-bf16"),
    pytest.param(SLOW, 20, False, torch.float32, id="slow_c20-pool_separate-fp32"),
]


@needs_triton
@pytest.mark.parametrize("stem,c_out,fuse_pool,dtype", TAP_ROWS_CASES)
def test_tap_rows_parity(stem, c_out, fuse_pool, dtype):
    """Even W at column stride 2: the tap-row kernels (4 outputs a GEMM row for C_out <= 8, else one), the
    3-channel input copied to 4 channels; odd H, NCDHW for fp32 and NDHWC otherwise."""
    tap_rows = tap_rows_module()
    layout = NCDHW if dtype == torch.float32 else CL
    x, weight, bias = make(stem, n=1 if not fuse_pool else 2, t=3 if stem is FAST else 2, h=23, w=38, c_out=c_out, dtype=dtype, layout=layout)
    assert tap_rows.tap_rows_fit(x.shape, weight.shape, (1, 2, 2), stem["padding"])
    y = sk.conv3d_bn_act_maxpool(x, weight, bias, (1, 2, 2), stem["padding"], fuse_pool=fuse_pool, backend="triton")
    check_close(y, x, weight, bias, (1, 2, 2), stem["padding"])


@needs_triton
def test_tap_rows_interior_and_edge_tiles():
    """A frame wide enough for the conv kernel's unmasked interior tiles next to masked edge tiles; and a
    4-channel NDHWC input (zero 4th channel) with a 4-channel weight, taken as is (no copy)."""
    tap_rows = tap_rows_module()
    x, weight, bias = make(FAST, n=1, t=1, h=38, w=78, c_out=8, layout=CL)
    share = tap_rows.interior_tile_share(38, 78, (19, 39), weight.shape, (1, 2, 2), (2, 3, 3),
                                         tap_rows.INTERPRETER_TAP_ROWS_CONV)
    assert 0 < share < 1
    y = sk.conv3d_bn_act_maxpool(x, weight, bias, (1, 2, 2), (2, 3, 3), fuse_pool=False, backend="triton")
    check_close(y, x, weight, bias, (1, 2, 2), (2, 3, 3))

    x4 = tap_rows.to_tap_rows(x[..., :20, :46])
    assert tap_rows.to_tap_rows(x4) is x4 and (x4[:, 3] == 0).all()
    w4 = torch.cat([weight, torch.randn(8, 1, 5, 7, 7)], dim=1)  # the zero channel makes its weight irrelevant
    y = sk.conv3d_bn_act_maxpool(x4, w4, bias, (1, 2, 2), (2, 3, 3), fuse_pool=True, backend="triton")
    check_close(y, x4, w4, bias, (1, 2, 2), (2, 3, 3))


def test_tap_rows_layout_rules():
    tap_rows = tap_rows_module()
    fast = (8, 3, 5, 7, 7)
    assert tap_rows.tap_rows_fit((32, 3, 32, 224, 224), fast, (1, 2, 2), (2, 3, 3))
    assert not tap_rows.tap_rows_fit((32, 3, 32, 224, 225), fast, (1, 2, 2), (2, 3, 3))  # odd W
    assert not tap_rows.tap_rows_fit((32, 3, 32, 224, 224), fast, (1, 1, 1), (2, 3, 3))  # odd column stride
    assert not tap_rows.tap_rows_fit((32, 5, 32, 224, 224), (8, 5, 5, 7, 7), (1, 2, 2), (2, 3, 3))
    assert tap_rows.tap_rows_geometry(8, 7, 2, 3)["GROUP"] == 4
    # At 224 (conv 112 x 112, pooled 56 x 56): 25 of 49 conv tiles, 4 of 16 pool blocks are interior.
    fast_pool = dict(ROWS=32, COLS=32)  # a pool block size with interior blocks
    assert tap_rows.interior_tile_share(224, 224, (112, 112), fast, (1, 2, 2), (2, 3, 3),
                                        tap_rows.TAP_ROWS_CONV_CONFIGS[4]) == pytest.approx(25 / 49)
    assert tap_rows.interior_tile_share(224, 224, (112, 112), fast, (1, 2, 2), (2, 3, 3), fast_pool,
                                        (56, 56)) == pytest.approx(4 / 16)
    assert tap_rows.tap_rows_geometry(64, 7, 2, 3)["GROUP"] == 1
    assert tap_rows.tap_rows_geometry(8, 11, 2, 3) is None  # 1 + 6 + 11 > 16 and 1 + 11 > 8 columns
    assert tap_rows.tap_rows_geometry(64, 7, 3, 3) is None  # odd column stride
    x = torch.zeros(2, 4, 3, 6, 8, dtype=torch.bfloat16).contiguous(memory_format=CL)
    assert tap_rows.tap_rows_aligned(x) and tap_rows.tap_rows_aligned(x[..., 2:8])
    assert not tap_rows.tap_rows_aligned(x[..., 1:7])  # 8 bytes off a 16-byte boundary
    assert not tap_rows.tap_rows_aligned(x[..., :7])  # odd W
    assert not tap_rows.tap_rows_aligned(x[:, :3])


def test_tap_rows_weight_packing():
    """Output q of a group sees kw at column tap0 + 2q + kw; the zero rows round KD * KH up to ROW_STEP."""
    tap_rows = tap_rows_module()
    weight = torch.randn(5, 3, 2, 3, 7)
    g = tap_rows.tap_rows_geometry(5, 7, 2, 3)
    packed = tap_rows.pack_weight_tap_rows(weight, torch.float32, 2, 3, g, row_step=4)
    assert packed.shape == (8, 64, 32) and (packed[6:] == 0).all()
    cols = packed.reshape(8, 16, 4, 4, 8)  # row, column, channel, output q, slot
    for q in range(4):
        torch.testing.assert_close(cols[:6, 1 + 2 * q:8 + 2 * q, :3, q, :5],
                                   weight.permute(2, 3, 4, 1, 0).reshape(6, 7, 3, 5), rtol=0, atol=0)
    assert cols[:, :, 3].abs().sum() == 0 and cols[..., 5:].abs().sum() == 0


@pytest.mark.parametrize("c_out", [8, 24], ids=["small_cin_kernel", "onednn"])
@pytest.mark.parametrize("layout", [NCDHW, CL], ids=["ncdhw", "ndhwc"])
def test_cpu_and_reference_parity(layout, c_out):
    """The cpu backend: the vectorized small-C_in conv for C_out <= 16, oneDNN above, then max_pool3d."""
    x, weight, bias = make(FAST, n=3, t=7, h=37, w=45, c_out=c_out, layout=layout)
    for backend in ("cpu", "reference"):
        if skip_reason(backend):
            continue
        y = sk.conv3d_bn_act_maxpool(x, weight, bias, (1, 2, 2), (2, 3, 3), backend=backend)
        check_close(y, x, weight, bias, (1, 2, 2), (2, 3, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cpu_low_precision(dtype):
    why = skip_reason("cpu", dtype)
    if why:
        pytest.skip(why)
    x, weight, bias = make(SLOW, n=3, t=2, h=37, w=45, c_out=16, dtype=dtype, layout=CL)
    y = sk.conv3d_bn_act_maxpool(x, weight, bias, (1, 2, 2), (0, 3, 3), backend="cpu")
    check_close(y, x, weight, bias, (1, 2, 2), (0, 3, 3))


# -- every element written -----------------------------------------------------------------------------

@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_element_written(dtype):
    """Poisoned (NaN) outputs, with sentinel channels around the conv's slice: every element of the conv
    slice and of the pooled output is written, nothing outside the slice is."""
    from slowfast_kernels.triton.conv3d_bn_act_maxpool import conv3d_small_cin_maxpool_triton

    x, weight, bias = make(FAST, n=2, t=3, h=37, w=45, c_out=8, dtype=dtype)
    s, p = (1, 2, 2), (2, 3, 3)
    conv = torch.relu(F.conv3d(x.double(), weight.double(), bias.double(), s, p))
    out = torch.full((2, 13, *conv.shape[2:]), float("nan"), dtype=dtype).contiguous(memory_format=CL)
    out[:, :2] = -7
    out[:, 10:] = -7
    view = stem_op.conv3d_small_cin(x, weight, bias, s, p, "relu", out=out, out_channel_offset=2)
    assert view.data_ptr() == out[:, 2:].data_ptr() and not view.isnan().any()
    assert (out[:, :2] == -7).all() and (out[:, 10:] == -7).all()
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # bf16: one rounding of values below ~4 (2**-7 relative)
    torch.testing.assert_close(view.double(), conv, rtol=tol, atol=tol)

    pooled = F.max_pool3d(conv, *stem_op.STEM_POOL)
    y = torch.full(pooled.shape, float("nan"), dtype=dtype).contiguous(memory_format=CL)
    conv3d_small_cin_maxpool_triton(x, weight, bias, s, p, True, conv.shape[3:], y)
    assert not y.isnan().any()
    torch.testing.assert_close(y.double(), pooled, rtol=tol, atol=tol)


@needs_triton
def test_pool_blocks_overlap_in_both_directions():
    """The fused kernel's interpreter blocks emit 7 x 15 pooled outputs: a 29 x 33 pooled map needs 5 x 3
    overlapping blocks, with partial last blocks in both directions."""
    from slowfast_kernels.triton import conv3d_bn_act_maxpool as kern

    rows, cols = kern.INTERPRETER_POOL["ROWS"], kern.INTERPRETER_POOL["COLS"]
    assert (rows // 2 - 1, cols // 2 - 1) == (7, 15)
    x, weight, bias = make(SLOW, n=1, t=1, h=115, w=129, c_out=4, layout=CL)
    y = sk.conv3d_bn_act_maxpool(x, weight, bias, (1, 2, 2), (0, 3, 3), fuse_pool=True, backend="triton")
    assert y.shape[3:] == (29, 33)
    check_close(y, x, weight, bias, (1, 2, 2), (0, 3, 3))


def test_pool_recompute_of_the_gpu_blocks():
    from slowfast_kernels.triton import conv3d_bn_act_maxpool as kern

    assert kern.pool_recompute(16, 32) == pytest.approx(512 / 420)
    assert kern.pool_recompute(16, 16) == pytest.approx(256 / 196)


# -- bad input -----------------------------------------------------------------------------------------

def test_bad_inputs_named():
    x, weight, bias = make(SLOW, n=1, t=2, h=15, w=13)
    op = sk.conv3d_bn_act_maxpool
    cases = [
        (lambda: op(x[0], weight, bias), "x: expected a \\[N, C_in, T, H, W\\]"),
        (lambda: op(x.double(), weight, bias), "x: expected float32, bfloat16 or float16, got torch.float64"),
        (lambda: op(x.long(), weight, bias), "x: expected float32"),
        (lambda: op(x, weight[:, :2], bias), "weight: expected \\[C_out, 3, kd, kh, kw\\]"),
        (lambda: op(x, weight[0], bias), "weight: expected"),
        (lambda: op(x, weight.to("meta"), bias), "weight is on meta, x on cpu"),
        (lambda: op(x, weight.int(), bias), "weight: expected a floating-point tensor"),
        (lambda: op(x, weight, bias[:3]), "bias: expected a \\[8\\] tensor"),
        (lambda: op(x, weight, bias, activation="gelu"), "activation must be one of"),
        (lambda: op(x, weight, bias, stride=(1, 2)), "conv3d_bn_act_maxpool: stride: expected an int or 3 ints"),
        (lambda: op(x, weight, bias, padding=-1), "padding: expected"),
        (lambda: op(x, weight, bias, pool_kernel=(1, 3)), "pool_kernel: expected"),
        (lambda: op(x, weight, bias, pool_stride=0), "pool_stride: expected"),
        (lambda: op(x, weight, bias, pool_padding=(0, 2, 2)), "pool_padding: expected at most half"),
        (lambda: op(x[..., :4, :4], weight, bias), "x: spatial size .* smaller than the kernel"),
        (lambda: op(x, weight, bias, (1, 1, 1), (0, 3, 3), pool_kernel=(3, 3, 3)), "pool_kernel: .* larger"),
        (lambda: op(x, weight, bias, backend="fastest"), "backend must be one of"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(sk.BackendUnavailable, match="conv3d_bn_act_maxpool: backend 'cuda'"):
        op(x, weight, bias, backend="cuda")


@needs_triton
def test_triton_refuses_what_it_cannot_run():
    x, weight, bias = make(SLOW, n=1, t=1, h=15, w=13, c_in=5)
    with pytest.raises(ValueError, match="x: the triton backend runs 1 to 4 input channels .* got 5"):
        sk.conv3d_bn_act_maxpool(x, weight, bias, backend="triton")
    x, weight, bias = make(SLOW, n=1, t=1, h=15, w=13)
    with pytest.raises(ValueError, match="fuse_pool=True: the fused kernel pools with kernel \\(1,3,3\\)"):
        sk.conv3d_bn_act_maxpool(x, weight, bias, pool_kernel=(1, 2, 2), fuse_pool=True, backend="triton")


# -- torch.library -------------------------------------------------------------------------------------

@needs_triton
def test_opcheck_triton():
    x, weight, bias = make(SLOW, n=1, t=1, h=11, w=9, c_out=5, layout=CL)
    torch.library.opcheck(torch.ops.slowfast_kernels.conv3d_bn_act_maxpool_triton.default,
                          (x, weight, bias, [1, 2, 2], [0, 3, 3], "relu"))
    out = torch.zeros(1, 7, 1, 6, 5).contiguous(memory_format=CL)
    torch.library.opcheck(torch.ops.slowfast_kernels.conv3d_small_cin_triton_into.default,
                          (x, weight, bias, [1, 2, 2], [0, 3, 3], "relu", out, 1))


def test_torch_compile_fullgraph_traces():
    x, weight, bias = make(SLOW, n=1, t=2, h=11, w=9, layout=CL)
    fn = torch.compile(lambda a: sk.conv3d_bn_act_maxpool(a, weight, bias, (1, 2, 2), (0, 3, 3)), fullgraph=True,
                       backend="eager")
    check_close(fn(x), x, weight, bias, (1, 2, 2), (0, 3, 3))


# -- module --------------------------------------------------------------------------------------------

def reference_stem(stem, c_out):
    conv = torch.nn.Conv3d(3, c_out, stem["kernel"], (1, 2, 2), stem["padding"], bias=False)
    bn = torch.nn.BatchNorm3d(c_out)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    pool = torch.nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
    return conv, bn, pool


@pytest.mark.parametrize("backend", ["auto", "triton", "reference"])
def test_module_eval_matches_reference(backend):
    if backend == "triton" and skip_reason("triton"):
        pytest.skip(skip_reason("triton"))
    conv, bn, pool = reference_stem(FAST, 8)
    m = sk.Conv3dBNActMaxPool.from_conv_bn_pool(conv, bn, pool, backend=backend).eval()
    x = torch.randn(2, 3, 3, 19, 21)
    with torch.no_grad():
        want = pool(torch.relu(bn.eval()(conv.eval()(x))))
        got = m(x)
        assert torch.equal(m(x), got)  # cached fold: same result
    torch.testing.assert_close(got, want, rtol=FP32_RTOL, atol=1e-5)
    assert got.is_contiguous(memory_format=CL)
    assert "pool_kernel=(1, 3, 3)" in repr(m)


def test_module_train_mode_and_constructor():
    conv, bn, pool = reference_stem(SLOW, 16)
    m = sk.Conv3dBNActMaxPool.from_conv_bn_pool(conv, bn, pool).train()
    x = torch.randn(2, 3, 2, 15, 13)
    got = m(x)
    torch.testing.assert_close(got, pool(torch.relu(bn.train()(conv(x)))))
    got.sum().backward()
    assert m.conv.weight.grad is not None
    built = sk.Conv3dBNActMaxPool(3, 16, (1, 7, 7), (1, 2, 2), (0, 3, 3)).eval()
    with torch.no_grad():
        assert built(x).shape == (2, 16, 2, 4, 4)
    with pytest.raises(ValueError, match="pool: expected an nn.MaxPool3d"):
        sk.Conv3dBNActMaxPool.from_conv_bn_pool(conv, bn, torch.nn.MaxPool3d(3, ceil_mode=True))


# -- the CUDA shape rule -------------------------------------------------------------------------------

def test_small_cin_rule():
    assert small_cin_triton_rule(3) and small_cin_triton_rule(1) and small_cin_triton_rule(4)
    assert not small_cin_triton_rule(5) and not small_cin_triton_rule(8)
    assert not small_cin_triton_rule(3, dilation=(1, 2, 2))
    assert not small_cin_triton_rule(3, residual=True)


@needs_triton
@pytest.mark.parametrize("layout", [NCDHW, CL], ids=["ncdhw", "ndhwc"])
def test_conv3d_bn_act_small_cin_path(layout):
    """What conv3d_bn_act's cuda backend runs for C_in <= 4, here in the interpreter: x's layout kept, and
    the out= channel slice."""
    from slowfast_kernels.ops import conv3d_bn_act as conv_op

    x, weight, bias = make(SLOW, n=2, t=2, h=15, w=13, c_out=6, layout=layout)
    s, p = (1, 2, 2), (0, 3, 3)
    want = sk.conv3d_bn_act(x, weight, bias, s, p, backend="reference")
    y = conv_op._run_small_cin(x, weight, bias, s, p, "relu", None, 0)
    assert y.is_contiguous(memory_format=layout)
    torch.testing.assert_close(y, want, rtol=FP32_RTOL, atol=1e-5)
    out = torch.full((2, 9, *want.shape[2:]), -7.0).contiguous(memory_format=CL)
    view = conv_op._run_small_cin(x, weight, bias, s, p, "relu", out, 3)
    torch.testing.assert_close(view, want, rtol=FP32_RTOL, atol=1e-5)
    assert (out[:, :3] == -7).all()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_conv3d_bn_act_takes_the_small_cin_kernel_unmeasured(dtype, tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path))
    tuning.clear_cache()
    x, weight, bias = make(FAST, n=2, t=5, dtype=dtype, layout=CL)
    x, weight, bias = x.cuda(), weight.cuda(), bias.cuda()
    y = sk.conv3d_bn_act(x, weight, bias, (1, 2, 2), (2, 3, 3), backend="cuda")
    assert not (tmp_path / tuning.CACHE_FILE).exists()  # chosen by rule: nothing timed
    want = sk.conv3d_bn_act(x.cpu().double(), weight.double(), bias.double(), (1, 2, 2), (2, 3, 3),
                            backend="reference")
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # bf16: one rounding of the output
    torch.testing.assert_close(y.cpu().double(), want, rtol=tol, atol=tol)


@requires_cuda
@pytest.mark.parametrize("fuse_pool", [True, False], ids=["pool_fused", "pool_separate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("stem", [FAST, SLOW], ids=["fast", "slow"])
def test_cuda_parity(stem, dtype, fuse_pool):
    c_out = 8 if stem is FAST else 64
    for layout in (NCDHW, CL):
        x, weight, bias = make(stem, n=2, t=8, h=67, w=75, c_out=c_out, dtype=dtype, layout=layout)
        y = sk.conv3d_bn_act_maxpool(x.cuda(), weight.cuda(), bias.cuda(), (1, 2, 2), stem["padding"],
                                     fuse_pool=fuse_pool, backend="cuda")
        check_close(y.cpu(), x, weight, bias, (1, 2, 2), stem["padding"])
