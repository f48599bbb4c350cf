"""export: ONNX (BN folded, checked in onnxruntime) and PT2 (torch.export of the fused model) against the
float64 reference; fold_batchnorms exact; the check fails on a wrong file; bad arguments; the CLI."""
import copy
import os

import pytest
import torch

import slowfast_reference as R
from slowfast_kernels import export as E
from slowfast_kernels.cli import main

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency (pip install -e '.[test]')")
pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript (a test dependency)")

SIZE = 64  # the export is shape-generic but for H, W: a small clip keeps the checks fast


def _with_bn_stats(model):
    """Non-trivial BN statistics, so folding them is tested (fresh BNs fold to the identity)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            for t, lo, hi in ((m.running_mean, -0.2, 0.2), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5),
                              (m.bias, -0.2, 0.2)):
                with torch.no_grad():
                    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _with_bn_stats(R.slowfast_r50_8x8())


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "slowfast.onnx")
    check = E.export_onnx(model, path, size=SIZE)
    return path, check


def test_fold_batchnorms_is_exact_and_leaves_no_batchnorm(model):
    folded = E.fold_batchnorms(model)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())  # the input model is untouched
    x = list(E.example_inputs(model, 2, SIZE))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_fold_batchnorms_keeps_a_bare_lateral_conv():
    """MMAction2's lateral conv has no BN: nothing to fold there, and the model still equals itself."""
    m = _with_bn_stats(R.slowfast_r50_4x16(lateral_norm=False))
    x = list(E.example_inputs(m, 1, SIZE))
    with torch.no_grad():
        torch.testing.assert_close(E.fold_batchnorms(m)(x), m(x), rtol=1e-4, atol=1e-5)


def test_onnx_matches_reference_at_every_batch(model, onnx_file):
    path, check = onnx_file
    assert check.format == "onnx" and check.rel_error <= 1e-4, check.summary()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["slow", "fast"]
    for batch in (1, 3):  # dynamic batch: neither is the batch the file was traced at (2)
        slow, fast = E.example_inputs(model, batch, SIZE, seed=batch)
        got = torch.from_numpy(session.run(None, {"slow": slow.numpy(), "fast": fast.numpy()})[0])
        with torch.no_grad():
            want = model([slow, fast])
        assert got.shape == (batch, 400)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_check_fails_on_a_file_of_other_weights(model, onnx_file):
    path, _ = onnx_file
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.blocks[-1].proj.weight.mul_(1.01)
    with pytest.raises(E.ExportCheckError, match="export check failed"):
        E.check_export(other, path, "onnx", torch.float32, E.example_inputs(model, 1, SIZE))


def test_onnx_slow_only_fixed_batch(tmp_path):
    m = _with_bn_stats(R.slow_r50_8x8(num_classes=7))
    check = E.export_onnx(m, tmp_path / "slow.onnx", size=SIZE, batch=1)
    assert check.rel_error <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "slow.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"] and session.get_inputs()[0].shape[0] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_pt2_of_the_fused_model(model, tmp_path, dtype):
    path = tmp_path / "fused.pt2"
    check = E.export_pt2(model, path, size=SIZE, dtype=dtype)
    assert check.rel_error <= check.tolerance
    if dtype == torch.float32:
        assert check.tolerance == 1e-4
    else:  # the 2x rule: bf16 within twice eager bf16's own error against float64
        assert check.tolerance == 2 * check.reference_rel_error
    program = torch.export.load(str(path))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    from slowfast_kernels import cpu_isa

    if dtype == torch.bfloat16 and not cpu_isa.current().native_bf16:
        # no AVX512_BF16 / AMX-BF16: fuse runs bf16 convs as eager ones (the reference backend, with a warning)
        assert "aten.conv3d.default" in ops, ops
    else:
        assert any(o.startswith("slowfast_kernels.") for o in ops), "the program should hold the library's fused ops"
    slow, fast = E.example_inputs(model, 3, SIZE, seed=3)
    with torch.no_grad():
        got = program.module()(slow, fast)
        want = model([slow, fast])
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.05, atol=0.05 * want.abs().max().item())
    torch.testing.assert_close(got.float(), want, **tol)


@pytest.mark.parametrize("kwargs, match", [
    (dict(format="tflite"), "format"),
    (dict(dtype=torch.bfloat16), "dtype: ONNX export is float32 only"),
    (dict(dtype=torch.float16), "dtype"),
    (dict(batch=0), "batch"),
    (dict(batch=True), "batch"),
    (dict(batch="static"), "batch"),
    (dict(size=16), "size"),
])
def test_bad_arguments(model, tmp_path, kwargs, match):
    fmt = kwargs.pop("format", "onnx")
    with pytest.raises(ValueError, match=match):
        E.export(model, tmp_path / "x", fmt, **kwargs)
    assert not (tmp_path / "x").exists()


def test_not_a_reference_model(tmp_path):
    with pytest.raises(ValueError, match="model: expected a slowfast_reference SlowFast"):
        E.export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")


def test_cli_export_onnx(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--format", "onnx", "--arch", "slow_r50_8x8", "--size", str(SIZE), "--batch", "2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 1_000_000
    assert "check: onnx" in text and "against the float64 reference" in text


@pytest.mark.parametrize("argv, match", [
    (["--format", "onnx", "--dtype", "bfloat16"], "--dtype bfloat16: ONNX export is float32 only"),
    (["--format", "pt2", "--batch", "x"], "--batch x: expected 'dynamic'"),
    (["--format", "pt2", "--size", "16"], "--size 16: expected at least 32"),
    (["--format", "pt2", "--out", os.sep.join(["no", "such", "dir", "m.pt2"])], "--out .*existing directory"),
])
def test_cli_export_bad_options(argv, match, tmp_path, capsys):
    if "--out" not in argv:
        argv = argv + ["--out", str(tmp_path / "m.bin")]
    assert main(["export"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re
    assert re.search(match, err), err
