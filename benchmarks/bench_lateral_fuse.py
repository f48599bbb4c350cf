"""lateral_fuse at the four lateral sites of SlowFast R50 8x8 (alpha 4, K 7) and 4x16 (alpha 8, K 5),
224x224, batch 8, 32 fast frames, channels_last_3d (fp32 on CPU, bf16 on CUDA).

Baseline ("eager"): what a PyTorch model runs at a site - the lateral op (reshape/index, or conv3d + BN +
ReLU) then torch.cat([slow, lateral]). Ours: lateral_fuse(buffer[:, :Cs], fast, ..., out=buffer) with the
slow channels already in the buffer (their producer wrote them there), so no concat copy remains.
On CUDA "copy" is a plain device copy of the lateral bytes: the bandwidth the copy modes aim for.

Run: python -m pytest benchmarks/bench_lateral_fuse.py   (CPU: SLOWFAST_BENCH_BATCH=2 for a quick pass)
"""
from __future__ import annotations

import os

import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels.backends import backend_unavailable_reason
from slowfast_reference.lateral import time_strided_sampling, time_to_channel

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
BATCH = int(os.environ.get("SLOWFAST_BENCH_BATCH", "8"))
T_FAST = 32
CONFIGS = {"r50_8x8": (4, 7), "r50_4x16": (8, 5)}  # alpha, fusion kernel K
SITES = {"stem": (64, 8, 56), "res2": (256, 32, 56), "res3": (512, 64, 28), "res4": (1024, 128, 14)}  # Cs, Cf, HW
MODES = ("time_to_channel", "time_strided_sampling", "time_strided_conv")
IMPLS = ["eager", "cpu"] if DEVICE == "cpu" else ["eager", "cuda", "triton", "copy"]
CL = torch.channels_last_3d


def _site(config, site, mode):
    alpha, k = CONFIGS[config]
    cs, cf, hw = SITES[site]
    t = T_FAST // alpha
    g = torch.Generator(device=DEVICE).manual_seed(0)
    slow = torch.randn(BATCH, cs, t, hw, hw, device=DEVICE, dtype=DTYPE, generator=g).contiguous(memory_format=CL)
    fast = torch.randn(BATCH, cf, T_FAST, hw, hw, device=DEVICE, dtype=DTYPE, generator=g).contiguous(memory_format=CL)
    conv = bn = weight = bias = None
    cl = {"time_to_channel": cf * alpha, "time_strided_sampling": cf, "time_strided_conv": 2 * cf}[mode]
    if mode == "time_strided_conv":
        conv = torch.nn.Conv3d(cf, cl, (k, 1, 1), stride=(alpha, 1, 1), padding=(k // 2, 0, 0), bias=False)
        bn = torch.nn.BatchNorm3d(cl).eval()
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        conv, bn = (m.to(DEVICE, DTYPE).to(memory_format=CL) for m in (conv, bn))
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = (conv.weight * scale.view(-1, 1, 1, 1, 1)).detach().contiguous(memory_format=CL)
        bias = (bn.bias - bn.running_mean * scale).detach()
    buf = torch.empty(BATCH, cs + cl, t, hw, hw, device=DEVICE, dtype=DTYPE).contiguous(memory_format=CL)
    buf[:, :cs] = slow
    return dict(alpha=alpha, slow=slow, fast=fast, conv=conv, bn=bn, weight=weight, bias=bias, buf=buf, cs=cs, cl=cl)


def _eager(mode, s):
    if mode == "time_to_channel":
        lat = time_to_channel(s["fast"], s["alpha"])
    elif mode == "time_strided_sampling":
        lat = time_strided_sampling(s["fast"], s["alpha"])
    else:
        lat = torch.relu(s["bn"](s["conv"](s["fast"])))
    return torch.cat([s["slow"], lat], dim=1)


CASES = [(c, site, m) for c in CONFIGS for site in SITES for m in MODES]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("config,site,mode", CASES, ids=[f"{c}-{s}-{m}" for c, s, m in CASES])
def test_lateral_fuse(measure, config, site, mode, impl):
    if impl == "copy" and mode == "time_strided_conv":
        pytest.skip("the copy-bandwidth reference applies to the copy modes")
    if impl in ("cpu", "cuda", "triton"):
        why = backend_unavailable_reason(impl, torch.device(DEVICE), "lateral_fuse" if impl != "triton" else None)
        if why:
            pytest.skip(why)
    s = _site(config, site, mode)
    cs, alpha = s["cs"], s["alpha"]
    lat_elems = s["buf"][:, cs:].numel()
    read_elems = s["fast"].numel() if mode == "time_to_channel" else lat_elems
    if mode == "time_strided_conv":
        read_elems = s["fast"].numel()
    nbytes = (read_elems + lat_elems) * s["fast"].element_size()
    flops = 2 * lat_elems * s["fast"].shape[1] * CONFIGS[config][1] if mode == "time_strided_conv" else None
    case = f"{config} {site} {mode} b{BATCH}"

    if impl == "eager":
        fn = lambda: _eager(mode, s)  # noqa: E731
    elif impl == "copy":
        src = s["fast"][:, :, ::alpha] if mode == "time_strided_sampling" else s["fast"]
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)  # noqa: E731
    else:
        fn = lambda: sk.lateral_fuse(s["buf"][:, :cs], s["fast"], mode, alpha, s["weight"], s["bias"],  # noqa: E731
                                     out=s["buf"], backend=impl)
    with torch.no_grad():
        if impl != "eager" and impl != "copy":
            torch.testing.assert_close(fn(), _eager(mode, s), atol=2e-2 if DTYPE != torch.float32 else 1e-4,
                                       rtol=2e-2 if DTYPE != torch.float32 else 1e-4)
        measure(case, impl, fn, baseline=impl == "eager", device=DEVICE, bytes=nbytes, flops=flops)
