"""The fused model over its lifetime: bounded memory over a stream of input shapes, copies and pickles before
and after the first forward, and clear errors for inputs and casts it cannot take."""
import copy
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

import slowfast_kernels as sk
import slowfast_reference as R
from _checkpoint_fixtures import randomize
from slowfast_kernels import _ext
from slowfast_kernels.plan import FoldedConv

NATIVE = pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the CPU runners are the C++ extension")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _inputs(model, n=1, size=32, seed=0, frames=16):
    g = torch.Generator().manual_seed(seed)
    return R.pack_pathways(torch.randn(n, 3, frames, size, size, generator=g), model.config.alpha)


@pytest.fixture(scope="module")
def r50():
    return randomize(R.slowfast_r50_8x8(num_classes=7)).eval()


@pytest.fixture(scope="module")
def fused_r50(r50):
    return sk.fuse(r50)


# Run in a fresh interpreter (other tests' memory stays out of its RSS): R50 8x8 fused with 2 cached shapes
# over a stream of input shapes that differ in their frame count, so every layer sees a new signature and
# packs a new weight copy (batch 1, 32 px: a few MB of activations). Prints the RSS after each forward.
_STREAM = r"""
import json, os, sys, torch
import slowfast_kernels as sk, slowfast_reference as R
from slowfast_kernels.plan import FoldedConv
torch.manual_seed(0)
model = R.slowfast_r50_8x8(num_classes=7).eval()
fused = sk.fuse(model, max_cached_shapes=int(sys.argv[1]))
frames = [int(t) for t in sys.argv[2].split(",")]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
out, logits = {"rss": []}, {}
with torch.no_grad():
    for t in frames:
        x = R.pack_pathways(torch.randn(1, 3, t, 32, 32, generator=torch.Generator().manual_seed(t)), 4)
        y = fused(x)
        out["rss"].append(rss())
        if t in logits:
            out["repeat_diff"] = float((y - logits[t]).abs().max())
        logits[t] = y
convs = [m for m in fused.modules() if isinstance(m, FoldedConv)]
out["cached"] = max(m.cached_shapes() for m in convs)
out["weight_bytes"] = sum(m.weight.numel() * 4 for m in convs)
print(json.dumps(out))
"""
# Fast frames per forward: the largest activations first, then the shape A at index 3, four shapes never
# seen before, and A again at the end (rebuilt: its runners were pushed out).
_FRAMES = (32, 28, 24, 20, 16, 12, 8, 4, 24, 20)
_A, _B = 3, len(_FRAMES) - 1


