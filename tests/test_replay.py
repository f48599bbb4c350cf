"""The fused model's CPU op programs (slowfast_kernels/replay.py): recorded on a signature's second forward,
replayed after; bit-identical to the Python path, dropped when runners change, never used where the Python
path branched on data."""
import copy
import pickle
import threading

import pytest
import torch

import slowfast_kernels as sk
import slowfast_reference as R
from _checkpoint_fixtures import randomize
from slowfast_kernels import _ext, cpu_isa, replay
from slowfast_kernels.plan import FoldedConv

NATIVE = pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the CPU runners are the C++ extension")
BF16 = pytest.mark.skipif(not cpu_isa.current().native_bf16 or not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                          reason="bf16 runs oneDNN's native kernels only with AVX512_BF16 / AMX")


def _inputs(model, n=1, h=40, w=48, frames=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return R.pack_pathways(torch.randn(n, 3, frames, h, w, generator=g), model.config.alpha)


def _programs(fused):
    return [v for v in fused._programs.values() if isinstance(v, tuple)]


def _python_path(fused, inputs, call=None):
    fused.cpu_replay = False
    try:
        return (call or fused)(inputs)
    finally:
        fused.cpu_replay = True


def _fused_with_a_program(model, x):
    """model fused, after the three forwards that make its runners, record x's program and replay it."""
    fused = sk.fuse(model)
    for _ in range(3):
        fused(x)
    assert _programs(fused)
    return fused


@pytest.fixture(scope="module")
def r50():
    return randomize(R.slowfast_r50_8x8(num_classes=7)).eval()


@NATIVE
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=BF16)])
def test_replay_is_bit_identical_and_skips_the_python(r50, dtype, monkeypatch):
    fused = sk.fuse(r50, dtype=dtype)
    x = _inputs(r50, n=2)
    expected = _python_path(fused, x)
    first, second = fused(x), fused(x)  # makes the runners, then records
    assert len(_programs(fused)) == 1 and len(_programs(fused)[0][0]) > 100
    # From now on no Python layer runs: a FoldedConv call would fail.
    monkeypatch.setattr(FoldedConv, "run", lambda *a, **k: pytest.fail("the replay ran a FoldedConv"))
    third = fused(x)
    other = fused(_inputs(r50, n=2, seed=1))
    monkeypatch.undo()
    for y in (first, second, third):
        assert torch.equal(y, expected)
    assert torch.equal(other, _python_path(fused, _inputs(r50, n=2, seed=1)))


@NATIVE
def test_replay_of_slow_only_features_and_inputs_already_in_the_model_layout(monkeypatch):
    slow = randomize(R.slow_r50_8x8(num_classes=5)).eval()
    fused = sk.fuse(slow)
    # An input already float32 channels_last_3d is the stem's input itself: an input slot, not a constant.
    x = [torch.randn(1, 3, 8, 36, 36).contiguous(memory_format=torch.channels_last_3d)]
    for _ in range(3):
        got = fused.features(x)
    assert _programs(fused)
    expected = _python_path(fused, x, fused.features)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    y = [t * 0.5 for t in x]  # same layout, new values
    assert torch.equal(fused(y), _python_path(fused, y))


@NATIVE
def test_non_finite_inputs_take_the_python_path(r50):
    x = _inputs(r50)
    fused = _fused_with_a_program(r50, x)
    bad = [t.clone() for t in x]
    bad[1][0, 0, 3, 5, 7] = float("inf")
    bad[0][0, 1, 2, 3, 4] = float("nan")
    got = fused(bad)
    with torch.no_grad():
        assert torch.equal(torch.isnan(got), torch.isnan(r50(bad)))
    assert torch.equal(fused(x), _python_path(fused, x))  # the program is still there and still right


