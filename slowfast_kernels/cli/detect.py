"""The detect and evaluate-ava commands: AVA boxes in, AVA action scores out; frame-mAP of a predictions CSV.

detect: for every (video_id, timestamp) keyframe of --boxes (AVA's CSV: video_id, timestamp, x1, y1, x2, y2
normalized to [0, 1], optional score; rows under --box-threshold dropped, PySlowFast's 0.8), the clip of
T x tau frames centred on frame int(timestamp * fps) (PySlowFast's AVA sampling: 32 fast frames 2 apart,
indices clamped into the video), frames resized to short side --size (256, no crop) with the boxes scaled
alike, normalized by PySlowFast's AVA mean / std (0.45, 0.225), one detector forward per keyframe. Output:
one row per box per action, video_id, timestamp, x1, y1, x2, y2, action_id, score (AVA's submission form),
the --top best actions per box with score >= --threshold. Videos are found by file stem = video_id.
Timestamps are seconds from the start of the file. Resumable: OUT.csv.done logs the finished keyframes; a
rerun skips them (and drops the rows of a keyframe a stopped run left unfinished). No torchrun sharding.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch

from .errors import EXIT_OK, UsageError

FAST_FRAMES, SAMPLING_RATE = 32, 2  # PySlowFast's AVA SlowFast 8x8: DATA.NUM_FRAMES, DATA.SAMPLING_RATE
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def read_boxes(path: str, box_threshold: float) -> "OrderedDict[Tuple[str, str], List[Tuple[float, ...]]]":
    """{(video_id, timestamp): [(x1, y1, x2, y2), ...]} in file order; rows with a score under box_threshold
    dropped (rows without a score kept)."""
    out: "OrderedDict[Tuple[str, str], List[Tuple[float, ...]]]" = OrderedDict()
    try:
        f = open(path, newline="")
    except OSError as exc:
        raise UsageError(f"--boxes {path}: {exc.strerror or exc}") from None
    with f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) < 6:
                raise UsageError(f"--boxes {path}:{n}: expected video_id, timestamp, x1, y1, x2, y2[, score], "
                                 f"got {len(row)} columns")
            try:
                box = tuple(float(v) for v in row[2:6])
                float(row[1])
                score = float(row[6]) if len(row) > 6 and row[6] != "" else None
            except ValueError as exc:
                raise UsageError(f"--boxes {path}:{n}: {exc}") from None
            if not all(0.0 <= v <= 1.0 for v in box) or box[2] < box[0] or box[3] < box[1]:
                raise UsageError(f"--boxes {path}:{n}: expected 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1 "
                                 f"(normalized), got {box}")
            if score is not None and score < box_threshold:
                continue
            out.setdefault((row[0], row[1]), []).append(box)
    return out


def clip_indices(center: int, num_frames: int, rate: int, total: int) -> torch.Tensor:
    """PySlowFast's AVA sequence: range(center - T*tau/2, center + T*tau/2, tau), clamped to the video."""
    half = num_frames * rate // 2
    return torch.arange(center - half, center + half, rate).clamp(0, total - 1)


def decode_frames(path: str, first: int, last: int) -> torch.Tensor:
    """uint8 [last - first + 1, H, W, 3]: frames first..last (past the end: the last frame repeated)."""
    from slowfast_kernels import io

    def window(num_video_frames: int, fps) -> torch.Tensor:
        return torch.arange(first, last + 1).clamp(max=num_video_frames - 1)

    clip = io.read_video(path, frame_index=window)
    return clip.frames[clip.index]


