"""pack_pathways: decoded frames -> normalized [slow, fast] model inputs in one pass.

temporal_indices (PySlowFast's clip sampling), the public op, its eager reference pack_pathways_ref
(same signature, PySlowFast's order of operations) and the torch.library registrations: fake kernels of
the native ops and the Triton custom ops.
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from slowfast_reference._args import is_int
from slowfast_reference.pack import (SLOW_RULES, check_value_range, parse_value_range, scale_to_unit,
                                     slow_frame_indices, value_range_error)

from .. import _ext  # noqa: F401  (loads the native op schemas when the extension is built)
from ..backends import choose_backend

DEFAULT_MEAN = (0.45, 0.45, 0.45)
DEFAULT_STD = (0.225, 0.225, 0.225)
INPUT_DTYPES = (torch.uint8, torch.float32, torch.float16, torch.bfloat16)
OUTPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

Floats3 = Union[float, Sequence[float]]
Range = Optional[Sequence[float]]


def temporal_indices(num_video_frames: int, num_frames: int, sampling_rate: int, clip_idx: int = 0,
                     num_clips: int = 1, generator: Optional[torch.Generator] = None, *,
                     fps: Optional[float] = None, target_fps: float = 30) -> torch.Tensor:
    """The num_frames frame indices of clip `clip_idx` of `num_clips` (PySlowFast decoder, use_offset=False).

    clip_size = max(1, num_frames * sampling_rate * fps / target_fps) (sampling_rate counts frames at
    target_fps, PySlowFast's TARGET_FPS 30: a 25 fps video spans fewer of its frames per clip, a 60 fps one
    more; fps=None: num_frames * sampling_rate, for frames without a known rate), delta = max(V - clip_size,
    0), start = delta * clip_idx / num_clips (clip_idx = -1: uniform in [0, delta], drawn from `generator`),
    index = clamp(linspace(start, start + clip_size - 1, num_frames), 0, V - 1).long(). A video shorter
    than the clip repeats its last frame.
    """
    for name, value in (("num_video_frames", num_video_frames), ("num_frames", num_frames),
                        ("sampling_rate", sampling_rate), ("num_clips", num_clips)):
        if not is_int(value) or value < 1:
            raise ValueError(f"temporal_indices: {name}: expected a positive int, got {value!r}")
    if not is_int(clip_idx) or not -1 <= clip_idx < num_clips:
        raise ValueError(f"temporal_indices: clip_idx: expected -1 (random) or an int in [0, {num_clips}), "
                         f"got {clip_idx!r}")
    for name, value in (("fps", fps), ("target_fps", target_fps)):
        if value is None and name == "fps":
            continue
        if (not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value)
                or value <= 0):
            raise ValueError(f"temporal_indices: {name}: expected a positive number of frames per second, "
                             f"got {value!r}")
    if fps is None:
        clip_size: float = int(num_frames) * int(sampling_rate)
    else:
        # PySlowFast: np.maximum(1.0, sampling_rate * num_frames / target_fps * fps), in float64.
        clip_size = max(1.0, float(sampling_rate) * float(num_frames) / float(target_fps) * float(fps))
    delta = max(int(num_video_frames) - clip_size, 0)
    if clip_idx == -1:
        start = delta * torch.rand((), dtype=torch.float64, generator=generator).item()
    else:
        start = delta * int(clip_idx) / int(num_clips)
    end = start + clip_size - 1
    # float32 linspace, as PySlowFast computes it: the rounding decides some indices.
    index = torch.linspace(start, end, int(num_frames))
    return torch.clamp(index, 0, int(num_video_frames) - 1).long()


def _floats3(value: Floats3, name: str) -> Tuple[float, float, float]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, numbers.Real):
        value = (value,) * 3
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        raise ValueError(f"pack_pathways: {name}: expected a float or 3 floats, got {value!r}") from None
    if len(out) != 3:
        raise ValueError(f"pack_pathways: {name}: expected 3 values (R, G, B), got {len(out)}")
    return out


def clip_geometry(height: int, width: int, size: Optional[int], crop: Optional[int],
                  spatial_idx: int = 1) -> Tuple[Tuple[int, int], Tuple[int, int, int, int]]:
    """((resized_h, resized_w), (y0, x0, crop_h, crop_w)) of PySlowFast's short-side scale + uniform_crop.

    Short side -> size, long side -> floor(long / short * size); no resize when the short side already
    equals size (or size is None). Crop offsets ceil((H - crop) / 2), ceil((W - crop) / 2); spatial_idx 0
    and 2 move the offset to the start and end of the long side.
    """
    rh, rw = height, width
    if size is not None and not ((width <= height and width == size) or (height <= width and height == size)):
        rh = rw = size
        if width < height:
            rh = int(math.floor(float(height) / width * size))
        else:
            rw = int(math.floor(float(width) / height * size))
    if crop is None:
        return (rh, rw), (0, 0, rh, rw)
    if crop > rh or crop > rw:
        after = f" after resizing to short side {size}" if size is not None else ""
        raise ValueError(f"pack_pathways: crop: {crop} is larger than the {rh}x{rw} frame{after}")
    y0 = int(math.ceil((rh - crop) / 2))
    x0 = int(math.ceil((rw - crop) / 2))
    if rh > rw:
        y0 = {0: 0, 1: y0, 2: rh - crop}[spatial_idx]
    else:
        x0 = {0: 0, 1: x0, 2: rw - crop}[spatial_idx]
    return (rh, rw), (y0, x0, crop, crop)


def _per_sample_index(fast_index: torch.Tensor, n: int) -> torch.Tensor:
    return fast_index.expand(n, -1) if fast_index.dim() == 1 else fast_index


def pack_pathways_ref(
    video: torch.Tensor,
    fast_index: Union[torch.Tensor, Sequence[int]],
    alpha: int,
    *,
    size: Optional[int] = None,
    crop: Optional[int] = None,
    spatial_idx: int = 1,
    mean: Floats3 = DEFAULT_MEAN,
    std: Floats3 = DEFAULT_STD,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    out: Optional[Sequence[torch.Tensor]] = None,
    value_range: Range = None,
    slow_rule: str = "linspace",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eager PyTorch in PySlowFast's order: index_select, to(dtype) (/255 for uint8; float frames mapped
    from value_range to [0, 1]), normalize, permute, interpolate, crop, then the slow frames picked from the
    fast ones. Arithmetic runs in `dtype` (float64 makes it the oracle). Same arguments and result as
    pack_pathways, float frames outside value_range refused alike."""
    value_range = parse_value_range(value_range, video.dtype)
    check_value_range(video, value_range, "video")
    _check_slow_rule(slow_rule)
    return _pack_ref(video, fast_index, alpha, size=size, crop=crop, spatial_idx=spatial_idx, mean=mean, std=std,
                     dtype=dtype, channels_last=channels_last, out=out, value_range=value_range, slow_rule=slow_rule)


