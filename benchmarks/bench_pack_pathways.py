"""pack_pathways: a decoded 64x256x340 uint8 video -> 32 fast + 8 slow frames, short side 256, crop 224.

Impls per case: eager (pack_pathways_ref: PySlowFast's composition, the baseline), the fused kernels
(cpu; cuda and triton on a GPU), and on a GPU a plain device copy of the same bytes (the bandwidth
ceiling the kernel is judged against). Also the resizing variant (short side 288 -> crop 256) where the
bilinear taps are computed. GB/s counts the bytes a single pass must move: the output plus the source
pixels under the crop of the fast frames.
Run: python -m pytest benchmarks/bench_pack_pathways.py
"""
import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels.backends import backend_unavailable_reason

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
V, H, W, T, ALPHA = 64, 256, 340, 32, 4
GEOMETRIES = {"s256 c224": (256, 224), "s288 c256": (288, 256)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ["eager", "cuda", "triton", "copy"] if CUDA else ["eager", "cpu"]


@pytest.fixture(scope="module")
def video():
    torch.manual_seed(0)
    return torch.randint(0, 256, (V, H, W, 3), dtype=torch.uint8, device=DEVICE)


def _bytes(size, crop, dtype):
    out = 3 * (T + T // ALPHA) * crop * crop * dtype.itemsize
    src_side = crop * min(H, W) / size  # source pixels under the crop, per side
    return int(out + T * src_side * src_side * 3)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_pack_pathways(measure, video, geometry, dtype_name, impl):
    size, crop = GEOMETRIES[geometry]
    dtype = DTYPES[dtype_name]
    index = sk.temporal_indices(V, T, 2).to(DEVICE)
    kw = dict(size=size, crop=crop, dtype=dtype)
    case = f"{V}x{H}x{W} u8 -> {T}+{T // ALPHA} {geometry} {dtype_name} {DEVICE}"
    if impl == "eager":
        fn = lambda: sk.pack_pathways_ref(video, index, ALPHA, **kw)  # noqa: E731
    elif impl == "copy":
        nbytes = _bytes(size, crop, dtype) // 2
        src = torch.empty(nbytes, dtype=torch.uint8, device=DEVICE)
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)  # noqa: E731
    else:
        why = backend_unavailable_reason(impl, torch.device(DEVICE), "pack_pathways" if impl != "triton" else None)
        if why:
            pytest.skip(why)
        out = sk.pack_pathways(video, index, ALPHA, backend=impl, **kw)
        ref = sk.pack_pathways_ref(video, index, ALPHA, size=size, crop=crop)  # float32
        torch.testing.assert_close(out[1].float(), ref[1], atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=0)
        # Preallocated outputs: the steady state of a decoding pipeline (no allocator in the timing).
        fn = lambda: sk.pack_pathways(video, index, ALPHA, backend=impl, out=out, **kw)  # noqa: E731
    measure(case, impl, fn, baseline=impl == "eager", device=DEVICE, bytes=_bytes(size, crop, dtype),
            rounds=None if CUDA else 7)
