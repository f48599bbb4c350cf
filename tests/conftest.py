"""Test setup: Triton runs in interpreter mode on machines without a GPU (set before triton imports)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def devices():
    """Every device this machine can run the tests on."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
