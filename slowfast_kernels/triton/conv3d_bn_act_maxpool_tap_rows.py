"""The stems' fast path: the small-C_in conv (+ the fused stem max-pool) over a 4-channel NDHWC input, whose
tap rows are 16-byte vectors.

Layout: x holds 4 channels (the stems' 3 plus a zero one) with channel stride 1 and column stride 4, so
one kernel row (kd, kh) of an output is 8 consecutive columns x 4 channels = 32 contiguous elements. With
an even column stride (the stems' 2) and a column padding of parity p, every output's first tap column
iw0 = ow * stride - pad has parity p: the row read starts at column s0 = iw0 - p (even), so it begins on a
multiple of 8 elements (16 bytes for bf16, given an even W and aligned strides) and covers taps
-p .. 7 - p (the stems: kw -1 .. 6, tap -1 carrying a zero weight; K row 32 for 28 real elements, 12.5%
padding where the 3-channel row 21 -> 32 wasted 34%). Columns come in pairs of 8 elements that lie both
inside or both outside the frame (s0 and W even), so the W mask is constant over each 16-byte vector and
the loads vectorize; it is loop-invariant, folded with each row's valid kh range into one bit mask a
vector (one AND and test a tap row). The D mask is one scalar per tap row (a program never leaves one
output frame (n, od)). The weight is packed as [KD * KH, K_ROW, N_PAD] in the same (column, channel)
order with zeros in the padding.

GEMM rows: GROUP 4 (C_out <= 8, the Fast stem): a row is 4 neighbouring outputs of one output row; it
reads columns s0 .. s0 + 15 (64 elements; 4 outputs x 7 taps at stride 2 span 14) and its N = 32 columns
are 4 outputs x 8 channel slots, the packed weight shifting each output's taps by 2 columns. Against one
output a row (32 elements, N 8 -> 16) that halves the gather, the shared memory and the wgmma instructions
an output, at the same tensor-core FLOPs. GROUP 1 (the Slow stem's 64 channels): one output, 32 elements.

A program computes a ROWS x COLS block of output positions of one frame (conv: the block is the tile;
pooled: the block overlaps its neighbours by the pool's halo, as in conv3d_bn_act_maxpool.py). The K loop
is one flat loop over the KD * KH tap rows, ROW_STEP of them an iteration with counters for (kd, kh), so
Triton's software pipeliner (num_stages) keeps the cp.async gathers of later rows in flight under the
wgmma of the current one. PATH 0 adds a copy of the loop without the H/W masks for tiles whose reads all
lie inside the frame (25 of 49 conv tiles and 4 of 32 x 32 pool blocks of the Fast stem at 224: 318
instead of 417 instructions an iteration, triton 3.9); the configs take the masked loop alone (PATH 2):
the kernels are load-bound on sm_90, where both loops cost the same LSU cycles, and PATH 0 doubles the
stage buffers (see TAP_ROWS_CONV_CONFIGS).

Instruction counts per K step and est_ms at batch 32, 224, bf16 (sm_90 SASS, both Triton versions): the
table in conv3d_bn_act_maxpool.py's docstring.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the library imports without triton
    triton = None
    tl = None

CHANNELS = 4


if triton is not None:
    from .conv3d_bn_act_maxpool import _pool_and_store, _store_cast

    @triton.jit
    def _to_tap_rows_kernel(x_ptr, y_ptr, pixels, C, BLOCK: tl.constexpr):
        """y [pixels, 4] = x [pixels, C] (both contiguous), zeros in channels C .. 3."""
        p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        c = tl.arange(0, 4)
        ok = (p < pixels)[:, None]
        v = tl.load(x_ptr + p[:, None] * C + c[None, :], mask=ok & (c < C)[None, :], other=0.0)
        tl.store(y_ptr + p[:, None] * 4 + c[None, :], v, mask=ok)

    @triton.jit
    def _tap_rows_conv_tile(
        x_ptr, w_ptr, b_ptr, x_frame, id0, ih0, s0, mask_m,
        D, H, W, sxd, n0,
        SXH: tl.constexpr, KD: tl.constexpr, KH: tl.constexpr, ROW_STEP: tl.constexpr, K_ROW: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_PAD: tl.constexpr,
        RELU: tl.constexpr, UPCAST_DOT: tl.constexpr, MASKED: tl.constexpr,
    ):
        """act(conv + bias) for BLOCK_M rows of one frame: x_frame (int64) = offset of (n, depth id0); a row
        reads K_ROW elements (K_ROW / 4 columns) from column s0 (even) of input row ih0 + kh (int32
        [BLOCK_M] each) for every tap row (kd, kh); mask_m: rows that feed a stored output. Returns fp32
        [BLOCK_M, BLOCK_N] (columns n0 ..). MASKED False: every read of every row lies inside the frame in H
        and W (an interior tile); only the depth is checked (one scalar a tap row)."""
        j = tl.arange(0, K_ROW)
        offs = tl.multiple_of(ih0 * SXH + s0 * 4, 8)[:, None] + j[None, :]
        if MASKED:
            # Column of the first tap of element j's 8-element pair; pairs never straddle the frame edge.
            pair_col = s0[:, None] + 2 * (j // 8)[None, :]
            in_w = (pair_col >= 0) & (pair_col < W) & mask_m[:, None]
            # Bit kh of kh_ok: input row ih0 + kh is inside the frame (kh in lo .. hi - 1), for the pairs
            # inside in W: one AND and a test a 16-byte vector and tap row (KH <= 30).
            lo = tl.minimum(tl.maximum(-ih0, 0), KH)
            hi = tl.maximum(tl.minimum(H - ih0, KH), lo)
            kh_ok = tl.where(in_w, ((1 << hi) - (1 << lo))[:, None], 0)
        w_ptrs = w_ptr + j[:, None] * N_PAD + (n0 + tl.arange(0, BLOCK_N))[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # ROW_STEP tap rows an iteration share its fixed cost (pipeline bookkeeping, barriers, wgmma fences,
        # ~100 instructions). (kd, kh) advance by counters, not divisions; rows past KD * KH are masked
        # (their packed weights are zero too).
        kd = id0 * 0
        kh = id0 * 0
        for step in range(0, KD * KH, ROW_STEP):
            for u in tl.static_range(ROW_STEP):
                kh_u = kh + u
                wrap = kh_u >= KH
                kh_u = tl.where(wrap, kh_u - KH, kh_u)
                kd_u = tl.where(wrap, kd + 1, kd)
                di = id0 + kd_u
                ok_d = (di >= 0) & (di < D) & (kd_u < KD)
                frame = x_ptr + tl.multiple_of(x_frame + kd_u * sxd + kh_u * SXH, 8)
                if MASKED:
                    # tl.where, not &: the interpreter widens a scalar bool & a bool block to int32.
                    mask = tl.where(ok_d, (kh_ok & (1 << kh_u)) != 0, False)
                else:
                    # A block mask (always true but for the depth): the interpreter refuses a scalar one.
                    mask = tl.where(ok_d, (j < K_ROW)[None, :], False)
                a = tl.load(frame + offs, mask=mask, other=0.0)
                b = tl.load(w_ptrs + (step + u) * (K_ROW * N_PAD))
                if UPCAST_DOT:
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                acc = tl.dot(a, b, acc, input_precision="ieee")  # fp32 parity: TF32 off
            kh = kh + ROW_STEP
            wrap = kh >= KH
            kh = tl.where(wrap, kh - KH, kh)
            kd = tl.where(wrap, kd + 1, kd)
        acc += tl.load(b_ptr + n0 + tl.arange(0, BLOCK_N))[None, :]
        if RELU:
            acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as in eager ReLU
        return acc

    @triton.jit
    def _tap_rows_tile(
        x_ptr, w_ptr, b_ptr, x_frame, id0, ih0, s0, mask_m,
        D, H, W, sxd, n0,
        SXH: tl.constexpr, KD: tl.constexpr, KH: tl.constexpr, ROW_STEP: tl.constexpr, K_ROW: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, N_PAD: tl.constexpr,
        RELU: tl.constexpr, UPCAST_DOT: tl.constexpr, PATH: tl.constexpr,
    ):
        """_tap_rows_conv_tile without the H/W masks where the whole tile reads inside the frame (the stems
        at 224: 25 of 49 tiles), with them elsewhere. PATH 1 / 2 compile one of
        the two loops alone (unmasked / masked); the configs pick 0 or 2, 1 is for instruction counts."""
        if PATH == 1:
            interior = True
        elif PATH == 2:
            interior = False
        else:
            interior = ((tl.min(ih0) >= 0) & (tl.max(ih0) + KH <= H) & (tl.min(s0) >= 0)
                        & (tl.max(s0) + K_ROW // 4 <= W))
        if interior:
            acc = _tap_rows_conv_tile(x_ptr, w_ptr, b_ptr, x_frame, id0, ih0, s0, mask_m, D, H, W, sxd, n0,
                                      SXH, KD, KH, ROW_STEP, K_ROW, BLOCK_M, BLOCK_N, N_PAD, RELU, UPCAST_DOT,
                                      False)
        else:
            acc = _tap_rows_conv_tile(x_ptr, w_ptr, b_ptr, x_frame, id0, ih0, s0, mask_m, D, H, W, sxd, n0,
                                      SXH, KD, KH, ROW_STEP, K_ROW, BLOCK_M, BLOCK_N, N_PAD, RELU, UPCAST_DOT,
                                      True)
        return acc

    @triton.jit
    def _conv3d_tap_rows_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        C_out, D, H, W, To, Ho, Wo, tiles_h, tiles_w,
        sxn, sxd,
        syn, syc, syd, syh, syw,
        y_channel_offset,
        stride_d, stride_w, pad_d, pad_h, pad_w,
        SXH: tl.constexpr, STRIDE_H: tl.constexpr, TAP0: tl.constexpr, KD: tl.constexpr, KH: tl.constexpr,
        ROW_STEP: tl.constexpr, K_ROW: tl.constexpr, GROUP: tl.constexpr, SLOT: tl.constexpr,
        ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_N: tl.constexpr, N_PAD: tl.constexpr,
        RELU: tl.constexpr, UPCAST_DOT: tl.constexpr, BF16_RTNE_BITS: tl.constexpr, PATH: tl.constexpr = 0,
    ):
        """Program (frame n*To + od, ROWS x COLS tile of (oh, ow)) x (N tile). A GEMM row is a group of
        GROUP neighbouring outputs of one output row; GEMM column q * SLOT + c is output q's channel c."""
        G: tl.constexpr = COLS // GROUP
        pid = tl.program_id(0)
        tiles = tiles_h * tiles_w
        nd = (pid // tiles).to(tl.int64)
        tile = pid % tiles
        od = (nd % To).to(tl.int32)
        n = nd // To
        i = tl.arange(0, ROWS * G)
        oh = (tile // tiles_w) * ROWS + i // G
        ow0 = (tile % tiles_w) * COLS + (i % G) * GROUP
        id0 = od * stride_d - pad_d
        n0 = tl.program_id(1) * BLOCK_N
        acc = _tap_rows_tile(
            x_ptr, w_ptr, b_ptr, n * sxn + id0.to(tl.int64) * sxd, id0, oh * STRIDE_H - pad_h,
            ow0 * stride_w - pad_w - TAP0, (oh < Ho) & (ow0 < Wo), D, H, W, sxd, n0,
            SXH, KD, KH, ROW_STEP, K_ROW, ROWS * G, BLOCK_N, N_PAD, RELU, UPCAST_DOT, PATH)
        q = tl.arange(0, BLOCK_N) // SLOT
        ch = n0 + tl.arange(0, BLOCK_N) % SLOT
        ow = ow0[:, None] + q[None, :]
        y_off = ((n * syn + od.to(tl.int64) * syd + oh.to(tl.int64) * syh)[:, None] + ow.to(tl.int64) * syw
                 + ((ch + y_channel_offset).to(tl.int64) * syc)[None, :])
        _store_cast(y_ptr, y_off, acc, (oh < Ho)[:, None] & (ow < Wo) & (ch < C_out)[None, :], BF16_RTNE_BITS)

    @triton.jit
    def _conv3d_tap_rows_maxpool_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        C_out, D, H, W, To, Ho, Wo, Hp, Wp,
        sxn, sxd,
        syn, syc, syd, syh, syw,
        stride_d, stride_w, pad_d, pad_h, pad_w,
        SXH: tl.constexpr, STRIDE_H: tl.constexpr, TAP0: tl.constexpr, KD: tl.constexpr, KH: tl.constexpr,
        ROW_STEP: tl.constexpr, K_ROW: tl.constexpr, GROUP: tl.constexpr, SLOT: tl.constexpr,
        ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_N: tl.constexpr, N_PAD: tl.constexpr,
        RELU: tl.constexpr, UPCAST_DOT: tl.constexpr, BF16_RTNE_BITS: tl.constexpr, PATH: tl.constexpr = 0,
    ):
        """Pool (1,3,3)/(1,2,2)/(0,1,1) of the conv: program (n*To + od, row tile, column tile) writes pooled
        rows ph0 .. ph0 + ROWS/2 - 2 and columns pw0 .. pw0 + COLS/2 - 2 from a ROWS x COLS conv block
        starting one row and one column before them."""
        G: tl.constexpr = COLS // GROUP
        nd = tl.program_id(0).to(tl.int64)
        ph0 = tl.program_id(1) * (ROWS // 2 - 1)
        pw0 = tl.program_id(2) * (COLS // 2 - 1)
        od = (nd % To).to(tl.int32)
        n = nd // To
        i = tl.arange(0, ROWS * G)
        oh = 2 * ph0 - 1 + i // G
        ow0 = 2 * pw0 - 1 + (i % G) * GROUP
        feeds = (oh >= 0) & (oh < Ho) & (ow0 + GROUP > 0) & (ow0 < Wo)
        # Block element e = conv row 2*ph0 - 1 + e // COLS, column 2*pw0 - 1 + e % COLS.
        e = tl.arange(0, ROWS * COLS)
        oh_e = 2 * ph0 - 1 + e // COLS
        ow_e = 2 * pw0 - 1 + e % COLS
        inside = (oh_e >= 0) & (oh_e < Ho) & (ow_e >= 0) & (ow_e < Wo)
        id0 = od * stride_d - pad_d
        x_frame = n * sxn + id0.to(tl.int64) * sxd
        for c0 in range(0, N_PAD, BLOCK_N):
            acc = _tap_rows_tile(
                x_ptr, w_ptr, b_ptr, x_frame, id0, oh * STRIDE_H - pad_h, ow0 * stride_w - pad_w - TAP0, feeds,
                D, H, W, sxd, c0, SXH, KD, KH, ROW_STEP, K_ROW, ROWS * G, BLOCK_N, N_PAD, RELU, UPCAST_DOT, PATH)
            # [group row, (q, c)] is row-major [conv position, c]: one reshape, no data movement in the IR.
            _pool_and_store(y_ptr, tl.reshape(acc, (ROWS * COLS, SLOT)), inside, n, od, ph0, pw0, c0, C_out,
                            Hp, Wp, syn, syc, syd, syh, syw, ROWS, COLS, SLOT, BF16_RTNE_BITS)


# -- layout checks and packing -------------------------------------------------------------------------

def tap0(padding_w: int) -> int:
    """Taps read before kw = 0 so every row starts on an even column: the column padding's parity."""
    return padding_w % 2


def is_tap_rows_input(x: torch.Tensor) -> bool:
    """x is [N, 4, T, H, W] with channel stride 1 and column stride 4 (a 4-channel NDHWC tensor or view)."""
    return x.dim() == 5 and x.shape[1] == CHANNELS and x.stride(1) == 1 and x.stride(4) == CHANNELS


def tap_rows_geometry(c_out: int, kw: int, stride_w: int, padding_w: int) -> Optional[dict]:
    """How a GEMM row is built, or None where the tap-row kernels do not fit (an odd column stride: the
    first tap column's parity would vary). GROUP 4 (C_out <= 8, the Fast stem): a row is 4 neighbouring
    outputs of one output row, K_ROW 64 elements = columns s0 .. s0 + 15 (4 outputs x 7 taps at stride 2
    span 14), N 32 = 4 outputs x 8 channel slots: half the gather and half the wgmma instructions of one
    output a row (32 elements, N 8 -> 16). GROUP 1: one output a row, K_ROW 32 (8 columns)."""
    t0 = tap0(padding_w)
    if stride_w % 2:
        return None
    if c_out <= 8 and t0 + 3 * stride_w + kw <= 16:
        return dict(GROUP=4, SLOT=8, K_ROW=64, BLOCK_N=32, N_PAD=32)
    if t0 + kw <= 8:
        from .conv3d_bn_act_maxpool import block_n

        bn = block_n(c_out)
        return dict(GROUP=1, SLOT=bn, K_ROW=32, BLOCK_N=bn, N_PAD=-(-c_out // bn) * bn)
    return None


def tap_rows_fit(x_shape: Sequence[int], weight_shape: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int]) -> bool:
    """Whether the tap-row kernels run this conv (on an input laid out by to_tap_rows): C_in <= 4, a
    tap_rows_geometry, an even W (tap pairs then never straddle the frame edge), KH <= 30 (a bit mask of
    tap rows), and a frame small enough for int32 offsets."""
    _, c_in, _, h, w = x_shape
    c_out, _, _, kh, kw = weight_shape
    return (c_in <= CHANNELS and tap_rows_geometry(c_out, kw, stride[2], padding[2]) is not None and w % 2 == 0
            and kh <= 30 and (h + 8) * (w + 16) * CHANNELS < 2 ** 31)


def tap_rows_aligned(x: torch.Tensor) -> bool:
    """The 16-byte alignment the kernels assume (tl.multiple_of): base address and row, frame, batch strides."""
    return (is_tap_rows_input(x) and x.data_ptr() % 16 == 0 and x.shape[4] % 2 == 0
            and all(int(s) % 8 == 0 for s in (x.stride(0), x.stride(2), x.stride(3))))


def to_tap_rows(x: torch.Tensor) -> torch.Tensor:
    """[N, C, T, H, W] (C <= 4, any strides) -> [N, 4, T, H, W] as 4-channel NDHWC memory, zeros in the added
    channels. A 4-channel NDHWC input with the alignment is returned as is; else one pass of
    _to_tap_rows_kernel (the stems' 3-channel input: reads 3 and writes 4 channels a pixel, 0.17 ms for the
    Fast stem's 32 x 3 x 32 x 224 x 224 bf16 at 4.2 TB/s)."""
    if tap_rows_aligned(x):
        return x
    n, c, t, h, w = x.shape
    # Channels last (the fused model's layout) is read as [pixels, C] in place; another layout is first
    # made channels last (one more pass).
    pixels_c = x.permute(0, 2, 3, 4, 1).contiguous()
    x4 = torch.empty((n, t, h, w, CHANNELS), dtype=x.dtype, device=x.device)
    pixels = n * t * h * w
    if pixels:
        grid = (triton.cdiv(pixels, TO_TAP_ROWS_BLOCK),)
        _to_tap_rows_kernel[grid](pixels_c, x4, pixels, c, BLOCK=TO_TAP_ROWS_BLOCK, num_warps=4)
    return x4.permute(0, 4, 1, 2, 3)


TO_TAP_ROWS_BLOCK = 1024  # pixels a program: 8 KB of bf16 output


def pack_weight_tap_rows(weight: torch.Tensor, dtype: torch.dtype, stride_w: int, padding_w: int, geometry: dict,
                         row_step: int) -> torch.Tensor:
    """[C_out, C_in, KD, KH, KW] -> [rows, K_ROW, N_PAD]: element [kd * KH + kh, 4 * t + c, q * SLOT + o] with
    column t = tap0 + q * stride_w + kw for output q of a group; zeros elsewhere; rows = KD * KH rounded up
    to a multiple of row_step."""
    c_out, c_in, kd, kh, kw = weight.shape
    t0, k_row, n_pad, slot = tap0(padding_w), geometry["K_ROW"], geometry["N_PAD"], geometry["SLOT"]
    rows = -(-kd * kh // row_step) * row_step
    packed = torch.zeros(rows, k_row // CHANNELS, CHANNELS, n_pad, dtype=dtype, device=weight.device)
    taps = weight.permute(2, 3, 4, 1, 0).reshape(kd * kh, kw, c_in, c_out).to(dtype)
    for q in range(geometry["GROUP"]):
        t = t0 + q * stride_w
        packed[:kd * kh, t:t + kw, :c_in, q * slot:q * slot + c_out] = taps
    return packed.reshape(rows, k_row, n_pad)


def interior_tile_share(h: int, w: int, conv_hw: Sequence[int], weight_shape: Sequence[int], stride: Sequence[int],
                        padding: Sequence[int], cfg: dict, pooled_hw: Optional[Sequence[int]] = None) -> float:
    """Share of a frame's programs whose tile reads inside the frame everywhere (the unmasked loop), for
    the conv kernel's tiles or (pooled_hw given) the fused pool kernel's blocks: the same test as
    _tap_rows_tile's, for cost estimates (PATH 1 / 2 give each loop's instruction counts)."""
    g = tap_rows_geometry(weight_shape[0], weight_shape[4], stride[2], padding[2])
    kh, rows, cols = weight_shape[3], cfg["ROWS"], cfg["COLS"]
    if pooled_hw is None:
        starts_h = range(0, conv_hw[0], rows)
        starts_w = range(0, conv_hw[1], cols)
    else:
        starts_h = range(-1, 2 * pooled_hw[0] - 1, 2 * (rows // 2 - 1))
        starts_w = range(-1, 2 * pooled_hw[1] - 1, 2 * (cols // 2 - 1))
    t0 = tap0(padding[2])
    inside_h = [r0 * stride[1] - padding[1] >= 0 and (r0 + rows - 1) * stride[1] - padding[1] + kh <= h
                for r0 in starts_h]
    inside_w = [c0 * stride[2] - padding[2] - t0 >= 0
                and (c0 + cols - g["GROUP"]) * stride[2] - padding[2] - t0 + g["K_ROW"] // CHANNELS <= w
                for c0 in starts_w]
    return sum(inside_h) * sum(inside_w) / (len(inside_h) * len(inside_w))


# -- configs and launchers -----------------------------------------------------------------------------

# Conv-only kernel, keyed by GROUP (and (GROUP, torch.float32) where fp32 differs: its ieee dots run as FFMA
# with the operands in registers): the ROWS x COLS output tile (ROWS * COLS / GROUP GEMM rows) and ROW_STEP
# tap rows an iteration. 112 x 112 outputs split into 7 x 7 tiles of 16 x 16 (no partial tiles), 25 of
# them interior. GROUP 4: M 64, ROW_STEP 4 amortizes the loop's fixed cost (stage bookkeeping, barriers,
# wgmma fences) over 4 tap rows; 3 stages of (64 x 64 + 64 x 32) x 4 x 2 B = 48 KB. (The plan pools the
# stems fused: this kernel runs for conv3d_bn_act's out= slices and fuse_pool=False.) GROUP 1 (N 64): M
# 256, ROW_STEP 1, the 7 tap rows of the Slow stem unrolled. PATH (see _tap_rows_tile): 0 = an unmasked
# loop for interior tiles, 2 = the masked loop everywhere. PATH 0 allocates each loop's stage buffers
# apart (sm_90: 289 KB for the GROUP 4 configs, over the 227 KB a block can have) and saves no time where
# the loads bound the kernel (sm_90 bounds: the same LSU cycles on both loops), so every config takes 2.
# fp32 (sm_90, triton 3.6 and 3.9): ROW_STEP 4 spills 304-552 B (four unrolled FFMA dots), the Slow stem's
# M 256 on 4 warps 608-648 B.
TAP_ROWS_CONV_CONFIGS = {
    4: dict(ROWS=16, COLS=16, ROW_STEP=4, PATH=2, num_warps=4, num_stages=3),
    (4, torch.float32): dict(ROWS=16, COLS=16, ROW_STEP=1, PATH=2, num_warps=4, num_stages=3),
    1: dict(ROWS=16, COLS=16, ROW_STEP=1, PATH=2, num_warps=4, num_stages=3),
    (1, torch.float32): dict(ROWS=16, COLS=16, ROW_STEP=1, PATH=2, num_warps=8, num_stages=3),
}
# Fused pool kernel, keyed as above: the conv block. Every power-of-two block computes 128 x 128 conv
# positions a 112 x 112 frame (56 pooled = 8 x 7, 4 x 15 or 2 x 31 a block), so larger blocks save only the
# weight loads a block and the epilogue; ROW_STEP 1: 35 tap rows, not 36. GROUP 4 (the Fast stem): 32 x 64
# = 512 GEMM rows on 4 warps, 3 stages of 68 KB (205 KB); no block is interior. sm_90 bounds at batch 32,
# bf16 (triton 3.9 / 3.6): 0.811 / 0.792 ms, LSU-bound (the 2x-overlapping 16-byte gathers of the tap
# rows), against 0.878 / ~0.86 for 32 x 32 with ROW_STEP 2, whose PATH 0 also needed 289 KB of shared
# memory. fp32: 32 x 32 on 8 warps, no spills (142 registers; 4 warps and ROW_STEP 2 spill 592-760 B).
# GROUP 1 (the Slow stem): 16 x 16 x 64 channels, 8 warps, masked loop only.
TAP_ROWS_POOL_CONFIGS = {
    4: dict(ROWS=32, COLS=64, ROW_STEP=1, PATH=2, num_warps=4, num_stages=3),
    (4, torch.float32): dict(ROWS=32, COLS=32, ROW_STEP=1, PATH=2, num_warps=8, num_stages=2),
    1: dict(ROWS=16, COLS=16, ROW_STEP=1, PATH=2, num_warps=8, num_stages=3),
}


def tap_rows_config(configs: dict, group: int, dtype: torch.dtype) -> dict:
    """The launch config of a GROUP and input dtype: the (GROUP, dtype) entry where there is one."""
    return dict(configs.get((group, dtype), configs[group]))


# The interpreter: one numpy call per block operation and K step, so large tiles that still split the tests'
# shapes into several programs in both directions.
INTERPRETER_TAP_ROWS_CONV = dict(ROWS=8, COLS=16, ROW_STEP=2, PATH=0)
INTERPRETER_TAP_ROWS_POOL = dict(ROWS=16, COLS=32, ROW_STEP=2, PATH=0)


def _prepare(x4, weight, bias, stride, padding, out, configs, interpreter_config, interpreter):
    """(kernel constexprs, packed weight, padded bias) for a launch."""
    from .conv3d_bn_act_maxpool import _mode, _pad_bias

    geometry = tap_rows_geometry(weight.shape[0], weight.shape[4], stride[2], padding[2])
    cfg = dict(interpreter_config) if interpreter else tap_rows_config(configs, geometry["GROUP"], x4.dtype)
    w_dtype = torch.float32 if x4.dtype == torch.float32 else x4.dtype
    w = pack_weight_tap_rows(weight, w_dtype, stride[2], padding[2], geometry, cfg["ROW_STEP"])
    b = _pad_bias(bias, weight.shape[0], geometry["N_PAD"], x4.device)
    if geometry["GROUP"] > 1:  # the bias per output slot
        b = _pad_bias(bias, weight.shape[0], geometry["SLOT"], x4.device).repeat(geometry["GROUP"])
    fixed = dict(_mode())
    if interpreter:
        fixed["BF16_RTNE_BITS"] = out.dtype == torch.bfloat16
    consts = dict(SXH=x4.stride(3), STRIDE_H=stride[1], TAP0=tap0(padding[2]), KD=weight.shape[2],
                  KH=weight.shape[3], **geometry, **cfg, **fixed)
    return consts, w, b


def conv3d_tap_rows_triton(x4: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           stride: Sequence[int], padding: Sequence[int], relu: bool, out: torch.Tensor,
                           out_channel_offset: int, interpreter: bool) -> torch.Tensor:
    """act(conv3d(x, weight) + bias) into out[:, offset : offset + C_out] (any strides). x4: to_tap_rows'
    layout (tap_rows_aligned), weight [C_out, C_in <= 4, KD, KH, KW] with tap_rows_fit."""
    N, _, D, H, W = x4.shape
    _, _, To, Ho, Wo = out.shape
    consts, w, b = _prepare(x4, weight, bias, stride, padding, out, TAP_ROWS_CONV_CONFIGS, INTERPRETER_TAP_ROWS_CONV,
                            interpreter)
    tiles_h, tiles_w = triton.cdiv(Ho, consts["ROWS"]), triton.cdiv(Wo, consts["COLS"])
    grid = (N * To * tiles_h * tiles_w, consts["N_PAD"] // consts["BLOCK_N"])
    _conv3d_tap_rows_kernel[grid](
        x4, w, b, out, weight.shape[0], D, H, W, To, Ho, Wo, tiles_h, tiles_w,
        x4.stride(0), x4.stride(2), *(int(s) for s in out.stride()), out_channel_offset,
        stride[0], stride[2], *padding, RELU=relu, **consts,
    )
    return out


def conv3d_tap_rows_maxpool_triton(x4: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                   stride: Sequence[int], padding: Sequence[int], relu: bool,
                                   conv_hw: Sequence[int], out: torch.Tensor, interpreter: bool) -> torch.Tensor:
    """max_pool3d(act(conv3d(x, weight) + bias), (1,3,3), (1,2,2), (0,1,1)) into out (any strides); x4 and
    weight as for conv3d_tap_rows_triton, conv output height and width conv_hw."""
    N, _, D, H, W = x4.shape
    _, _, To, Hp, Wp = out.shape
    consts, w, b = _prepare(x4, weight, bias, stride, padding, out, TAP_ROWS_POOL_CONFIGS, INTERPRETER_TAP_ROWS_POOL,
                            interpreter)
    grid = (N * To, triton.cdiv(Hp, consts["ROWS"] // 2 - 1), triton.cdiv(Wp, consts["COLS"] // 2 - 1))
    _conv3d_tap_rows_maxpool_kernel[grid](
        x4, w, b, out, weight.shape[0], D, H, W, To, conv_hw[0], conv_hw[1], Hp, Wp,
        x4.stride(0), x4.stride(2), *(int(s) for s in out.stride()), stride[0], stride[2], *padding,
        RELU=relu, **consts,
    )
    return out