@NATIVE
def test_programs_follow_new_weights_and_casts(r50):
    x = _inputs(r50)
    fused = _fused_with_a_program(r50, x)
    other = randomize(R.slowfast_r50_8x8(num_classes=7), seed=3).eval()
    fused.load_state_dict(sk.fuse(other).state_dict())
    assert torch.equal(fused(x), sk.fuse(other)(x))  # a stale program would give the old weights' logits
    for _ in range(2):
        fused(x)
    assert _programs(fused)
    fused.reset()
    assert not fused._programs
    fused.to("cpu")
    assert torch.equal(fused(x), sk.fuse(other)(x))


@NATIVE
def test_programs_are_bounded_with_the_runners_and_left_out_of_copies(r50):
    fused = sk.fuse(r50, max_cached_shapes=2)
    shapes = [(40, 48), (32, 32), (40, 48), (32, 32), (48, 40)]
    for h, w in shapes:
        for _ in range(3):
            fused(_inputs(r50, h=h, w=w))
    assert len(fused._programs) <= 2
    x = _inputs(r50, h=48, w=40)
    assert torch.equal(fused(x), _python_path(fused, x))
    assert _programs(fused)
    for clone in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        assert not clone._programs
        assert torch.equal(clone(x), fused(x))
    fused.set_max_cached_shapes(3)
    assert not fused._programs


@NATIVE
def test_replay_off_never_records(r50):
    fused = sk.fuse(r50)
    fused.cpu_replay = False
    x = _inputs(r50)
    for _ in range(3):
        fused(x)
    assert not fused._programs


@NATIVE
def test_concurrent_recordings_and_replays_give_each_thread_its_own_result(r50):
    fused = sk.fuse(r50)
    # Two signatures, two threads each: recordings run while other threads replay or record.
    xs = [_inputs(r50, seed=s, h=32 + 8 * (s % 2)) for s in range(4)]
    expected = [_python_path(fused, x) for x in xs]
    results = {}

    def work(i):
        results[i] = [fused(xs[i]) for _ in range(4)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_programs(fused)) == 2
    for i in range(4):
        assert all(torch.equal(y, expected[i]) for y in results[i])


@NATIVE
def test_detector_forward_replays_the_backbone(monkeypatch):
    from _detection_fixtures import clip_and_boxes
    from slowfast_reference.detection import build_detector

    detector = randomize(build_detector("slowfast_r50_8x8").eval())
    fused = sk.fuse(detector)
    x, boxes = clip_and_boxes(h=32, w=48)
    expected = _python_path(fused, x, lambda inputs: fused(inputs, boxes))
    for _ in range(2):
        fused(x, boxes)
    assert _programs(fused)
    monkeypatch.setattr(FoldedConv, "run", lambda *a, **k: pytest.fail("the replay ran a FoldedConv"))
    got, got_one = fused(x, boxes), fused(x, boxes[:1])  # the box count is not part of the program
    monkeypatch.undo()
    assert torch.equal(got, expected)
    assert torch.equal(got_one, _python_path(fused, x, lambda inputs: fused(inputs, boxes[:1])))


def test_record_refuses_a_function_that_read_a_value():
    x = torch.randn(5)

    def branchy(t):
        return t * 2 if bool((t > 0).any()) else t - 1

    result, program, why = replay.record(lambda: branchy(x), [x])
    assert torch.equal(result, branchy(x)) and program is None and "returned a Python bool" in why


def test_record_replays_slots_constants_lists_in_place_and_out_arguments():
    w = torch.randn(4, 3)
    a, b = torch.randn(2, 4), torch.randn(2, 3)

    def fn(x, y):
        z = x @ w  # constant w
        z.add_(y)  # in place: same slot
        parts = torch.cat([z, y, z], dim=1)  # a list of slots
        out = torch.empty(2, 9)
        torch.mul(parts, 2.0, out=out)  # an out= keyword
        return {"out": out, "z": z}

    result, program, why = replay.record(lambda: fn(a, b), [a, b])
    assert why is None and program is not None
    a2, b2 = torch.randn(2, 4), torch.randn(2, 3)
    got, expected = program([a2, b2]), fn(a2, b2)
    assert torch.equal(got["out"], expected["out"]) and torch.equal(got["z"], expected["z"])
    with pytest.raises(ValueError, match="expected 2 entries"):
        program([a2])
