"""conv3d_bn_act_maxpool: the SlowFast stem as one op: conv (BN folded) + bias + activation + max_pool3d.

Public entry points: conv3d_bn_act_maxpool, conv3d_bn_act_maxpool_ref (same signature, eager PyTorch),
small_cin_triton_rule (which stem convs the CUDA backends hand to the small-C_in Triton kernel).
Backends: triton = the small-C_in kernels (slowfast_kernels/triton/conv3d_bn_act_maxpool.py and its
tap-row kernels for even column strides and W), with the pool fused when it is the stem pool
((1,3,3)/(1,2,2)/(0,1,1)) and `fuse_pool_rule` says so (both stems at stride 2), else the conv kernel then
torch's max_pool3d; cuda = triton on CUDA tensors; cpu = the CPU conv (the vectorized
small-C_in kernel where plan's measured rule picks it, its bf16 form for bf16 x on AVX512_BF16 without
AMX, else oneDNN's fused conv) then the native channels_last pool (ops/max_pool3d_cl.py);
reference = eager conv3d + bias + relu + max_pool3d.

Every backend returns channels_last_3d (the fused model's layout), whatever x's layout.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from ..backends import backend_unavailable_reason, choose_backend
from .conv3d_bn_act import ACTIVATIONS, IntOr3, _cpu_support, _triple, conv3d_bn_act, output_shape

CL = torch.channels_last_3d
STEM_POOL = ((1, 3, 3), (1, 2, 2), (0, 1, 1))
MAX_SMALL_CIN = 4
_NAME = "conv3d_bn_act_maxpool"


def pool_output_shape(conv_shape, kernel, stride, padding) -> Tuple[int, int, int, int, int]:
    """max_pool3d's output shape (ceil_mode=False, dilation 1)."""
    return (conv_shape[0], conv_shape[1],
            *[(conv_shape[2 + i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(3)])


def small_cin_triton_rule(c_in: int, dilation: Sequence[int] = (1, 1, 1), residual: bool = False) -> bool:
    """The shape rule of the CUDA backends (no measurement): convs with 1 to 4 input channels, no dilation,
    no residual (both stems of every SlowFast and Slow config) run the small-C_in Triton kernel, where
    cuDNN takes 28.7 ms for the Fast stem at batch 32 (5 TFLOP/s, GPU_PROFILE.md)."""
    return 1 <= c_in <= MAX_SMALL_CIN and tuple(dilation) == (1, 1, 1) and not residual


# The fused/separate pool cost model (H200 constants, GPU_PROFILE.md; re-fit once both paths are measured).
# The tap-row kernels that run the stems are tensor-core bound by their sm_90 SASS counts (see
# triton/conv3d_bn_act_maxpool.py), so the halo the fused kernel recomputes costs MMA time; the separate
# pool costs HBM traffic. The other small-C_in kernel (odd W or column stride) gathers element by element:
# ~7e12 lane loads/s.
TENSOR_FLOP_PER_S = 790e12
LANE_LOADS_PER_S = 7.2e12
HBM_BYTES_PER_S = 4.2e12
# Bytes per conv output element that a separate pool moves: the conv's store, the pool's read, and the
# int64 index per pooled element that CUDA's max_pool3d writes even when unused (8 bytes / 4 elements).
SEPARATE_POOL_BYTES_PER_ELEMENT = 2.0  # times the element size, plus:
SEPARATE_POOL_INDEX_BYTES = 2.0


def fuse_pool_rule(weight_shape: Sequence[int], dtype: torch.dtype, pool: Tuple[Tuple[int, ...], ...],
                   stride: Sequence[int] = (1, 2, 2), padding: Sequence[int] = (0, 3, 3)) -> bool:
    """Whether the triton/cuda backends pool inside the conv kernel (only the stem pool can be): when the
    conv-output traffic the fused kernel saves costs more than the halo it recomputes, per conv output:

        saved  C_out * (2 * element size + 2) bytes / HBM rate
        extra  (recompute - 1) * MMA FLOPs a conv output / tensor rate    (tap-row kernels)
               (recompute - 1) * padded K lane loads / load rate           (the element gather)

    Fast stem, bf16 (4 outputs a GEMM row, 36 x 64 x 32 / 4 MACs): saved 8 * 6 = 48 B = 11.4 ps; extra
    0.14 * 36.9 kFLOP = 6.5 ps -> fused. Slow stem: saved 64 * 6 = 384 B = 91 ps; extra 0.31 * 28.7 kFLOP =
    11 ps -> fused. The sm_90 bounds agree (batch 32: Fast fused 0.81 ms against conv 1.0 + pool ~0.16).
    Unmeasured on a GPU: bench_conv3d.py's fast_stem / slow_stem cases time both (`triton_pool_fused`,
    `triton_pool_separate`).
    """
    from ..triton.conv3d_bn_act_maxpool import POOL_CONFIGS, block_n, padded_k, pool_recompute
    from ..triton.conv3d_bn_act_maxpool_tap_rows import TAP_ROWS_POOL_CONFIGS, tap_rows_geometry

    if tuple(tuple(p) for p in pool) != STEM_POOL:
        return False
    c_out, c_in, kd, kh, kw = weight_shape
    elem = torch.empty(0, dtype=dtype).element_size()
    saved_s = c_out * (SEPARATE_POOL_BYTES_PER_ELEMENT * elem + SEPARATE_POOL_INDEX_BYTES) / HBM_BYTES_PER_S
    geometry = tap_rows_geometry(c_out, kw, stride[2], padding[2])
    if geometry is not None:
        cfg = TAP_ROWS_POOL_CONFIGS[geometry["GROUP"]]
        rows = -(-kd * kh // cfg["ROW_STEP"]) * cfg["ROW_STEP"]
        flops = 2 * rows * geometry["K_ROW"] * geometry["N_PAD"] / geometry["GROUP"]
        extra_s = (pool_recompute(cfg["ROWS"], cfg["COLS"]) - 1) * flops / TENSOR_FLOP_PER_S
        return saved_s > extra_s
    cfg = POOL_CONFIGS[block_n(c_out)]
    extra_s = (pool_recompute(cfg["ROWS"], cfg["COLS"]) - 1) * padded_k(c_in, kd, kh, kw) / LANE_LOADS_PER_S
    # C_out beyond one N tile recomputes the gather per tile: the kernels take C_out <= 64 in one.
    return saved_s > extra_s * -(-c_out // block_n(c_out))


def conv3d_bn_act_maxpool_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: IntOr3 = 1,
    padding: IntOr3 = 0,
    *,
    activation: str = "relu",
    pool_kernel: IntOr3 = (1, 3, 3),
    pool_stride: IntOr3 = (1, 2, 2),
    pool_padding: IntOr3 = (0, 1, 1),
) -> torch.Tensor:
    """Eager PyTorch in x's dtype: max_pool3d(act(conv3d(x, weight) + bias)), channels_last_3d."""
    b = None if bias is None else bias.to(x.dtype)
    y = torch.nn.functional.conv3d(x, weight.to(x.dtype), b, stride, padding)
    if activation == "relu":
        y = torch.relu(y)
    y = torch.nn.functional.max_pool3d(y, pool_kernel, pool_stride, pool_padding)
    return y.contiguous(memory_format=CL)


def _check(x, weight, bias, stride, padding, activation, pool) -> Tuple[tuple, tuple]:
    """Validated (conv output shape, pooled shape)."""
    def fail(what):
        raise ValueError(f"{_NAME}: {what}")

    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        fail(f"x: expected a [N, C_in, T, H, W] tensor, got "
             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        fail(f"x: expected float32, bfloat16 or float16, got {x.dtype}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5 or weight.shape[1] != x.shape[1]:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        fail(f"weight: expected [C_out, {x.shape[1]}, kd, kh, kw] (BN folded, groups=1), got {got}")
    if not weight.is_floating_point():
        fail(f"weight: expected a floating-point tensor, got {weight.dtype}")
    if weight.device != x.device:
        fail(f"weight is on {weight.device}, x on {x.device}: expected one device")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dim() != 1
                             or bias.shape[0] != weight.shape[0] or bias.device != x.device):
        got = f"{tuple(bias.shape)} on {bias.device}" if isinstance(bias, torch.Tensor) else type(bias).__name__
        fail(f"bias: expected a [{weight.shape[0]}] tensor on {x.device}, got {got}")
    if activation not in ACTIVATIONS:
        fail(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    conv_shape = output_shape(x.shape, weight.shape, stride, padding, (1, 1, 1))
    if min(conv_shape[2:]) <= 0:
        fail(f"x: spatial size {tuple(x.shape[2:])} is smaller than the kernel {tuple(weight.shape[2:])} "
             f"(padding {tuple(padding)})")
    kernel, pstride, ppad = pool
    if any(2 * p > k for p, k in zip(ppad, kernel)):
        fail(f"pool_padding: expected at most half of pool_kernel {kernel} in every dimension, got {ppad}")
    pooled = pool_output_shape(conv_shape, kernel, pstride, ppad)
    if min(pooled[2:]) <= 0:
        fail(f"pool_kernel: {kernel} (padding {ppad}) is larger than the conv output {conv_shape[2:]}")
    return conv_shape, pooled


@torch.compiler.assume_constant_result
def resolve_backend(backend: str, device: str, dtype: torch.dtype) -> str:
    """The backend for inputs on `device` of `dtype` (constant for torch.compile)."""
    device_ = torch.device(device)
    probe = torch.empty(0, dtype=dtype)

    def cuda_check():
        why = backend_unavailable_reason("triton", device_)
        return None if why is None else f"the cuda backend runs the Triton kernels: {why}"

    if device_.type == "cuda":
        return choose_backend(_NAME, backend, device_, {"cuda": cuda_check}, priority=("cuda", "triton", "reference"),
                              native_op="conv3d_bn_act")
    return choose_backend(_NAME, backend, device_, {"cpu": _cpu_support(probe)}, priority=("cpu", "reference"),
                          native_op="conv3d_bn_act")


# -- Triton ops ----------------------------------------------------------------------------------------

@torch.library.custom_op("slowfast_kernels::conv3d_small_cin_triton_into", mutates_args=("out",))
def conv3d_small_cin_triton_into(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                 stride: Sequence[int], padding: Sequence[int], activation: str, out: torch.Tensor,
                                 out_channel_offset: int) -> None:
    """act(conv3d(x, weight) + bias) for C_in <= 4 into out[:, offset : offset + C_out] (any strides)."""
    from ..triton.conv3d_bn_act_maxpool import conv3d_small_cin_triton

    conv3d_small_cin_triton(x, weight, bias, stride, padding, activation == "relu", out, out_channel_offset)


@conv3d_small_cin_triton_into.register_fake
def _conv3d_small_cin_triton_into_fake(x, weight, bias, stride, padding, activation, out, out_channel_offset):
    return None


@torch.library.custom_op("slowfast_kernels::conv3d_bn_act_maxpool_triton", mutates_args=())
def conv3d_bn_act_maxpool_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                 stride: Sequence[int], padding: Sequence[int], activation: str) -> torch.Tensor:
    """The stem pool (1,3,3)/(1,2,2)/(0,1,1) fused into the small-C_in conv: channels_last_3d pooled output."""
    from ..triton.conv3d_bn_act_maxpool import conv3d_small_cin_maxpool_triton

    conv_shape = output_shape(x.shape, weight.shape, stride, padding, (1, 1, 1))
    y = torch.empty(pool_output_shape(conv_shape, *STEM_POOL), dtype=x.dtype, device=x.device, memory_format=CL)
    return conv3d_small_cin_maxpool_triton(x, weight, bias, stride, padding, activation == "relu", conv_shape[3:], y)


@conv3d_bn_act_maxpool_triton.register_fake
def _conv3d_bn_act_maxpool_triton_fake(x, weight, bias, stride, padding, activation):
    conv_shape = output_shape(x.shape, weight.shape, stride, padding, (1, 1, 1))
    return torch.empty(pool_output_shape(conv_shape, *STEM_POOL), dtype=x.dtype, device=x.device, memory_format=CL)


def conv3d_small_cin(x, weight, bias, stride, padding, activation, out=None, out_channel_offset=0) -> torch.Tensor:
    """The small-C_in Triton conv alone: into out's channel slice, or a new channels_last_3d tensor."""
    if out is None:
        shape = output_shape(x.shape, weight.shape, stride, padding, (1, 1, 1))
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=CL)
        conv3d_small_cin_triton_into(x, weight, bias, list(stride), list(padding), activation, out, 0)
        return out
    conv3d_small_cin_triton_into(x, weight, bias, list(stride), list(padding), activation, out, out_channel_offset)
    return out.narrow(1, out_channel_offset, weight.shape[0])


def _triton(x, weight, bias, stride, padding, activation, pool, fuse_pool):
    if x.shape[1] > MAX_SMALL_CIN:
        raise ValueError(f"{_NAME}: x: the triton backend runs 1 to {MAX_SMALL_CIN} input channels (the stems), "
                         f"got {x.shape[1]}; use backend='cpu' or 'reference'")
    if fuse_pool is None:
        fuse_pool = fuse_pool_rule(tuple(weight.shape), x.dtype, pool, stride, padding)
    elif fuse_pool and tuple(tuple(p) for p in pool) != STEM_POOL:
        raise ValueError(f"{_NAME}: fuse_pool=True: the fused kernel pools with kernel (1,3,3), stride (1,2,2), "
                         f"padding (0,1,1), got kernel {pool[0]}, stride {pool[1]}, padding {pool[2]}")
    if fuse_pool:
        return conv3d_bn_act_maxpool_triton(x, weight, bias, list(stride), list(padding), activation)
    y = conv3d_small_cin(x, weight, bias, stride, padding, activation)
    return torch.nn.functional.max_pool3d(y, *pool).contiguous(memory_format=CL)


def _cpu(x, weight, bias, stride, padding, activation, pool):
    from ..ops.conv3d_small_cin import conv3d_small_cin as conv_small_cin_cpu, small_cin_wins
    from ..ops.conv3d_small_cin import conv3d_small_cin_bf16, small_cin_bf16_wins
    from .max_pool3d_cl import max_pool3d_cl

    if x.dtype == torch.bfloat16 and small_cin_bf16_wins(x, weight.shape, stride, padding, (1, 1, 1)):
        y = conv3d_small_cin_bf16(x, weight.float(), None if bias is None else bias.float(), stride, padding,
                                  activation=activation)
    elif small_cin_wins(x, weight.shape, stride, padding, (1, 1, 1)):
        y = conv_small_cin_cpu(x, weight.float(), None if bias is None else bias.float(), stride, padding,
                               activation=activation)
    else:
        w = weight.to(x.dtype).contiguous(memory_format=CL)
        y = conv3d_bn_act(x.contiguous(memory_format=CL), w, bias, stride, padding, activation=activation,
                          backend="cpu")
    return max_pool3d_cl(y, *pool)


def conv3d_bn_act_maxpool(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: IntOr3 = 1,
    padding: IntOr3 = 0,
    *,
    activation: str = "relu",
    pool_kernel: IntOr3 = (1, 3, 3),
    pool_stride: IntOr3 = (1, 2, 2),
    pool_padding: IntOr3 = (0, 1, 1),
    fuse_pool: Optional[bool] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """max_pool3d(act(conv3d(x, weight) + bias), pool_kernel, pool_stride, pool_padding): the SlowFast stem,
    BN already folded into weight and bias (see fold_bn).

    x        [N, C_in, T, H, W], NCDHW or channels_last_3d; float32, bfloat16 or float16
    weight   [C_out, C_in, kd, kh, kw], any float dtype (cast to x's), e.g. fold_bn's fp32
             Fast stem [8, 3, 5, 7, 7], Slow stem [64, 3, 1, 7, 7]
    bias     [C_out] (any float dtype; added in fp32 by the Triton kernels) or None
    conv     [N, C_out, To, Ho, Wo], To = (T + 2 pd - kd) // sd + 1 (likewise Ho, Wo); never stored when the
             pool is fused
    returns  [N, C_out, To', Ho', Wo'] channels_last_3d in x's dtype, Ho' = (Ho + 2 ph - kh_pool) // sh_pool
             + 1 (likewise To', Wo'); stems at 224: Ho = 112, Ho' = 56.

    stride, padding: the conv's (int or 3 ints); activation "relu" | "none"; pool_*: max_pool3d's
    (ceil_mode=False), the stem's by default. fuse_pool: None lets the triton/cuda backends' shape rule
    decide (fuse_pool_rule), True/False forces the fused kernel / the conv kernel then max_pool3d; the
    other backends always pool separately. backend: auto | triton | cuda | cpu | reference.
    """
    try:
        stride, padding = _triple(stride, "stride", 1), _triple(padding, "padding", 0)
        pool = (_triple(pool_kernel, "pool_kernel", 1), _triple(pool_stride, "pool_stride", 1),
                _triple(pool_padding, "pool_padding", 0))
    except ValueError as exc:  # the shared parser names conv3d_bn_act
        raise ValueError(str(exc).replace("conv3d_bn_act:", f"{_NAME}:", 1)) from None
    _check(x, weight, bias, stride, padding, activation, pool)
    chosen = resolve_backend(backend, str(x.device), x.dtype)
    if chosen == "reference":
        return conv3d_bn_act_maxpool_ref(x, weight, bias, stride, padding, activation=activation,
                                         pool_kernel=pool[0], pool_stride=pool[1], pool_padding=pool[2])
    if chosen in ("triton", "cuda"):
        return _triton(x, weight, bias, stride, padding, activation, pool, fuse_pool)
    return _cpu(x, weight, bias, stride, padding, activation, pool)
