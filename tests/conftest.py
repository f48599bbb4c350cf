"""Test setup: Triton runs in interpreter mode on machines without a GPU (set before triton imports)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cpu_backends():
    """The backends that run CPU tensors here: cpu (the extension), triton (the interpreter), reference."""
    from slowfast_kernels import _ext
    from slowfast_kernels.backends import backend_unavailable_reason

    return [pytest.param("cpu", marks=pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="extension not built")),
            pytest.param("triton", marks=pytest.mark.skipif(
                backend_unavailable_reason("triton", torch.device("cpu")) is not None,
                reason="triton cannot run on CPU here")),
            "reference"]


@pytest.fixture(autouse=True)
def _seed_and_full_fp32():
    """Seeded, and TF32 off (restored after): fp32 parity means fp32, for the kernels and the eager oracle."""
    torch.manual_seed(0)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def devices():
    """Every device this machine can run the tests on."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
