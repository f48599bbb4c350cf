"""fuse(): the fused inference model against the reference, every config and lateral mode."""
import copy
import sys

import pytest
import torch

import slowfast_kernels as sk
import slowfast_reference as R
from _checkpoint_fixtures import randomize
from conftest import requires_cuda
from slowfast_kernels.backends import backend_unavailable_reason

ARCHS = ["slowfast_r50_8x8", "slowfast_r50_4x16", "slowfast_r101_8x8", "slowfast_r101_16x8", "slow_r50_8x8"]


def _inputs(model, n=1, size=32, frames=None):
    cfg = model.config
    clip = torch.randn(n, 3, frames or cfg.num_frames, size, size)
    return [clip] if cfg.slow_only else R.pack_pathways(clip, cfg.alpha)


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_matches_reference_every_config(arch):
    model = randomize(R.build_model(arch, num_classes=10)).eval()
    fused = sk.fuse(model)
    x = _inputs(model, n=2, size=32)
    with torch.no_grad():
        expected, actual = model(x), fused(x)
    assert actual.dtype == torch.float32 and actual.shape == (2, 10)
    assert _rel_err(actual, expected) < 1e-4


@pytest.mark.parametrize("lateral,fusion,arch", [
    ("time_to_channel", "concat", "slowfast_r50_8x8"),
    ("time_strided_sampling", "concat", "slowfast_r50_8x8"),
    ("time_to_channel", "sum", "slowfast_r50_4x16"),
])
def test_fused_matches_reference_lateral_modes(lateral, fusion, arch):
    model = randomize(R.build_model(arch, num_classes=6, lateral=lateral, fusion=fusion)).eval()
    fused = sk.fuse(model)
    x = _inputs(model, size=40)
    with torch.no_grad():
        assert _rel_err(fused(x), model(x)) < 1e-4


def test_fused_bare_lateral_and_softmax_head():
    model = randomize(R.slowfast_r50_8x8(num_classes=5, lateral_norm=False, head_act="softmax")).eval()
    fused = sk.fuse(model)
    x = _inputs(model)
    with torch.no_grad():
        out = fused(x)
        assert _rel_err(out, model(x)) < 1e-4
    torch.testing.assert_close(out.sum(-1), torch.ones(1))


def test_clip_longer_than_the_head_window_is_named():
    """A clip longer than the model's frames per clip leaves a different number of positions per pathway
    under the fixed head windows (R50 8x8, 48 frames: 12 - 8 + 1 = 5 Slow, 48 - 32 + 1 = 17 Fast), where
    PySlowFast fails inside torch.cat: reference and fused model both say what it is and what to do, and
    with the global head pool the clip is classified, fused equal to the reference."""
    model = randomize(R.slowfast_r50_8x8(num_classes=4)).eval()
    x = R.pack_pathways(torch.randn(1, 3, 48, 32, 32), model.config.alpha)
    with torch.no_grad():
        for run in (model, sk.fuse(model)):
            with pytest.raises(ValueError, match=r"position grids \[\(5, 1, 1\), \(17, 1, 1\)\].*set_head_pool\('global'\)"):
                run(x)
        model.set_head_pool("global")
        assert _rel_err(sk.fuse(model)(x), model(x)) < 1e-4


@pytest.mark.parametrize("head_act", [None, "softmax"])
@pytest.mark.parametrize("arch", ["slowfast_r50_8x8", "slow_r50_8x8"])
def test_fused_head_pools_the_fixed_window(arch, head_act):
    """PySlowFast's head at a test crop above the training crop: several positions, classified one by one
    (train_crop 64 at a 96x128 input leaves 2x3 positions, as 224 leaves 2x2 at 256)."""
    model = randomize(R.build_model(arch, num_classes=6, head_act=head_act, train_crop=64)).eval()
    with torch.no_grad():  # logits of order 1: the per-position softmax must not saturate to one-hot
        model.blocks[-1].proj.weight.mul_(1e-3)
    cfg = model.config
    clip = torch.randn(2, 3, cfg.num_frames, 96, 128)
    x = [clip] if cfg.slow_only else R.pack_pathways(clip, cfg.alpha)
    fused = sk.fuse(model)
    with torch.no_grad():
        expected, actual = model(x), fused(x)
        pooled_globally = sk.fuse(copy.deepcopy(model).set_head_pool("global"))(x)
    assert _rel_err(actual, expected) < 1e-4
    assert _rel_err(pooled_globally, expected) > 1e-3  # the window matters at this size
    if head_act == "softmax":
        torch.testing.assert_close(actual.sum(-1), torch.ones(2))


def test_fuse_and_run_under_inference_mode_and_no_grad():
    model = randomize(R.slowfast_r50_8x8(num_classes=5)).eval()
    x = _inputs(model)
    with torch.no_grad():
        expected = model(x)
    with torch.inference_mode():  # fused and run inside
        inside = sk.fuse(model)
        assert _rel_err(inside(x), expected) < 1e-4
    assert _rel_err(inside(x), expected) < 1e-4  # fused inside, run outside (grad mode on)
    with torch.no_grad():
        assert _rel_err(inside(x), expected) < 1e-4
    with torch.inference_mode():  # a reference model made under inference_mode, fused outside it
        made_inside = R.slowfast_r50_8x8(num_classes=5).eval()
        made_inside.load_state_dict(model.state_dict())
    fused = sk.fuse(made_inside)
    out = fused(x)
    assert not out.requires_grad and _rel_err(out, expected) < 1e-4


