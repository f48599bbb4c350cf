"""Backend availability and choice: readable reasons, explicit requests never fall back silently."""
import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels import backends


def test_reference_always_available():
    assert backends.available_backends("cpu")["reference"] is None


def test_cuda_backend_on_cpu_tensor_says_why():
    why = backends.backend_unavailable_reason("cuda", torch.device("cpu"))
    assert why is not None and "cuda tensors" in why


def test_explicit_unavailable_backend_raises_with_reason():
    s, f = torch.randn(1, 2, 2, 3, 3), torch.randn(1, 1, 8, 3, 3)
    with pytest.raises(sk.BackendUnavailable, match="backend 'cuda' cannot run"):
        sk.lateral_fuse(s, f, "time_to_channel", 4, backend="cuda")


def test_env_var_overrides_auto(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.choose_backend("lateral_fuse", "auto", torch.device("cpu")) == "reference"
    monkeypatch.setenv(backends.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=backends.ENV_VAR):
        backends.choose_backend("lateral_fuse", "auto", torch.device("cpu"))


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.choose_backend("lateral_fuse", "tpu", torch.device("cpu"))


def test_auto_skips_backend_whose_check_fails():
    chosen = backends.choose_backend("lateral_fuse", "auto", torch.device("cpu"), {"cpu": lambda: "not this shape"})
    assert chosen == "reference"


@pytest.mark.parametrize("op", ["lateral_fuse", "lateral_fuse_out", "pack_pathways", "pack_pathways_into",
                                "conv3d_bn_act"])
def test_native_cpu_kernel_is_built(op):
    # CI builds the extension: a missing extension or kernel is a failure here (other tests skip on it).
    assert sk._ext.LOAD_ERROR is None, sk._ext.LOAD_ERROR
    assert backends.backend_unavailable_reason("cpu", torch.device("cpu"), op) is None
