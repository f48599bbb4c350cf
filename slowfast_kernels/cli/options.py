"""Validation of the options, before any model is built: each problem is one UsageError naming the option."""
from __future__ import annotations

import argparse
import math
import os
from typing import Any, Dict, Optional, Sequence

import torch

from .errors import UsageError

DEFAULT_ARCH = "slowfast_r50_8x8"
# PySlowFast's test-time SAMPLING_RATE per architecture (frames between consecutive fast frames).
SAMPLING_RATE = {"slowfast_r50_4x16": 2, "slowfast_r50_8x8": 2, "slowfast_r101_8x8": 2, "slowfast_r101_16x8": 2,
                 "slow_r50_8x8": 8}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BACKENDS = ("auto", "triton", "cuda", "cpu", "reference")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (argparse reports 'argument --size: ...' on failure)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seconds(text: str, zero_ok: bool) -> float:
    """A finite number of seconds > 0 (>= 0 with zero_ok), or argparse's error naming what was expected."""
    expected = "a number of seconds >= 0" if zero_ok else "a positive number of seconds"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    return _seconds(text, zero_ok=False)


def seconds_or_zero(text: str) -> float:
    """argparse type: a finite number of seconds >= 0 (0: no limit)."""
    return _seconds(text, zero_ok=True)


def check_device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text}: not a device (expected cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"--device {text}: not supported (expected cpu, cuda or cuda:N)")
    if torch.version.cuda is None:
        raise UsageError(f"--device {text}: this PyTorch build ({torch.__version__}) has no CUDA support; "
                         "use --device cpu or install a CUDA build of torch")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {text}: no CUDA GPU is visible (driver missing or CUDA_VISIBLE_DEVICES empty); "
                         "use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_backend(backend: str, device: torch.device) -> None:
    if backend == "auto":
        return
    from slowfast_kernels import backends

    reason = backends.backend_unavailable_reason(backend, device)
    if reason:
        raise UsageError(f"--backend {backend}: cannot run on {device}: {reason}")


def check_geometry(args: argparse.Namespace, first_video: Optional[str] = None) -> None:
    """--crop fits in the frame after the short-side resize to --size; --train-crop is a multiple of 32."""
    train_crop = getattr(args, "train_crop", None)
    if train_crop is not None and train_crop % 32:
        raise UsageError(f"--train-crop {train_crop}: must be a multiple of 32 (the network's stride)")
    if args.crop <= args.size:
        return
    frame = f"short side {args.size}"
    if first_video is not None:
        try:
            from slowfast_kernels.io import probe_video

            info = probe_video(first_video)
            h, w = info.height, info.width
            if h and w:
                rh, rw = (args.size, w * args.size // h) if h <= w else (h * args.size // w, args.size)
                frame = f"{rh}x{rw}"
        except Exception:  # noqa: BLE001 - the message only loses the frame size
            pass
    raise UsageError(f"--crop {args.crop}: larger than the {frame} frame after resizing (--size {args.size})")


def check_top(top: int, num_classes: int) -> None:
    if not 1 <= top <= num_classes:
        raise UsageError(f"--top {top}: must be between 1 and {num_classes} (the model's number of classes)")


def check_checkpoint_path(path: Optional[str]) -> None:
    if path is None:
        return
    if os.path.isdir(path):
        raise UsageError(f"--checkpoint {path}: is a directory, expected a checkpoint file")
    if not os.path.exists(path):
        raise UsageError(f"--checkpoint {path}: no such file")


class ModelSource:
    """The architecture to build and the weights to load: --arch and --checkpoint, reconciled.

    The checkpoint file is read once, here (before the model exists), and its architecture read from its
    keys and shapes: --arch auto (the default with a checkpoint) takes it; an explicit --arch that differs
    is a UsageError saying which architecture the checkpoint holds.
    """

    def __init__(self, arch: str, num_classes: int, state: Optional[Dict[str, Any]] = None,
                 fmt: Optional[str] = None, detected: bool = False) -> None:
        self.arch, self.num_classes, self.state, self.format, self.detected = arch, num_classes, state, fmt, detected

    @classmethod
    def resolve(cls, args: argparse.Namespace, debug: bool, default_classes: int = 400) -> "ModelSource":
        from slowfast_kernels.checkpoints import CheckpointError, detect_arch, read_state_dict

        arch = args.arch
        if not args.checkpoint:
            return cls(DEFAULT_ARCH if arch in (None, "auto") else arch, default_classes)
        check_checkpoint_path(args.checkpoint)
        try:
            state, fmt, _ = read_state_dict(args.checkpoint, weights_only=not args.trust_checkpoint)
        except CheckpointError as exc:
            raise CheckpointError(str(exc).replace("pass weights_only=False", "pass --trust-checkpoint")) from exc
        try:
            info = detect_arch(state, fmt, strict=not getattr(args, "non_strict", False))
        except CheckpointError:
            if arch in (None, "auto"):
                raise
            # An explicit --arch: loading reports every missing and unexpected key (the first line without --debug).
            return cls(arch, _classes_or(state, fmt, default_classes), state, fmt)
        if arch not in (None, "auto") and arch != info.arch:
            lines = [f"--arch {arch}: the checkpoint {args.checkpoint} holds {info.arch} "
                     f"({info.format} layout, {info.num_classes} classes)",
                     f"  pass --arch {info.arch}, or leave --arch out to use the checkpoint's architecture"]
            if debug:
                lines.append(_load_report(arch, info.num_classes, state, fmt))
            raise UsageError("\n".join(lines))
        return cls(info.arch, info.num_classes, state, fmt, detected=arch in (None, "auto"))

    def build(self, head_act: Optional[str] = None, train_crop: int = 224, strict: bool = True):
        """The reference model in eval mode, the checkpoint's weights loaded (strict=False: what fits, with a
        warning naming the rest)."""
        import slowfast_reference as R
        from slowfast_kernels.checkpoints import load_checkpoint

        model = R.build_model(self.arch, num_classes=self.num_classes, head_act=head_act, train_crop=train_crop)
        if self.state is not None:
            load_checkpoint(model, self.state, format=self.format, strict=strict)
        return model.eval()


def _classes_or(state: Dict[str, Any], fmt: str, default: int) -> int:
    from slowfast_kernels.checkpoints import _num_classes

    return _num_classes(state, fmt) or default


def _load_report(arch: str, num_classes: int, state: Dict[str, Any], fmt: str) -> str:
    """load_checkpoint's full list of missing, unexpected and mismatched keys for `arch` (for --debug)."""
    import slowfast_reference as R
    from slowfast_kernels.checkpoints import load_checkpoint

    with torch.device("meta"):
        model = R.build_model(arch, num_classes=num_classes)
    try:
        load_checkpoint(model, state, format=fmt)
    except (ValueError, RuntimeError) as exc:
        return str(exc)
    return ""


def first_existing(paths: Sequence[str]) -> Optional[str]:
    return next((p for p in paths if os.path.isfile(p)), None)
