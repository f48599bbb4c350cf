"""AVA frame-mAP, as the official evaluator computes it (ActivityNet's get_ava_performance.py, PySlowFast's
ava_eval_helper: PASCAL VOC AP per class at IoU 0.5, over the label map's classes).

- CSV rows: video_id, timestamp, x1, y1, x2, y2, action_id[, score] (coordinates normalized to [0, 1]); an
  image is one (video_id, timestamp) keyframe; rows whose action is not in the label map are dropped; rows
  of excluded keyframes (the exclusions CSV: video_id, timestamp) are dropped from both files.
- Predictions keep the `capacity` highest-scoring rows per keyframe (50, the official setting; 0: all).
- Matching, per keyframe and class: detections by decreasing score, each to the ground-truth box it
  overlaps most; a true positive when that IoU >= 0.5 and the box is not yet taken, else a false positive.
- AP per class: precision made monotone from the right, summed over the recall steps (VOC all-point);
  a class without ground truth has no AP (NaN) and stays out of the mean; with ground truth but no
  detection it scores 0.
"""
from __future__ import annotations

import csv
import heapq
import math
import re
from collections import defaultdict
from typing import Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

import numpy as np

IOU_THRESHOLD = 0.5
OFFICIAL_CAPACITY = 50

Key = Tuple[str, int]


class Entry(NamedTuple):
    box: Tuple[float, float, float, float]  # x1, y1, x2, y2
    label: int
    score: float


class AVAResult(NamedTuple):
    mean_ap: float
    ap_per_class: Dict[int, float]   # every label map class; NaN where it has no ground truth
    class_names: Dict[int, str]


def image_key(video_id: str, timestamp: str) -> Key:
    return video_id, int(round(float(timestamp)))


def read_labelmap(path: str) -> Dict[int, str]:
    """{action id: name} from a label map .pbtxt (``item { name: "..." id: N }``; ``label_id`` accepted)."""
    names: Dict[int, str] = {}
    name: Optional[str] = None
    with open(path) as f:
        for line in f:
            m = re.match(r'\s*name:\s*"(.*)"', line)
            if m:
                name = m.group(1)
                continue
            m = re.match(r"\s*(?:label_)?id:\s*(\d+)", line)
            if m:
                names[int(m.group(1))] = name if name is not None else m.group(1)
                name = None
    if not names:
        raise ValueError(f"--labels {path}: no `id:` entries (expected a label map .pbtxt)")
    return names


def read_exclusions(path: Optional[str]) -> Set[Key]:
    """The excluded (video_id, timestamp) keyframes."""
    if not path:
        return set()
    out: Set[Key] = set()
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{n}: expected video_id, timestamp; got {row}")
            out.add(image_key(row[0], row[1]))
    return out


def read_csv(path: str, classes: Iterable[int], capacity: int = 0, with_scores: bool = False,
             excluded: Set[Key] = frozenset()) -> Dict[Key, List[Entry]]:
    """{keyframe: entries} of an AVA CSV (ground truth: score 1; with_scores: column 8 is the score),
    rows outside `classes` or of excluded keyframes dropped; capacity > 0 keeps the best rows per keyframe."""
    classes = set(classes)
    kept: Dict[Key, List[Tuple[float, int, Entry]]] = defaultdict(list)
    order = 0
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            if len(row) not in (7, 8):
                raise ValueError(f"{path}:{n}: expected 7 or 8 columns (video_id, timestamp, x1, y1, x2, y2, "
                                 f"action_id[, score or person_id]), got {len(row)}")
            try:
                key = image_key(row[0], row[1])
                box = tuple(float(v) for v in row[2:6])
                label = int(row[6])
                score = float(row[7]) if with_scores and len(row) == 8 else 1.0
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None
            if label not in classes or key in excluded:
                continue
            entry = Entry(box, label, score)
            heap = kept[key]
            order += 1
            if capacity <= 0 or len(heap) < capacity:
                heapq.heappush(heap, (score, -order, entry))
            elif score > heap[0][0]:
                heapq.heapreplace(heap, (score, -order, entry))
    return {k: [e for _, _, e in sorted(v, key=lambda t: (-t[0], -t[1]))] for k, v in kept.items()}


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[A, B] IoU of x1, y1, x2, y2 boxes (areas without the +1 of pixel boxes, as the official np_box_ops)."""
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def match(detections: List[Entry], ground_truth: List[Entry], threshold: float = IOU_THRESHOLD):
    """(scores, true-positive flags) of one keyframe and class (the official per-image greedy matching)."""
    dets = sorted(detections, key=lambda e: -e.score)
    scores = np.array([d.score for d in dets], dtype=np.float64)
    tp = np.zeros(len(dets), dtype=bool)
    if not dets or not ground_truth:
        return scores, tp
    overlaps = iou(np.array([d.box for d in dets]), np.array([g.box for g in ground_truth]))
    taken = np.zeros(len(ground_truth), dtype=bool)
    best = overlaps.argmax(axis=1)
    for i, j in enumerate(best):
        if overlaps[i, j] >= threshold and not taken[j]:
            tp[i] = taken[j] = True
    return scores, tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """VOC all-point AP of detections (scores, true-positive flags) against num_gt boxes; NaN when num_gt = 0."""
    if num_gt == 0:
        return math.nan
    order = np.argsort(scores, kind="stable")[::-1]
    tp = tp[order].astype(np.float64)
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(1.0 - tp)
    precision = tp_sum / np.maximum(tp_sum + fp_sum, 1e-12)
    recall = tp_sum / num_gt
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    steps = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def frame_map(ground_truth: str, predictions: str, labelmap: str, exclusions: Optional[str] = None,
              capacity: int = OFFICIAL_CAPACITY, threshold: float = IOU_THRESHOLD) -> AVAResult:
    """Frame-mAP of a predictions CSV against a ground-truth CSV over the label map's classes."""
    names = read_labelmap(labelmap)
    excluded = read_exclusions(exclusions)
    gt = read_csv(ground_truth, names, 0, False, excluded)
    pred = read_csv(predictions, names, capacity, True, excluded)
    scores: Dict[int, List[np.ndarray]] = defaultdict(list)
    flags: Dict[int, List[np.ndarray]] = defaultdict(list)
    num_gt: Dict[int, int] = defaultdict(int)
    for key, entries in gt.items():
        for e in entries:
            num_gt[e.label] += 1
    for key in set(gt) | set(pred):
        for label in names:
            d = [e for e in pred.get(key, ()) if e.label == label]
            g = [e for e in gt.get(key, ()) if e.label == label]
            if d:
                s, t = match(d, g, threshold)
                scores[label].append(s)
                flags[label].append(t)
    ap = {}
    for label in names:
        s = np.concatenate(scores[label]) if scores[label] else np.zeros(0)
        t = np.concatenate(flags[label]) if flags[label] else np.zeros(0, dtype=bool)
        ap[label] = average_precision(s, t, num_gt[label])
    values = [v for v in ap.values() if not math.isnan(v)]
    return AVAResult(float(np.mean(values)) if values else math.nan, ap, names)