def test_fused_weights_follow_load_state_dict():
    """Runners are prepared once per input shape; loading other weights must not leave stale ones behind."""
    a = randomize(R.slowfast_r50_8x8(num_classes=4), seed=1).eval()
    b = randomize(R.slowfast_r50_8x8(num_classes=4), seed=2).eval()
    x = _inputs(a)
    fused = sk.fuse(a)
    fused(x)  # prepares the runners for this shape
    fused.load_state_dict(sk.fuse(b).state_dict())
    with torch.no_grad():
        assert _rel_err(fused(x), b(x)) < 1e-4
        for m in fused.modules():  # in-place edits need reset(): documented, and reset() works
            if hasattr(m, "weight") and isinstance(getattr(m, "weight"), torch.Tensor) and m.weight.dim() == 5:
                m.weight.mul_(1.0)
        fused.reset()
        assert _rel_err(fused(x), b(x)) < 1e-4


def test_fused_forward_never_concatenates_or_copies_activations():
    """Concat fusion reads the Slow output and the lateral tensor as two K-ranges of the next convs: no
    torch.cat and no copy of any activation (the head's pooled [N, C, 1, 1, 1] vectors aside)."""
    model = randomize(R.slowfast_r50_8x8(num_classes=4)).eval()
    x = [t.contiguous(memory_format=torch.channels_last_3d) for t in _inputs(model)]
    fused = sk.fuse(model)
    fused(x)
    with torch.profiler.profile(record_shapes=True) as prof:
        fused(x)
    offenders = [(e.name, e.input_shapes) for e in prof.events()
                 if e.name in ("aten::cat", "aten::copy_", "aten::clone")
                 and any(len(s) == 5 and s[2:] != [1, 1, 1] for s in e.input_shapes if isinstance(s, list))]
    assert offenders == []


def test_fuse_cuda_graph_argument():
    model = R.slowfast_r50_8x8(num_classes=3).eval()
    with pytest.raises(ValueError, match="cuda_graph must be True, False or 'auto'"):
        sk.fuse(model, cuda_graph="sometimes")
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        sk.fuse(model, cuda_graph=True)
    assert isinstance(sk.fuse(model), sk.fuse.__globals__["FusedSlowFast"])  # "auto" on CPU: no graph runner


@pytest.mark.skipif(backend_unavailable_reason("triton", torch.device("cpu")) is not None,
                    reason="triton cannot run on CPU tensors here")
@pytest.mark.parametrize("arch,lateral,fusion", [("slowfast_r50_8x8", "time_strided_conv", "concat"),
                                                 ("slowfast_r50_4x16", "time_to_channel", "sum")])
def test_fused_triton_backend_in_the_interpreter(arch, lateral, fusion, monkeypatch):
    """Every conv and lateral of the fused model through the Triton kernels (the interpreter on CPU), the
    stems as conv3d_bn_act_maxpool calls (the small-C_in kernels, as on CUDA)."""
    fuse_module = sys.modules["slowfast_kernels.fuse"]  # the package's `fuse` attribute is the function
    stems = []
    real = fuse_module.conv3d_bn_act_maxpool
    monkeypatch.setattr(fuse_module, "conv3d_bn_act_maxpool",
                        lambda x, *a, **k: stems.append(tuple(x.shape)) or real(x, *a, **k))
    model = randomize(R.build_model(arch, num_classes=4, lateral=lateral, fusion=fusion)).eval()
    x = _inputs(model, size=32, frames=model.config.alpha * 2)
    with torch.no_grad():
        assert _rel_err(sk.fuse(model, backend="triton")(x), model(x)) < 1e-4
    assert sorted(stems) == sorted(tuple(t.shape) for t in x)  # both stems, once each


def test_fused_reference_backend_matches():
    model = randomize(R.slowfast_r50_8x8(num_classes=4)).eval()
    x = _inputs(model)
    with torch.no_grad():
        assert _rel_err(sk.fuse(model, backend="reference")(x), model(x)) < 1e-4


def test_fused_bf16_within_twice_eager_error():
    model = randomize(R.slowfast_r50_8x8(num_classes=8)).eval()
    x = _inputs(model, size=32)
    with torch.no_grad():
        exact = copy.deepcopy(model).double()([t.double() for t in x]).float()
        eager_bf16 = copy.deepcopy(model).bfloat16()([t.bfloat16() for t in x]).float()
        fused = sk.fuse(model, dtype=torch.bfloat16)(x)
    eager_err = (eager_bf16 - exact).abs().max().item()
    assert (fused - exact).abs().max().item() <= 2 * eager_err + 1e-6