def _rss_over_stream(max_cached_shapes: int) -> dict:
    # oneDNN's primitive cache and ideep's descriptor cache are process-wide, bounded by entry counts (1024
    # each by default: ~60-100 new entries per new shape of R50, ~1-3 MB per shape until full, 70 MB over
    # 32 new shapes here); small capacities keep them out of what this test measures (the model's own memory).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "python"),
                                                       os.environ.get("PYTHONPATH", "")]),
               ONEDNN_PRIMITIVE_CACHE_CAPACITY="64", LRU_CACHE_CAPACITY="16")
    out = subprocess.run([sys.executable, "-c", _STREAM, str(max_cached_shapes), ",".join(map(str, _FRAMES))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@NATIVE
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_memory_stays_flat_over_a_stream_of_shapes():
    """A stream of new input shapes with 2 cached: every layer holds runners for 2 signatures, and RSS after the
    last forward (A again, after the same predecessor) is within a tenth of a conv-weight copy (13 MB) of RSS
    after A's first forward, four new shapes earlier. Without the bound each new shape kept a packed copy of
    the conv weights (batch 1..16 at 64x64 took RSS 1.4 -> 4.9 GB). Measured here (R50, 2 cores, loaded;
    conv weights 128 MB, a packed copy ~104 MB): unbounded +444 MB; bounded but with the pushed-out packed
    weights left in the buffer cache and the C heap untrimmed (the code before plan.trim_heap) +32 MB; now
    +1.2 MB."""
    r = _rss_over_stream(2)
    assert r["cached"] == 2
    growth = r["rss"][_B] - r["rss"][_A]
    curve = ", ".join(f"{v / 2**20:.0f}" for v in r["rss"])
    assert growth < r["weight_bytes"] / 10, f"RSS grew {growth / 2**20:.0f} MB over 4 new shapes (RSS MB per " \
                                           f"forward: {curve}; conv weights {r['weight_bytes'] / 2**20:.0f} MB)"
    assert r["repeat_diff"] < 1e-5  # rebuilt runners: the same logits


def test_max_cached_shapes_is_validated(r50):
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="max_cached_shapes"):
            sk.fuse(r50, max_cached_shapes=bad)


def test_copy_pickle_and_save_before_and_after_the_first_forward(r50):
    """Runners hold oneDNN's packed weights (opaque tensors): copying a model that had run raised "Cannot access
    storage of OpaqueTensorImpl". Copies drop them and rebuild at their first forward."""
    fused = sk.fuse(r50, max_cached_shapes=3)
    x = _inputs(r50, 1, 32)
    before = pickle.loads(pickle.dumps(fused))
    with torch.no_grad():
        y = fused(x)
        after = copy.deepcopy(fused)
        buf = io.BytesIO()
        torch.save(fused, buf)
        buf.seek(0)
        saved = torch.load(buf, weights_only=False)
        pickled = pickle.loads(pickle.dumps(fused))
        assert pickled.max_cached_shapes == 3 and not any(m._runners for m in pickled.modules()
                                                           if isinstance(m, FoldedConv))
        for other in (before, after, saved):
            torch.testing.assert_close(other(x), y, rtol=1e-5, atol=1e-6)
        copy.deepcopy(after)  # a copy that has run copies again
        torch.testing.assert_close(fused(x), y, rtol=0, atol=0)  # the original still runs from its runners


@NATIVE
def test_conv3d_bn_act_module_copies_after_running():
    m = sk.Conv3dBNAct(4, 6, (1, 3, 3), padding=(0, 1, 1)).eval()
    x = torch.randn(1, 4, 3, 9, 9).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        y = m(x)
        for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
            torch.testing.assert_close(other(x), y, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_fuse_on_cuda_without_cuda_names_the_device(r50):
    with pytest.raises(sk.BackendUnavailable, match=r"fuse: device='cuda': CUDA is not available"):
        sk.fuse(r50, device="cuda")
    with pytest.raises(ValueError, match="fuse: device"):
        sk.fuse(r50, device="nonsense")


def test_inputs_on_another_device_name_the_input_and_both_devices(r50, fused_r50):
    slow, fast = _inputs(r50)
    with pytest.raises(ValueError, match=r"inputs\[fast\]: is on meta, the fused model on cpu"):
        fused_r50([slow, fast.to("meta")])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_non_float_inputs_are_refused_not_cast(r50, fused_r50, dtype):
    """uint8 frames cast to float without normalizing gave confident nonsense; the reference refuses them too."""
    x = [t.to(dtype) for t in _inputs(r50)]
    with pytest.raises((RuntimeError, NotImplementedError)):  # the reference: its convs take float32 only
        r50(x)
    with pytest.raises(ValueError, match=rf"inputs\[slow\]: expected a floating-point tensor .* got {dtype}"):
        fused_r50(x)


def test_casting_the_fused_model_points_to_fuse_dtype(r50, fused_r50):
    fused = fused_r50
    for cast in (lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.to(torch.float16), lambda m: m.double(),
                 lambda m: m.to("cpu", torch.bfloat16)):
        with pytest.raises(TypeError, match=r"use fuse\(model, dtype=torch\.(float16|bfloat16|float64)\)"):
            cast(fused)
    x = _inputs(r50)
    with torch.no_grad():  # the refused casts left it intact; float32 / device moves still work
        y = fused(x)
        torch.testing.assert_close(fused.float().to("cpu")(x), y, rtol=1e-5, atol=1e-6)


def _import_warning(package_dir: str) -> str:
    """The warning `import slowfast_kernels` gives with the package at package_dir (a fresh interpreter)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(package_dir), os.path.join(ROOT, "python")]))
    # An editable install elsewhere would supply its own _C through its finder: leave only the path finders.
    code = ("import sys, warnings; warnings.simplefilter('always')\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    import slowfast_kernels\n"
            "print(slowfast_kernels.__file__); print([str(x.message) for x in w])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(package_dir))  # not ROOT: `-c` puts the cwd first on sys.path
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(package_dir), out.stdout
    return out.stdout


def test_missing_or_broken_extension_warning_names_the_cause(tmp_path):
    src = os.path.join(ROOT, "slowfast_kernels")
    pkg = str(tmp_path / "slowfast_kernels")
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    missing = _import_warning(pkg)
    assert "is not built (no _C*.so in" in missing and "circular" not in missing
    with open(os.path.join(pkg, "_C" + sysconfig.get_config_var("EXT_SUFFIX")), "wb") as f:
        f.write(b"not a shared object")
    broken = _import_warning(pkg)
    assert "did not load" in broken and "circular" not in broken
    assert "invalid ELF header" in broken or "file too short" in broken, broken
