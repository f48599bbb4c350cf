"""conv3d_stem_amx (the stems on AMX-BF16 tiles, pool fused): against conv3d + max_pool3d in float64 on odd
shapes and layouts, both precisions, bf16 input; the fused model's stems take it where the rule says; bad
input. Runs only on a CPU with AMX-BF16 (skipped with the reason elsewhere: the kernel cannot run there)."""
import sys

import pytest
import torch
import torch.nn.functional as F

import slowfast_reference as R
import slowfast_kernels as sk
from slowfast_kernels import _ext
from slowfast_kernels.ops.conv3d_stem_amx import amx_available, conv3d_stem_amx, stem_amx_precision

pytestmark = [
    pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the kernel is part of the C++ extension"),
    pytest.mark.skipif(_ext.LOAD_ERROR is None and not amx_available(),
                       reason="needs a CPU with AMX-BF16 tiles (an Intel Xeon 4th gen or later); this one has none"),
]
CL = torch.channels_last_3d
POOL = ((1, 3, 3), (1, 2, 2), (0, 1, 1))

# (N, C_in, T, H, W, C_out, kernel, stride, padding, pool)
SHAPES = [
    (2, 3, 7, 37, 45, 8, (5, 7, 7), (1, 2, 2), (2, 3, 3), POOL),   # Fast stem, odd sizes, 2 output frames a pass
    (1, 3, 3, 37, 45, 64, (1, 7, 7), (1, 2, 2), (0, 3, 3), POOL),  # Slow stem, 4 column tiles
    # Fast stem, 3 M tiles a row (a pair and a lone one in the two-row blocks), 2 bands (the second starting
    # at an odd conv row: one lone row, then pairs)
    (1, 3, 4, 70, 75, 8, (5, 7, 7), (1, 2, 2), (2, 3, 3), POOL),
    (1, 3, 2, 19, 70, 20, (1, 7, 7), (1, 2, 2), (0, 3, 3), POOL),  # C_out 20: column tiles padded to 32
    (1, 1, 5, 9, 11, 5, (3, 5, 5), (1, 2, 2), (0, 0, 2), None),    # C_in 1, C_out 5 (3 frames a pass), no pool
    (1, 4, 4, 13, 33, 16, (3, 3, 3), (1, 1, 1), (1, 1, 1), None),  # C_in 4, stride 1
    (1, 2, 3, 12, 17, 4, (1, 5, 5), (1, 2, 2), (0, 2, 2), ((1, 2, 2), (1, 2, 2), (0, 1, 1))),  # another pool
]
IDS = ["fast_stem", "slow_stem", "fast_stem_3_tiles", "cout20", "cin1_nopool", "cin4_s1", "pool2"]


def _case(shape, layout, dtype=torch.float32, seed=0):
    n, cin, t, h, w, cout, k, s, p, pool = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, t, h, w, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    elif layout == "strided":
        x = torch.randn(n, cin, t, h, 2 * w, generator=g)[..., ::2]
    weight = torch.randn(cout, cin, *k, generator=g) / (cin * k[0] * k[1] * k[2]) ** 0.5
    bias = torch.randn(cout, generator=g)
    return x.to(dtype), weight, bias, s, p, pool


def _reference(x, weight, bias, s, p, pool, activation, dtype):
    y = F.conv3d(x.to(dtype), weight.to(dtype), bias.to(dtype), s, p)
    y = y.relu() if activation == "relu" else y
    return F.max_pool3d(y, *pool) if pool else y


def _run(x, weight, bias, s, p, pool, activation, precision):
    kw = dict(zip(("pool_kernel", "pool_stride", "pool_padding"), pool)) if pool else {}
    return conv3d_stem_amx(x, weight, bias, s, p, activation=activation, precision=precision, **kw)


def _rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("activation", ["relu", "none"])
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_bf16_matches_conv3d(shape, layout, activation):
    x, weight, bias, s, p, pool = _case(shape, layout)
    y = _run(x, weight, bias, s, p, pool, activation, "bf16")
    oracle = _reference(x, weight, bias, s, p, pool, activation, torch.float64)
    eager_bf16 = _reference(x, weight, bias, s, p, pool, activation, torch.bfloat16)
    assert y.dtype == torch.bfloat16 and y.shape == oracle.shape and y.is_contiguous(memory_format=CL)
    # bf16 tolerance: twice eager bf16's own error against float64 (floored at 2^-8, one bf16 rounding)
    assert _rel(y, oracle) <= max(2 * _rel(eager_bf16, oracle), 2 ** -8)