def test_fuse_refuses_train_mode_and_non_finite_weights():
    model = R.slowfast_r50_8x8(num_classes=3)
    with pytest.raises(ValueError, match="train mode"):
        sk.fuse(model)
    model.eval()
    with torch.no_grad():
        model.blocks[1].multipathway_blocks[0].res_blocks[0].branch2.conv_a.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        sk.fuse(model)
    with pytest.raises(TypeError, match="SlowFast"):
        sk.fuse(torch.nn.Linear(2, 2))


def test_fused_bad_input_is_named():
    fused = sk.fuse(R.slowfast_r50_8x8(num_classes=3).eval())
    with pytest.raises(ValueError, match="alpha"):
        fused([torch.randn(1, 3, 8, 32, 32), torch.randn(1, 3, 30, 32, 32)])


def test_fused_does_not_modify_reference():
    model = randomize(R.slowfast_r50_8x8(num_classes=3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sk.fuse(model, dtype=torch.bfloat16)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_torch_compile_fullgraph():
    model = randomize(R.slowfast_r50_8x8(num_classes=4)).eval()
    fused = sk.fuse(model)
    x = _inputs(model)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert _rel_err(compiled(x), model(x)) < 1e-4


def test_torch_export():
    model = randomize(R.slowfast_r50_8x8(num_classes=4)).eval()
    fused = sk.fuse(model)
    x = _inputs(model)
    exported = torch.export.export(fused, (x,))
    with torch.no_grad():
        assert _rel_err(exported.module()(x), model(x)) < 1e-4


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cuda_and_graphs(dtype):
    model = randomize(R.slowfast_r50_8x8(num_classes=7)).eval().cuda()
    x = [t.cuda() for t in _inputs(model, n=2, size=64)]
    with torch.no_grad():
        exact = copy.deepcopy(model).double()([t.double() for t in x]).float()
        eager = copy.deepcopy(model).to(dtype)([t.to(dtype) for t in x]).float()
        fused = sk.fuse(model, dtype=dtype, cuda_graph=False)
        plain, single = fused(x), fused([t[:1] for t in x])
        graphed = sk.fuse(model, dtype=dtype)  # cuda_graph="auto": graphs on CUDA
        assert isinstance(graphed, sk.fuse.__globals__["CUDAGraphRunner"])
        first, again = graphed(x), graphed(x)
        other = graphed([t[:1] for t in x])  # new shape: re-captured
    if dtype == torch.float32:
        assert _rel_err(plain, exact) < 1e-4
    else:  # at most twice eager PyTorch's own error at this precision
        assert (plain - exact).abs().max().item() <= 2 * (eager - exact).abs().max().item() + 1e-6
    # a replay computes what the un-graphed model computes, also after a re-capture for a new shape
    torch.testing.assert_close(first, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(other, single, rtol=1e-5, atol=1e-5)


def test_fuse_takes_a_pytorchvideo_model_object():
    """fuse(PyTorchVideo's own model): its weights read into the reference of the same architecture; the fused
    model computes what PyTorchVideo's does (fixed head window: 2x2 positions at 64 px with train crop 32)."""
    from _checkpoint_fixtures import pytorchvideo_builders

    builders = pytorchvideo_builders()
    assert builders is not None, "pytorchvideo (with fvcore) must be installed: pip install -e '.[test]'"
    create_slowfast, _ = builders
    theirs = randomize(create_slowfast(
        slowfast_fusion_conv_kernel_size=(7, 1, 1), slowfast_fusion_conv_stride=(4, 1, 1),
        head_pool_kernel_sizes=((8, 1, 1), (32, 1, 1)), model_num_class=6)).eval()
    with torch.no_grad():
        theirs.blocks[-1].proj.weight.mul_(1e-2)
    fused = sk.fuse(theirs)
    x = R.pack_pathways(torch.randn(1, 3, 32, 64, 64), 4)
    with torch.no_grad():
        expected = theirs([t.clone() for t in x])
        assert _rel_err(fused(x), expected) < 1e-4
    with pytest.raises(TypeError, match="neither a slowfast_reference.SlowFast nor"):
        sk.fuse(torch.nn.Linear(3, 4))


@pytest.mark.skipif(not {"avx512_bf16", "avx512bw"} <= sk.cpu_isa.current().flags or sk.cpu_isa.tier() != "avx512",
                    reason="the bf16 small-C_in stem runs on CPUs with AVX512_BF16 and no AMX")
@pytest.mark.parametrize("pathway", [0, 1], ids=["slow", "fast"])
def test_bf16_stems_read_the_raw_clip(pathway):
    """A bf16 model's stems (Fast: 8 output channels, Slow: 64) run the AVX512_BF16 kernel on the float32 clip
    as given. Same values as the cast + oneDNN path, to bf16 rounding."""
    model = randomize(R.slowfast_r50_8x8(num_classes=4)).eval()
    x = _inputs(model, size=48)[pathway]
    fused = sk.fuse(model, dtype=torch.bfloat16)
    stem = fused.stems[pathway]
    with torch.no_grad():
        y = stem.bf16_from_raw(x, torch.bfloat16)
        expected = stem(fused._prepare(x))
    assert y is not None and y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(y.float(), expected.float(), rtol=2 ** -7, atol=2 ** -7 * expected.abs().max().item())