def _check_slow_rule(slow_rule) -> None:
    if slow_rule not in SLOW_RULES:
        raise ValueError(f"pack_pathways: slow_rule: expected one of {SLOW_RULES}, got {slow_rule!r}")


def _pack_ref(video, fast_index, alpha, *, size, crop, spatial_idx, mean, std, dtype, channels_last, out,
              value_range, slow_rule="linspace"):
    alpha, spatial_idx = int(alpha), int(spatial_idx)
    size, crop = (None if v is None else int(v) for v in (size, crop))
    batched = video.dim() == 5
    v = video if batched else video.unsqueeze(0)
    idx = torch.as_tensor(fast_index, dtype=torch.long, device=video.device)
    idx = _per_sample_index(idx, v.shape[0])
    frames = torch.stack([torch.index_select(v[i], 0, idx[i]) for i in range(v.shape[0])])  # [N, T, H, W, 3]
    is_uint8 = frames.dtype == torch.uint8
    frames = frames.to(dtype)
    if is_uint8:
        frames = frames / 255.0
    else:
        frames = scale_to_unit(frames, value_range)
    frames = (frames - torch.tensor(_floats3(mean, "mean"), dtype=dtype, device=frames.device)) / torch.tensor(
        _floats3(std, "std"), dtype=dtype, device=frames.device)
    frames = frames.permute(0, 4, 1, 2, 3)  # [N, 3, T, H, W]
    n, c, t, h, w = frames.shape
    (rh, rw), (y0, x0, ch, cw) = clip_geometry(h, w, size, crop, spatial_idx)
    if (rh, rw) != (h, w):
        frames = F.interpolate(frames.reshape(n * c, t, h, w), size=(rh, rw), mode="bilinear",
                               align_corners=False).reshape(n, c, t, rh, rw)
    frames = frames[:, :, :, y0:y0 + ch, x0:x0 + cw]
    slow = torch.index_select(frames, 2, slow_frame_indices(t, alpha, frames.device, rule=slow_rule))
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    slow, fast = slow.contiguous(memory_format=fmt), frames.contiguous(memory_format=fmt)
    if not batched:
        slow, fast = slow[0], fast[0]
    if out is not None:
        out[0].copy_(slow)
        out[1].copy_(fast)
        return out[0], out[1]
    return slow, fast