@pytest.mark.parametrize("layout", ["ncdhw", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_bf16x3_has_float32_accuracy(shape, layout):
    x, weight, bias, s, p, pool = _case(shape, layout)
    y = _run(x, weight, bias, s, p, pool, "relu", "bf16x3")
    oracle = _reference(x, weight, bias, s, p, pool, "relu", torch.float64)
    assert y.dtype == torch.float32 and y.shape == oracle.shape
    # Three bf16 products drop x_lo * w_lo (~2^-16 relative per term): measured 3-5e-6 on these shapes,
    # float32 conv3d 2e-7 to 1e-6; the bound is 2e-5, five times tighter than the fused model's 1e-4.
    assert _rel(y, oracle) <= 2e-5


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("precision", ["bf16", "bf16x3"])
def test_sliding_passes_over_a_long_clip(precision, threads):
    """The Fast stem's passes slide: a task runs consecutive passes of one band, each packing only its 2 new
    frames into the ring of 6 (the weight rotated to match). A clip long and tall enough that, with 1 or 2
    threads, each task runs several passes (11 frames: 6 passes, the last with 1 output frame; 2 bands of
    rows; 2 samples), the clip's padding frames at both ends included."""
    shape = (2, 3, 11, 70, 61, 8, (5, 7, 7), (1, 2, 2), (2, 3, 3), POOL)
    x, weight, bias, s, p, pool = _case(shape, "ncdhw")
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = _run(x, weight, bias, s, p, pool, "relu", precision)
    finally:
        torch.set_num_threads(saved)
    oracle = _reference(x, weight, bias, s, p, pool, "relu", torch.float64)
    eager_bf16 = _reference(x, weight, bias, s, p, pool, "relu", torch.bfloat16)
    bound = max(2 * _rel(eager_bf16, oracle), 2 ** -8) if precision == "bf16" else 2e-5
    assert y.shape == oracle.shape and _rel(y, oracle) <= bound
    # every output frame, not just the largest error: a frame packed into the wrong slot is far off
    per_frame = [(y[:, :, t].double() - oracle[:, :, t]).abs().max() / oracle[:, :, t].abs().max()
                 for t in range(oracle.shape[2])]
    assert max(per_frame) <= bound


@pytest.mark.parametrize("shape", SHAPES[:2], ids=IDS[:2])
def test_bf16_input_reads_as_given(shape):
    x, weight, bias, s, p, pool = _case(shape, "ncdhw", dtype=torch.bfloat16)
    y = _run(x, weight, bias, s, p, pool, "relu", "bf16")
    oracle = _reference(x.double(), weight, bias, s, p, pool, "relu", torch.float64)
    eager_bf16 = _reference(x, weight, bias, s, p, pool, "relu", torch.bfloat16)
    assert _rel(y, oracle) <= max(2 * _rel(eager_bf16, oracle), 2 ** -8)


def test_the_rule():
    assert stem_amx_precision(torch.bfloat16, (64, 3, 1, 7, 7)) == "bf16"
    assert stem_amx_precision(torch.float32, (8, 3, 5, 7, 7)) == "bf16x3"
    assert stem_amx_precision(torch.float32, (64, 3, 1, 7, 7)) is None  # oneDNN as fast
    assert stem_amx_precision(torch.float16, (8, 3, 5, 7, 7)) is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_model_stems_take_it(dtype, monkeypatch):
    fuse_module = sys.modules["slowfast_kernels.fuse"]  # (the package's `fuse` is the function)

    torch.manual_seed(0)
    model = R.slowfast_r50_8x8().eval()
    inputs = R.pack_pathways(torch.rand(1, 3, 8, 40, 40), 4)
    fused = sk.fuse(model, dtype=dtype)
    calls = []

    def spy(x, weight, *args, **kwargs):
        calls.append(tuple(weight.shape))
        return conv3d_stem_amx(x, weight, *args, **kwargs)

    monkeypatch.setattr(fuse_module, "conv3d_stem_amx", spy)
    with torch.inference_mode():
        out = fused(inputs)
    expected = [(64, 3, 1, 7, 7), (8, 3, 5, 7, 7)] if dtype == torch.bfloat16 else [(8, 3, 5, 7, 7)]
    assert calls == expected
    with torch.inference_mode():
        oracle = model.double()([t.double() for t in inputs])
        eager = model.to(dtype)([t.to(dtype) for t in inputs]).double()
    tol = 1e-4 if dtype == torch.float32 else 2 * _rel(eager, oracle)
    assert _rel(out, oracle) <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pathway, value", [(1, float("inf")), (0, float("nan")), (1, -float("inf"))])
def test_non_finite_inputs_take_onednn(dtype, pathway, value):
    """The kernel would turn an inf into NaN through a zero weight column: its nonfinite flag sends the fused
    model's stems (and every later ReLU) to the exact path, NaN and inf as the reference has them."""
    torch.manual_seed(0)
    model = R.slowfast_r50_8x8().eval()
    inputs = R.pack_pathways(torch.rand(1, 3, 8, 40, 40), 4)
    inputs[pathway][0, 0, 1, 5, 5] = value
    fused = sk.fuse(model, dtype=dtype)
    with torch.inference_mode():
        got, want = fused(inputs), model.to(dtype)([t.to(dtype) for t in inputs]).float()
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.isnan(want).any() or torch.isinf(want).any()  # the case is one where the check matters


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_model_checks_finiteness_in_the_amx_stems(dtype, monkeypatch):
    """A bf16 model sums neither raw clip (both stems' kernels check what they read); a float32 one sums the
    Slow clip only (its stem is oneDNN's)."""
    fuse_module = sys.modules["slowfast_kernels.fuse"]
    summed = []

    def spy(t):
        summed.append(t.shape[2])
        return True

    torch.manual_seed(0)
    fused = sk.fuse(R.slowfast_r50_8x8().eval(), dtype=dtype)
    monkeypatch.setattr(fuse_module, "all_finite", spy)
    with torch.inference_mode():
        fused(R.pack_pathways(torch.rand(1, 3, 8, 40, 40), 4))
    assert summed == ([] if dtype == torch.bfloat16 else [2])


@pytest.mark.parametrize("precision", ["bf16", "bf16x3"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 3.4e38, None])
def test_nonfinite_flag(precision, value):
    """The flag is set when a value the windows read is NaN or inf as bf16 (3.4e38 rounds to inf), left alone
    for finite inputs; a value no window reads (the last row of an even height at stride 2 with padding 0 and
    kernel 1: not packed) does not count. (Values the kernel packs but no window reads, the rest of a packed
    row, may count: a false alarm only sends the caller to the exact path.)"""
    x, weight, bias, s, p, pool = _case(SHAPES[0], "ncdhw")
    flag = torch.zeros(1, dtype=torch.int32)
    if value is not None:
        x[1, 2, 4, 10, 20] = value
    conv3d_stem_amx(x, weight, bias, s, p, pool_kernel=pool[0], pool_stride=pool[1], pool_padding=pool[2],
                    precision=precision, nonfinite=flag)
    assert flag.item() == (0 if value is None else 1)
    unread = torch.randn(1, 1, 3, 8, 8)
    unread[..., -1, :] = float("nan")
    flag.zero_()
    out = conv3d_stem_amx(unread, torch.randn(4, 1, 1, 1, 1), None, (1, 2, 2), (0, 0, 0), precision=precision,
                          nonfinite=flag)
    assert flag.item() == 0 and torch.isfinite(out).all()


def test_nonfinite_flag_bad_input():
    x, weight, bias, s, p, _ = _case(SHAPES[IDS.index("cin1_nopool")], "ncdhw")
    for flag in (torch.zeros(1), torch.zeros(2, dtype=torch.int32)):
        with pytest.raises(RuntimeError, match="nonfinite: expected an int32 CPU tensor of one element"):
            conv3d_stem_amx(x, weight, bias, s, p, nonfinite=flag)


@pytest.mark.parametrize("change, message", [
    (dict(precision="fp8"), "precision must be one of"),
    (dict(stride=(2, 2, 2)), "needs stride \\(1, s, s\\)"),
    (dict(x=torch.randn(1, 5, 4, 16, 16)), "needs a 5-d x and 1 to 4 input channels"),
    (dict(x=torch.randn(1, 3, 4, 16, 16).half()), "needs float32 or bfloat16"),
    (dict(pool_kernel=(3, 3, 3), pool_stride=(1, 2, 2), pool_padding=(0, 1, 1)), "pool: expected kernel \\(1, k, k\\)"),
])
def test_bad_input(change, message):
    args = dict(x=torch.randn(1, 3, 4, 16, 16), weight=torch.randn(8, 3, 3, 7, 7), bias=torch.randn(8),
                stride=(1, 2, 2), padding=(1, 3, 3), pool_kernel=(1, 3, 3), pool_stride=(1, 2, 2),
                pool_padding=(0, 1, 1), precision="bf16")
    args.update(change)
    with pytest.raises((ValueError, RuntimeError), match=message):
        conv3d_stem_amx(args.pop("x"), args.pop("weight"), args.pop("bias"), args.pop("stride"), args.pop("padding"),
                        **args)
