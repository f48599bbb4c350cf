"""The command line: python -m slowfast_kernels {demo, classify, bench, backends, detect, evaluate-ava} (see --help).

Errors are one line on stderr naming the option or file (``--crop 300: larger than ...``); exit status 2
for bad options (found before any model is built), 3 when a classify run could not decode some videos,
1 for anything else. --debug, or SLOWFAST_KERNELS_DEBUG=1, shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import List, Optional

import torch

from .. import _decode
from . import options, protocol as test_protocol
from .errors import DEBUG_ENV, EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, UsageError

PROG = "python -m slowfast_kernels"
DESCRIPTION = "SlowFast video networks: fused inference kernels, checkpoint loading, video classification."
EPILOG = (f"exit status: 0 ok, 1 error, 2 bad option, 3 some videos failed to decode. --debug or {DEBUG_ENV}=1 "
          "shows tracebacks.")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (the option and the problem) and exit status 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (--help lists the options)\n")


def _common(p: argparse.ArgumentParser, size: int, crop: int, default_device: str) -> None:
    arch_choices = ["auto"] + sorted(options.SAMPLING_RATE)
    p.add_argument("--arch", default=None, choices=arch_choices, metavar="ARCH",
                   help="network architecture, one of: " + ", ".join(arch_choices) + ". Default: auto with "
                        "--checkpoint (read from the checkpoint's keys and shapes), else slowfast_r50_8x8")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="weights: a PyTorchVideo / PySlowFast (.pyth, Caffe2 .pkl) / MMAction2 checkpoint "
                        "(default: random weights)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a trusted checkpoint that holds Python objects besides the weights "
                        "(torch.load weights_only=False: it can run code)")
    p.add_argument("--device", default=default_device,
                   help=f"cpu, cuda or cuda:N (default: {default_device})")
    p.add_argument("--dtype", default="bfloat16" if default_device == "cuda" else "float32",
                   choices=list(options.DTYPES),
                   help="compute precision of the fused model (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--backend", default="auto", choices=options.BACKENDS,
                   help="kernel backend (default auto: the fastest that runs here; see the backends command)")
    p.add_argument("--size", type=options.positive_int, default=size,
                   help=f"short-side resize in pixels before cropping (default: {size})")
    p.add_argument("--crop", type=options.positive_int, default=crop,
                   help=f"square crop in pixels, at most --size (default: {crop})")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)")


def build_parser() -> argparse.ArgumentParser:
    from .classify import run as classify
    from .commands import backends_, bench, demo
    from .launch import __doc__ as launch_doc, torchrun as launch_torchrun

    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--debug", action="store_true", help=f"show the full traceback of an error "
                                                             f"(also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND",
                                parser_class=_Parser)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"

    p = sub.add_parser("demo", help="encode a synthetic MP4, decode it, run the reference and the fused model: "
                                    "parity and clips/s", epilog=EPILOG)
    _common(p, 256, 224, default_device)
    p.add_argument("--runs", type=options.positive_int, default=3, help="timed runs per model (default: 3)")
    p.set_defaults(func=demo)

    p = sub.add_parser("classify", help="top-k labels of videos, one JSON line per video (files, directories, "
                                        "@lists; resumable; torchrun for many GPUs)", epilog=EPILOG,
                       description="Classify videos: one JSON line per video, "
                                   '{"video", "top": [[label, prob], ...], "views", "arch", "checkpoint", '
                                   '"seconds"} or {"video", "error"} for a video that cannot be decoded; '
                                   'with --features FILE.npz, "features": the key of its array in FILE. '
                                   "Under torchrun each rank takes its share of the videos.")
    p.add_argument("videos", nargs="+", metavar="PATH",
                   help="a video file, a directory (searched recursively for video files) or @LIST "
                        "(a text file, one path a line); - or a URL (rtsp://, udp://, tcp://, http://, ...): a "
                        "live stream, classified as a timeline (--window)")
    p.add_argument("--window", type=options.positive_seconds, default=None, metavar="SEC",
                   help="a timeline: one JSON line per window of SEC seconds sliding over the video, each frame "
                        "decoded once, memory bounded by the window (default for streams: the model's training "
                        "clip, num_frames x sampling rate / 30 fps: 2.13 s for R50 8x8)")
    p.add_argument("--stride", type=options.positive_seconds, default=None, metavar="SEC",
                   help="seconds between the starts of consecutive windows (default: --window)")
    p.add_argument("--stream-timeout", type=options.seconds_or_zero, default=_decode.DEFAULT_STREAM_TIMEOUT,
                   metavar="SEC",
                   help="a URL that gives no data for SEC seconds (opening, listening for its sender, or between "
                        f"reads) fails with an error line instead of waiting forever; 0: no limit (default: "
                        f"{_decode.DEFAULT_STREAM_TIMEOUT:g}; standard input is read until it closes)")
    p.add_argument("--output", "-o", default=None, metavar="FILE",
                   help="append the JSON lines to FILE; videos already in it are skipped, so a stopped run "
                        "resumes; a FILE made with other settings is refused (default, or -: stdout)")
    p.add_argument("--overwrite", action="store_true", help="start --output over: its records are removed")
    p.add_argument("--retry-failed", action="store_true",
                   help="classify again the videos with an error line in --output (the line is replaced)")
    p.add_argument("--views", type=int, default=None, choices=[1, 30],
                   help="1: one clip, centre crop (--clips 1 --crops 1, the default): clip 0 of 1, the video's "
                        "first 2.1 s (64 frames at 30 fps: PySlowFast's single-view test sampling); 30: 10 temporal "
                        "clips x 3 spatial crops (--clips 10 --crops 3, PySlowFast's test protocol)")
    p.add_argument("--top", type=int, default=5, help="labels per video, most probable first (default: 5)")
    p.add_argument("--batch-size", type=options.positive_int, default=None, metavar="N",
                   help="views per forward, across videos (default: 16 on CUDA, 4 on CPU)")
    p.add_argument("--workers", type=options.positive_int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="decoding threads running ahead of the model (default: min(4, CPUs))")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="class names, one a line (default: Kinetics-400's for 400-class checkpoints)")
    p.add_argument("--train-crop", type=options.positive_int, default=224, metavar="PIXELS",
                   help="the checkpoint's training crop: the head pools windows of train_crop / 32 "
                        "(224 for every released SlowFast checkpoint)")
    p.add_argument("--features", default=None, metavar="FILE.npz",
                   help="also write each video's features: FILE.npz (numpy.load opens it) gets one float32 array "
                        "[views, D] per video, keyed by its real path (the line's \"features\"), D the pooled "
                        "concat before the classifier (2304 for SlowFast R50), plus view_index [views, 2] "
                        "(temporal clip, spatial crop of each row); written as videos finish, resumed with "
                        "--output")
    p.add_argument("--features-only", action="store_true",
                   help="compute only the features (needs --features): no class scores, lines carry no \"top\"")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _common(p, 256, 256, default_device)
    test_protocol.add_arguments(p)
    p.set_defaults(func=classify)

    p = sub.add_parser("bench", help="end-to-end clips/s: fused vs the eager reference (and torch.compile)",
                       epilog=EPILOG)
    _common(p, 224, 224, default_device)
    p.add_argument("--batch", type=options.positive_int, default=32 if default_device == "cuda" else 1,
                   help="clips per forward")
    p.add_argument("--runs", type=options.positive_int, default=5, help="timed runs per model (default: 5)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the reference")
    p.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                   help="run the fused model without CUDA graphs")
    p.set_defaults(func=bench)

    p = sub.add_parser("torchrun", help="torchrun's options, then a command (classify ...): torchrun, with the "
                                        "command's exit status and no launcher traceback (3: videos failed)",
                       epilog=EPILOG, description=launch_doc.split("\n\n")[0])
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="[TORCHRUN OPTIONS] COMMAND ...",
                   help="torchrun's options (python -m torch.distributed.run --help), then the command and its "
                        "arguments, e.g. --nproc-per-node 2 classify videos/ -o out.jsonl")
    p.set_defaults(func=lambda args, debug: launch_torchrun(args.rest))  # main() hands it over before argparse

    p = sub.add_parser("backends", help="which kernel backends can run here, and why the others cannot",
                       epilog=EPILOG)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.set_defaults(func=backends_)

    from .export import add_parser as add_export
    add_export(sub, EPILOG)
    from ..gpu_report.command import add_parser as add_gpu_report
    add_gpu_report(sub, EPILOG)
    from .detect import add_parsers as add_detection_parsers  # AVA detection: detect, evaluate-ava
    add_detection_parsers(sub, EPILOG, default_device)
    return parser


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; returns its exit status (argparse's --help: 0, its errors: 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["torchrun"]:  # torchrun's options pass through untouched: argparse must not see them
        from .launch import torchrun

        return torchrun(argv[1:])
    try:
        return _main(argv)
    except BrokenPipeError:
        return quiet_broken_pipe()


def _main(argv: List[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or an argparse error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if getattr(args, "batch_size", 1) is None:
        args.batch_size = 16 if args.device.startswith("cuda") else 4
    try:
        return args.func(args, debug)
    except UsageError as exc:
        if debug:
            traceback.print_exc()
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds the same bad option
            _error(str(exc))
        return EXIT_USAGE
    except BrokenPipeError:
        raise
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the command line reports, --debug shows the traceback
        if debug:
            traceback.print_exc()
            return EXIT_ERROR
        lines = str(exc).strip().splitlines()
        first = lines[0] if lines else type(exc).__name__
        more = f" ({len(lines) - 1} more lines with --debug)" if len(lines) > 1 else ""
        _error(f"{first}{more}")
        return EXIT_ERROR


def quiet_broken_pipe() -> int:
    """The reader of stdout went away (``... | head -2``): no traceback, no 'Exception ignored' at exit, and
    the status of a process killed by SIGPIPE (128 + 13), as coreutils give."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush of stdout goes nowhere
    except (OSError, ValueError, AttributeError):  # stdout without a descriptor (a test's capture)
        pass
    return EXIT_BROKEN_PIPE