def _check_inputs(video, fast_index, alpha, size, crop, spatial_idx, dtype, out, value_range):
    """Validate; returns (index as int64 on the video's device, alpha, size, crop, spatial_idx as Python ints,
    (lo, hi)). The index bounds and a float video's value range cost one device sync together."""
    if not isinstance(video, torch.Tensor) or video.dim() not in (4, 5) or video.shape[-1] != 3:
        got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"pack_pathways: video: expected a [V, H, W, 3] or [N, V, H, W, 3] tensor, got {got}")
    if video.dtype not in INPUT_DTYPES:
        raise ValueError(f"pack_pathways: video: expected dtype in {INPUT_DTYPES}, got {video.dtype}")
    if video.numel() == 0:
        raise ValueError(f"pack_pathways: video: expected a non-empty tensor, got shape {tuple(video.shape)}")
    vrange = parse_value_range(value_range, video.dtype)
    num_v = video.shape[-4]
    idx = fast_index if isinstance(fast_index, torch.Tensor) else torch.tensor(fast_index)
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or idx.dim() not in (1, 2) or \
            idx.shape[-1] == 0:
        raise ValueError(f"pack_pathways: fast_index: expected a non-empty integer [T] or [N, T] tensor, got "
                         f"{idx.dtype} of shape {tuple(idx.shape)}")
    if idx.dim() == 2 and (video.dim() != 5 or idx.shape[0] != video.shape[0]):
        raise ValueError(f"pack_pathways: fast_index: a [N, T] index needs a [N, V, H, W, 3] video with the same N, "
                         f"got index {tuple(idx.shape)} and video {tuple(video.shape)}")
    idx = idx.to(device=video.device, dtype=torch.long)
    if not is_int(alpha) or alpha < 1 or idx.shape[-1] // alpha < 1:
        raise ValueError(f"pack_pathways: alpha: expected an int in [1, T={idx.shape[-1]}], got {alpha!r}")
    for name, value in (("size", size), ("crop", crop)):
        if value is not None and (not is_int(value) or value < 1):
            raise ValueError(f"pack_pathways: {name}: expected None or a positive int, got {value!r}")
    if not is_int(spatial_idx) or spatial_idx not in (0, 1, 2):
        raise ValueError(f"pack_pathways: spatial_idx: expected 0, 1 or 2, got {spatial_idx!r}")
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"pack_pathways: dtype: expected one of {OUTPUT_DTYPES}, got {dtype}")
    if out is not None and (not isinstance(out, (tuple, list)) or len(out) != 2 or
                            not all(isinstance(o, torch.Tensor) for o in out)):
        raise ValueError("pack_pathways: out: expected a (slow, fast) pair of tensors")
    if not torch.compiler.is_compiling():
        # One sync for both checks: the kernels read frames at these indices unchecked, and float frames in
        # 0-255 read as 0-1 would be normalized to values near 1000.
        stats = [idx.min(), idx.max()]
        if video.dtype != torch.uint8:
            stats += list(torch.aminmax(video))
        stats = torch.stack([t.double() for t in stats]).tolist()
        lo, hi = int(stats[0]), int(stats[1])
        if lo < 0 or hi >= num_v:
            raise ValueError(f"pack_pathways: fast_index: values must lie in [0, {num_v}) (the video's frames), "
                             f"got min {lo}, max {hi}")
        if len(stats) == 4:
            message = value_range_error(stats[2], stats[3], vrange, "video")
            if message:
                raise ValueError(message)
    size, crop = (None if v is None else int(v) for v in (size, crop))
    return idx, int(alpha), size, crop, int(spatial_idx), vrange


