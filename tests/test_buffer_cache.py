"""The CPU buffer cache the fused model runs its forward in: activation memory reused, not faulted in again."""
import resource

import pytest
import torch

import slowfast_kernels as sk
import slowfast_reference as R
from slowfast_kernels import _ext
from slowfast_kernels.plan import release_cpu_buffers, reuse_cpu_buffers
from _checkpoint_fixtures import randomize

pytestmark = pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the buffer cache is part of the C++ extension")
ops = torch.ops.slowfast_kernels if _ext.LOAD_ERROR is None else None


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_enable_nests_and_restores_the_allocator():
    assert not ops.cpu_buffer_cache_enabled()
    with reuse_cpu_buffers() as active:
        assert active and ops.cpu_buffer_cache_enabled()
        with reuse_cpu_buffers():
            assert ops.cpu_buffer_cache_enabled()
        assert ops.cpu_buffer_cache_enabled()  # the inner scope restores the outer state
    assert not ops.cpu_buffer_cache_enabled()


def test_large_blocks_are_reused_and_released():
    release_cpu_buffers()
    with reuse_cpu_buffers():
        a = torch.full((1 << 20,), 3.0)  # 4 MB: cached when freed
        small = torch.ones(16)  # plain allocation, never cached
        ptr = a.data_ptr()
    del a  # freed after the scope closed: still returns to the cache
    assert ops.cpu_buffer_cache_bytes() == 4 << 20
    with reuse_cpu_buffers():
        b = torch.empty(1 << 20)
        assert b.data_ptr() == ptr  # the same block again
        assert torch.equal(small, torch.ones(16))
    del b
    assert release_cpu_buffers() == 4 << 20 and ops.cpu_buffer_cache_bytes() == 0


def test_fused_forward_faults_no_fresh_pages_and_keeps_results():
    model = randomize(R.slowfast_r50_8x8(num_classes=5)).eval()
    # 224: the size at which glibc hands the activations back to the kernel between forwards (5,700 to 17,000
    # minor faults per forward without the cache on this machine; none at 160 and below)
    x = [t.contiguous(memory_format=torch.channels_last_3d) for t in R.pack_pathways(torch.randn(1, 3, 32, 224, 224), 4)]
    fused = sk.fuse(model)
    with torch.no_grad():
        expected = model(x)
        for _ in range(3):  # warm-up: runners prepared, the op program recorded (replay.py), buffers cached
            first = fused(x)
        before = _minor_faults()
        for _ in range(3):
            again = fused(x)
        faults = (_minor_faults() - before) / 3
    assert not ops.cpu_buffer_cache_enabled()  # the forward restored the allocator
    assert torch.equal(first, again)
    assert ((again - expected).abs().max() / expected.abs().max()) < 1e-4
    assert faults < 300, f"{faults} minor page faults per forward"
    assert ops.cpu_buffer_cache_bytes() > 0


def test_scopes_in_two_threads_restore_the_allocator_in_any_order():
    """Thread A opens, B opens, A closes (B still inside: the cache stays on), B closes (the cache is off).
    Each scope saving and restoring "the previous state" ended with the cache on for good, and it then kept
    the user's own tensors."""
    import threading

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with reuse_cpu_buffers():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with reuse_cpu_buffers():
            b_in.set()
            a_out.wait(10)
            seen["inside_after_a_left"] = ops.cpu_buffer_cache_enabled()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"inside_after_a_left": True}
    assert not ops.cpu_buffer_cache_enabled()


def test_fused_models_in_two_threads():
    """Two threads each running a fused model: right results, and the allocator restored after both."""
    import threading

    models = [randomize(R.slowfast_r50_8x8(num_classes=5), seed=s).eval() for s in (1, 2)]
    fused = [sk.fuse(m) for m in models]
    x = R.pack_pathways(torch.randn(1, 3, 32, 48, 48), 4)
    with torch.no_grad():
        expected = [m(x) for m in models]
    start = threading.Barrier(2)
    results, errors = [[], []], []

    def run(i):
        try:
            start.wait(10)
            with torch.no_grad():
                for _ in range(4):
                    results[i].append(fused[i](x))
        except Exception as exc:  # reported below: an exception in a thread would otherwise pass silently
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not ops.cpu_buffer_cache_enabled()
    for got, want in zip(results, expected):
        assert len(got) == 4
        for y in got:
            assert ((y - want).abs().max() / want.abs().max()) < 1e-4