def preprocess(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [1, 3, T, h, w]: short side `size`, (x / 255 - mean) / std."""
    x = frames.permute(3, 0, 1, 2).float().div_(255.0)  # [3, T, H, W]
    h, w = x.shape[2:]
    rh, rw = (size, max(1, round(w * size / h))) if h <= w else (max(1, round(h * size / w)), size)
    x = torch.nn.functional.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)
    mean = torch.tensor(MEAN).view(3, 1, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def _videos_by_id(paths: List[str]) -> Dict[str, str]:
    from .corpus import expand_inputs

    found = {}
    for p in expand_inputs(paths):
        found.setdefault(os.path.splitext(os.path.basename(p))[0], p)
    return found


def _model(args: argparse.Namespace, device: torch.device):
    import slowfast_kernels as sk
    from slowfast_kernels.detection_checkpoints import load_detector
    from slowfast_reference.detection import build_detector

    if args.checkpoint:
        model = load_detector(args.checkpoint, weights_only=not args.trust_checkpoint)
    else:
        model = build_detector(args.arch).eval()
    if args.backend == "reference":
        return model.to(device), model
    return sk.fuse_detector(model, dtype=args.dtype_value, device=device, backend=args.backend), model


def run(args: argparse.Namespace, debug: bool) -> int:
    from . import options

    device = options.check_device(args.device)
    options.check_backend(args.backend, device)
    options.check_checkpoint_path(args.checkpoint)
    if args.top < 0:
        raise UsageError(f"--top {args.top}: must be >= 0 (0: every action)")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold}: must be in [0, 1]")
    keyframes = read_boxes(args.boxes, args.box_threshold)
    videos = _videos_by_id(args.videos)
    missing = sorted({vid for vid, _ in keyframes} - set(videos))
    if missing:
        raise UsageError(f"--boxes {args.boxes}: no video for video_id {missing[0]!r} among the VIDEO arguments "
                         f"({len(missing)} missing)")
    done = _resume(args.output)
    todo = [(key, boxes) for key, boxes in keyframes.items() if key not in done]
    if not todo:
        print(f"detect: all {len(keyframes)} keyframes already done in {args.output}", file=sys.stderr)
        return EXIT_OK
    args.dtype_value = options.DTYPES[args.dtype]
    model, reference = _model(args, device)
    alpha = reference.config.alpha
    # MMAction2's head has 81 outputs, output 0 the background: action id = output index; else index + 1.
    first_action = 1 if reference.num_classes == 81 else 0
    from slowfast_kernels import io
    from slowfast_reference.pack import pack_pathways

    rows = 0
    with open(args.output, "a", newline="") as out, open(args.output + DONE_SUFFIX, "a", newline="") as log:
        writer, logger = csv.writer(out), csv.writer(log)
        probed: Dict[str, io.VideoInfo] = {}
        for (vid, stamp), boxes in todo:
            if vid not in probed:
                probed[vid] = io.probe_video(videos[vid])
            info = probed[vid]
            fps = info.fps or 30.0
            index = clip_indices(int(float(stamp) * fps), FAST_FRAMES, SAMPLING_RATE, info.num_frames)
            first = int(index.min())
            frames = decode_frames(videos[vid], first, int(index.max()))[index - first]
            clip = preprocess(frames, args.size)
            h, w = clip.shape[3:]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            rois = torch.cat([torch.zeros(len(boxes), 1), torch.tensor(boxes, dtype=torch.float32) * scale], dim=1)
            x = [t.to(device) for t in pack_pathways(clip, alpha)]
            with torch.no_grad():
                scores = model(x, rois.to(device)).float().cpu()[:, first_action:]
            for box, s in zip(boxes, scores):
                order = torch.argsort(s, descending=True)
                if args.top:
                    order = order[:args.top]
                for i in order.tolist():
                    if float(s[i]) < args.threshold:
                        break
                    writer.writerow([vid, stamp, *(f"{v:.3f}" for v in box), i + 1, f"{float(s[i]):.6f}"])
                    rows += 1
            out.flush()  # the rows first, then the keyframe's line in the log: a log line means its rows are there
            logger.writerow([vid, stamp])
            log.flush()
    print(f"detect: {len(todo)} keyframes ({len(keyframes) - len(todo)} already done), "
          f"{sum(len(b) for _, b in todo)} boxes, {rows} rows -> {args.output}", file=sys.stderr)
    return EXIT_OK


DONE_SUFFIX = ".done"  # OUT.csv.done: the keyframes whose rows are complete in OUT.csv, one per line


def _resume(output: str) -> set:
    """The keyframes already done in `output` (by its .done log), with the rows of a keyframe cut off by a
    stopped run dropped from it; no log: a fresh output."""
    log_path = output + DONE_SUFFIX
    if not os.path.exists(log_path):
        open(output, "w").close()
        open(log_path, "w").close()
        return set()
    with open(log_path, newline="") as f:
        done = {(r[0], r[1]) for r in csv.reader(f) if len(r) == 2}
    if os.path.exists(output):
        with open(output, newline="") as f:
            text = f.read()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # a row cut off mid-write
        kept = [ln for ln in lines if tuple(next(csv.reader([ln]))[:2]) in done]
        if len(kept) != len(lines) or len(lines) != len(text.splitlines(keepends=True)):
            with open(output, "w", newline="") as f:
                f.writelines(kept)
    return done


def evaluate(args: argparse.Namespace, debug: bool) -> int:
    from slowfast_kernels.ava_eval import frame_map

    for flag, path in (("--ground-truth", args.ground_truth), ("--labels", args.labels),
                       ("--exclusions", args.exclusions), ("PRED", args.predictions)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such file")
    try:
        result = frame_map(args.ground_truth, args.predictions, args.labels, args.exclusions, args.capacity)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for label, ap in sorted(result.ap_per_class.items()):
        if not math.isnan(ap):
            print(f"{label:4d} {result.class_names[label]}: AP {ap:.4f}")
    print(f"frame-mAP@0.5: {result.mean_ap:.4f}")
    return EXIT_OK


def add_parsers(sub, epilog: str, default_device: str) -> None:
    """Register detect and evaluate-ava (called by cli/__init__.build_parser)."""
    from slowfast_reference.models import CONFIGS

    p = sub.add_parser("detect", help="AVA action scores of person boxes (AVA CSV in and out)", epilog=epilog,
                       description=__doc__.split("\n\n")[0])
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (file stem = video_id), directories "
                                                              "or @LIST files")
    p.add_argument("--boxes", required=True, metavar="CSV", help="person boxes: video_id, timestamp, x1, y1, x2, "
                                                                  "y2 (normalized)[, score]")
    p.add_argument("--output", "-o", required=True, metavar="CSV",
                   help="AVA submission CSV; with its log CSV.done a stopped run resumes (done keyframes skipped)")
    p.add_argument("--arch", default="slowfast_r50_8x8",
                   choices=sorted(a for a, c in CONFIGS.items() if not c.slow_only),
                   help="architecture without --checkpoint (default: slowfast_r50_8x8)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="detector weights: PyTorchVideo / PySlowFast / MMAction2 AVA checkpoint (arch read from it)")
    p.add_argument("--trust-checkpoint", action="store_true", help="torch.load(weights_only=False)")
    p.add_argument("--device", default=default_device, help=f"cpu, cuda or cuda:N (default: {default_device})")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute precision of the fused model (default: float32)")
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "cuda", "cpu", "reference"],
                   help="reference: the eager reference model; else the fused model's kernel backend")
    p.add_argument("--size", type=int, default=256, help="short side in pixels (default: 256, no crop)")
    p.add_argument("--box-threshold", type=float, default=0.8,
                   help="drop input boxes scored under this (default: 0.8, PySlowFast's)")
    p.add_argument("--top", type=int, default=0, help="actions per box, best first (default: 0, all)")
    p.add_argument("--threshold", type=float, default=0.0, help="drop actions scored under this (default: 0)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.set_defaults(func=run)

    p = sub.add_parser("evaluate-ava", help="frame-mAP@0.5 of an AVA predictions CSV (the official protocol)",
                       epilog=epilog)
    p.add_argument("predictions", metavar="PRED", help="predictions CSV (video_id, timestamp, box, action, score)")
    p.add_argument("--ground-truth", required=True, metavar="GT", help="ground-truth CSV")
    p.add_argument("--labels", required=True, metavar="LABELMAP", help="label map .pbtxt: the evaluated classes")
    p.add_argument("--exclusions", default=None, metavar="EXCL", help="excluded timestamps CSV")
    p.add_argument("--capacity", type=int, default=50, help="predictions kept per keyframe (default: 50, official)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.set_defaults(func=evaluate)
