"""Every distinct conv layer of every SlowFast / Slow config (R50, R101; real channels, kernels, strides and
padding) through conv3d_bn_act, at reduced T/H/W so the Triton kernel runs under the CPU interpreter."""
from functools import lru_cache

import pytest
import torch

import slowfast_kernels as sk
import slowfast_reference as sr
from slowfast_kernels.backends import backend_unavailable_reason

ARCHS = ["slowfast_r50_8x8", "slowfast_r50_4x16", "slowfast_r101_8x8", "slowfast_r101_16x8", "slow_r50_8x8"]


@lru_cache(maxsize=None)
def layer_shapes():
    """{(C_in, C_out, kernel, stride, padding): first layer name} over every config, in model order."""
    shapes = {}
    for arch in ARCHS:
        model = getattr(sr, arch)().to("meta")
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv3d):
                key = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
                shapes.setdefault(key, f"{arch}:{name}")
    return shapes


SHAPES = list(layer_shapes().items())


def reduced_input_size(kernel, stride, padding):
    """Smallest T/H/W giving a 2x2x2 output: every tap, the padding and the stride are exercised."""
    return tuple((2 - 1) * s + k - 2 * p for k, s, p in zip(kernel, stride, padding))


def test_every_layer_kind_is_covered():
    kernels = {k for (_, _, k, _, _), _ in SHAPES}
    assert {(1, 1, 1), (1, 3, 3), (3, 1, 1), (5, 7, 7), (1, 7, 7), (7, 1, 1), (5, 1, 1)} <= kernels
    assert {c for (c, *_), _ in SHAPES} >= {3, 2048} and any(s[0] == 8 for (_, _, _, s, _), _ in SHAPES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("shape,name", SHAPES, ids=[f"{s[0]}-{s[1]}-{'x'.join(map(str, s[2]))}-s{s[3][1]}{s[3][0]}"
                                                    for s, _ in SHAPES])
def test_layer(shape, name, backend, dtype):
    why = backend_unavailable_reason(backend, torch.device("cpu"), "conv3d_bn_act" if backend == "cpu" else None)
    if why is None and backend == "cpu" and dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        why = "oneDNN has no bfloat16 convolution on this CPU (needs avx512bw/avx512_bf16)"
    if why:
        pytest.skip(why)
    cin, cout, kernel, stride, padding = shape
    size = [max(v, 1) for v in reduced_input_size(kernel, stride, padding)]
    g = torch.Generator().manual_seed(cin * 7 + cout)
    x = torch.randn(1, cin, *size, generator=g).contiguous(memory_format=torch.channels_last_3d)
    weight = torch.randn(cout, cin, *kernel, generator=g) / (cin * kernel[0] * kernel[1] * kernel[2]) ** 0.5
    bias = torch.randn(cout, generator=g)
    # conv c of a bottleneck carries the shortcut: exercise the residual epilogue on 1x1x1 expansions
    carries_residual = kernel == (1, 1, 1) and stride == (1, 1, 1) and cout == 4 * cin
    truth_shape = sk.conv3d_bn_act_ref(x[:, :, :, :, :].double(), weight.double(), None, stride, padding,
                                       activation="none").shape
    residual = torch.randn(truth_shape, generator=g).contiguous(memory_format=torch.channels_last_3d) \
        if carries_residual else None
    x = x.to(dtype)
    residual = None if residual is None else residual.to(dtype)
    y = sk.conv3d_bn_act(x, weight, bias, stride, padding, residual=residual, backend=backend)
    truth = sk.conv3d_bn_act_ref(x.double(), weight.double(), bias.double(), stride, padding,
                                 residual=None if residual is None else residual.double())
    assert y.shape == truth.shape and y.dtype == dtype, name
    if dtype == torch.float32:
        torch.testing.assert_close(y.double(), truth, rtol=1e-4, atol=1e-4 * truth.abs().max().item(), msg=name)
    else:  # 2x eager's own error at this precision
        eager = sk.conv3d_bn_act_ref(x, weight, bias, stride, padding, residual=residual)
        eager_err = (eager.double() - truth).abs().max().item()
        err = (y.double() - truth).abs().max().item()
        assert err <= 2 * eager_err + 1e-3, f"{name}: {err:.3g} > 2 x eager {eager_err:.3g}"
