"""export: the model (architecture + checkpoint) as an ONNX or PT2 file, checked against the reference."""
from __future__ import annotations

import argparse
import os

from . import options
from .errors import EXIT_OK, UsageError

FORMATS = ("onnx", "pt2")


def add_parser(sub, epilog: str) -> None:
    """Register `export` on the command line's subparsers."""
    arch_choices = ["auto"] + sorted(options.SAMPLING_RATE)
    p = sub.add_parser(
        "export", epilog=epilog,
        help="write the model as ONNX (BN folded; for onnxruntime, TensorRT, OpenVINO) or PT2 (torch.export of "
             "the fused model), checked against the reference right after",
        description="Export the model. onnx: the reference with BatchNorm folded into the convs (opset 18, "
                    "float32), run in onnxruntime against the float64 reference; pt2: torch.export of the fused "
                    "model (load it with `import slowfast_kernels; torch.export.load(FILE).module()`), loaded "
                    "back and checked. The check's figures are printed; a failed check is exit 1.")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx or pt2")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--arch", default=None, choices=arch_choices, metavar="ARCH",
                   help="network architecture, one of: " + ", ".join(arch_choices) + ". Default: auto with "
                        "--checkpoint, else slowfast_r50_8x8")
    p.add_argument("--checkpoint", default=None, metavar="PATH", help="weights to load (default: random weights)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a trusted checkpoint holding Python objects (torch.load weights_only=False)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="precision of the exported program (onnx: float32 only) (default: float32)")
    p.add_argument("--batch", default="dynamic", metavar="dynamic|N",
                   help="the batch axis: dynamic (default) or a fixed N")
    p.add_argument("--size", type=options.positive_int, default=224, metavar="PIXELS",
                   help="input height and width (fixed in the exported program) (default: 224)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the exported file against the reference")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.set_defaults(func=run)


def _batch(text: str):
    if text == "dynamic":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"--batch {text}: expected 'dynamic' or a whole number >= 1")
    return value


def run(args: argparse.Namespace, debug: bool) -> int:
    from slowfast_kernels import export as E

    batch = _batch(args.batch)
    if args.size < 32:
        raise UsageError(f"--size {args.size}: expected at least 32 (the network downsamples by 32)")
    if args.format == "onnx" and args.dtype != "float32":
        raise UsageError("--dtype bfloat16: ONNX export is float32 only (onnxruntime cannot run a bfloat16 Conv "
                         "to check it); TensorRT and OpenVINO lower the precision themselves")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out) or not os.path.isdir(out_dir):
        raise UsageError(f"--out {args.out}: expected a file path in an existing directory")
    if args.format == "onnx":
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as exc:
            raise UsageError(f"--format onnx needs onnxscript (to export) and onnxruntime (to check): "
                             f"pip install onnxscript onnxruntime ({exc.name} is missing)") from None
    source = options.ModelSource.resolve(args, debug)
    model = source.build()
    weights = args.checkpoint or "random weights"
    print(f"{source.arch} ({weights}) -> {args.format} {args.out}: batch {batch}, {args.size}x{args.size}, {args.dtype}")
    check = E.export(model, args.out, args.format, dtype=options.DTYPES[args.dtype], batch=batch, size=args.size,
                     check=args.check)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB)")
    print(f"check: {check.summary()}" if check is not None else "check: skipped (--no-check)")
    return EXIT_OK