def _check_out(out, slow_shape, fast_shape, dtype, device) -> None:
    for name, t, shape in (("out[0] (slow)", out[0], slow_shape), ("out[1] (fast)", out[1], fast_shape)):
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
            raise ValueError(f"pack_pathways: {name}: expected {dtype} {tuple(shape)} on {device}, got {t.dtype} "
                             f"{tuple(t.shape)} on {t.device}")


# A trace-time constant for torch.compile: the choice depends only on these arguments (and the environment).
@torch.compiler.assume_constant_result
def _choose_backend(backend: str, device: torch.device) -> str:
    return choose_backend("pack_pathways", backend, device,
                          priority=("cuda", "triton", "reference") if device.type == "cuda" else None)


def pack_pathways(
    video: torch.Tensor,
    fast_index: Union[torch.Tensor, Sequence[int]],
    alpha: int,
    *,
    size: Optional[int] = None,
    crop: Optional[int] = None,
    spatial_idx: int = 1,
    mean: Floats3 = DEFAULT_MEAN,
    std: Floats3 = DEFAULT_STD,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    out: Optional[Sequence[torch.Tensor]] = None,
    value_range: Range = None,
    slow_rule: str = "linspace",
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample, resize, crop, normalize and lay out both pathways of a clip in one pass over the pixels.

    video: [V, H, W, 3] or [N, V, H, W, 3], uint8 (divided by 255) or float (float32, float16, bfloat16).
    value_range: (lo, hi), the float pixel values that map to 0 and 1 before mean/std normalization:
    None = (0, 1) for float video (pass (0, 255) for float frames holding 0-255 values); uint8 is always
    0-255. A float video with values more than half the range outside it is refused (a ValueError naming
    video): 0-255 frames read as 0-1 would otherwise be normalized to values near 1000. The check reads the
    float video once; it and the fast_index bounds check share one device sync per call (skipped while
    torch.compile traces).
    fast_index: [T] (shared) or [N, T] frame indices, e.g. temporal_indices(...).
    Returns (slow [N, 3, T // alpha, S, S], fast [N, 3, T, S, S]) (no N for a 4-d video) in `dtype`,
    S = crop (or the resized frame when crop is None); slow frames = fast frames at
    linspace(0, T - 1, T // alpha).long() (slow_rule="linspace", PySlowFast) or 0, alpha, 2 * alpha, ...
    (slow_rule="stride", MMAction2's nearest resampling inside its backbone); every backend gathers the slow
    frames through one index, so the rule costs nothing. channels_last gives channels_last_3d memory. out: a
    preallocated (slow, fast) pair of any strides, written in place and returned.
    """
    idx, alpha, size, crop, spatial_idx, vrange = _check_inputs(video, fast_index, alpha, size, crop, spatial_idx,
                                                                dtype, out, value_range)
    _check_slow_rule(slow_rule)
    mean3, std3 = _floats3(mean, "mean"), _floats3(std, "std")
    if any(s == 0 for s in std3):
        raise ValueError(f"pack_pathways: std: expected non-zero values, got {std3}")
    (rh, rw), box = clip_geometry(video.shape[-3], video.shape[-2], size, crop, spatial_idx)
    t = idx.shape[-1]
    ts = t // alpha
    lead = (video.shape[0],) if video.dim() == 5 else ()
    if out is not None:
        _check_out(out, (*lead, 3, ts, box[2], box[3]), (*lead, 3, t, box[2], box[3]), dtype, video.device)

    chosen = _choose_backend(backend, video.device)
    if chosen == "reference":
        return _pack_ref(video, idx, alpha, size=size, crop=crop, spatial_idx=spatial_idx, mean=mean3, std=std3,
                         dtype=dtype, channels_last=channels_last, out=out, value_range=vrange, slow_rule=slow_rule)
    if video.dtype != torch.uint8 and vrange != (0.0, 1.0):
        # The kernels compute (x - mean) / std on float frames: ((x - lo) / (hi - lo) - m) / s folded in.
        lo, width = vrange[0], vrange[1] - vrange[0]
        mean3 = tuple(lo + m * width for m in mean3)
        std3 = tuple(sd * width for sd in std3)
    v5 = video if video.dim() == 5 else video.unsqueeze(0)
    fast_idx = _per_sample_index(idx, v5.shape[0]).contiguous()
    # The kernels take the slow frames as an index of their own: either rule is a gather of fast frames.
    slow_idx = fast_idx[:, slow_frame_indices(t, alpha, idx.device, rule=slow_rule)].contiguous()
    args = (v5, fast_idx, slow_idx, [rh, rw], list(box), list(mean3), list(std3))
    ops = torch.ops.slowfast_kernels
    if out is not None:
        slow_out, fast_out = (o if video.dim() == 5 else o.unsqueeze(0) for o in out)
        into = ops.pack_pathways_triton_into if chosen == "triton" else ops.pack_pathways_into
        into(*args, slow_out, fast_out)
        return out[0], out[1]
    fn = ops.pack_pathways_triton if chosen == "triton" else ops.pack_pathways
    slow, fast = fn(*args, dtype, channels_last)
    if video.dim() == 4:
        slow, fast = slow[0], fast[0]
    return slow, fast


def _empty_outputs(video, fast_index, slow_index, crop_box, dtype, channels_last):
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    n, (ch, cw) = video.shape[0], crop_box[2:]
    make = lambda t: torch.empty((n, 3, t, ch, cw), dtype=dtype, device=video.device, memory_format=fmt)  # noqa: E731
    return make(slow_index.shape[1]), make(fast_index.shape[1])


@torch.library.custom_op("slowfast_kernels::pack_pathways_triton_into", mutates_args=("slow", "fast"))
def _pack_pathways_triton_into(video: torch.Tensor, fast_index: torch.Tensor, slow_index: torch.Tensor,
                               resized: List[int], crop_box: List[int], mean: List[float], std: List[float],
                               slow: torch.Tensor, fast: torch.Tensor) -> None:
    from ..triton.pack_pathways import _pack_pathways_triton  # triton is imported only when used

    _pack_pathways_triton(video, fast_index, slow_index, resized, crop_box, mean, std, slow, fast)


@_pack_pathways_triton_into.register_fake
def _pack_pathways_triton_into_fake(video, fast_index, slow_index, resized, crop_box, mean, std, slow, fast):
    return None


@torch.library.custom_op("slowfast_kernels::pack_pathways_triton", mutates_args=())
def _pack_pathways_triton_op(video: torch.Tensor, fast_index: torch.Tensor, slow_index: torch.Tensor,
                             resized: List[int], crop_box: List[int], mean: List[float], std: List[float],
                             dtype: torch.dtype, channels_last: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    from ..triton.pack_pathways import _pack_pathways_triton

    slow, fast = _empty_outputs(video, fast_index, slow_index, crop_box, dtype, channels_last)
    _pack_pathways_triton(video, fast_index, slow_index, resized, crop_box, mean, std, slow, fast)
    return slow, fast


@_pack_pathways_triton_op.register_fake
def _pack_pathways_triton_fake(video, fast_index, slow_index, resized, crop_box, mean, std, dtype, channels_last):
    return _empty_outputs(video, fast_index, slow_index, crop_box, dtype, channels_last)


if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("slowfast_kernels::pack_pathways")
    def _pack_pathways_fake(video, fast_index, slow_index, resized, crop_box, mean, std, dtype, channels_last):
        return _empty_outputs(video, fast_index, slow_index, crop_box, dtype, channels_last)

    @torch.library.register_fake("slowfast_kernels::pack_pathways_into")
    def _pack_pathways_into_fake(video, fast_index, slow_index, resized, crop_box, mean, std, slow, fast):
        return None
