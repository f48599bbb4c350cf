"""View ensembling and scoring predictions against ground truth.

ensemble: PySlowFast utils/meters.py TestMeter.update_stats (ENSEMBLE_METHOD "sum" | "max") and MMAction2
recognizers/base.py average_clip (average_clips="prob": the mean). mean_average_precision: PySlowFast
meters.get_map (classes without a positive dropped, sklearn's average_precision_score per class, their
mean), written out here without sklearn. Ground-truth files: a CSV of video,label[,label...], the
Kinetics-400 csv (label,youtube_id,time_start,time_end,split) and Charades' csv (id,...,actions,...).
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch

ENSEMBLES = ("mean", "max", "sum")


def accumulate(total: Optional[torch.Tensor], scores: torch.Tensor, method: str) -> torch.Tensor:
    """One view's scores [C] folded into the running ensemble (None before the first view): sum for mean
    and sum (in view order, as PySlowFast adds them), elementwise max for max."""
    if method not in ENSEMBLES:
        raise ValueError(f"ensemble: expected one of {ENSEMBLES}, got {method!r}")
    if total is None:
        return scores.clone()
    return torch.maximum(total, scores) if method == "max" else total + scores


def finalize(total: torch.Tensor, num_views: int, method: str) -> torch.Tensor:
    """The video's scores from the running ensemble: the sum / num_views for mean, as is for sum and max."""
    return total / num_views if method == "mean" else total


def ensemble(scores: torch.Tensor, method: str) -> torch.Tensor:
    """scores [V, C] of V views -> [C]: mean | max | sum over the views."""
    total = None
    for view in scores:
        total = accumulate(total, view, method)
    return finalize(total, scores.shape[0], method)


def average_precision(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """sklearn.metrics.average_precision_score for one class: sum over the distinct score thresholds, high to
    low, of (recall_k - recall_{k-1}) * precision_k; tied scores form one threshold."""
    pairs = sorted(zip((float(s) for s in scores), (bool(p) for p in positives)), key=lambda x: -x[0])
    total_pos = sum(p for _, p in pairs)
    if total_pos == 0:
        return float("nan")
    ap, tp, fp, prev_recall, i = 0.0, 0, 0, 0.0, 0
    while i < len(pairs):
        threshold = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == threshold:
            tp += pairs[i][1]
            fp += not pairs[i][1]
            i += 1
        recall = tp / total_pos
        ap += (recall - prev_recall) * (tp / (tp + fp))
        prev_recall = recall
    return ap


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """PySlowFast meters.get_map: scores [N, C], labels {0, 1} [N, C]; classes without any positive are
    dropped, then the mean of the per-class average precisions."""
    keep = labels.bool().any(dim=0)
    aps = [average_precision(scores[:, c].tolist(), labels[:, c].tolist()) for c in torch.nonzero(keep).flatten()]
    return float(sum(aps) / len(aps)) if aps else 0.0


# ----------------------------------------------------------------------------------------------- ground truth

_KINETICS_HEADER = ("label", "youtube_id", "time_start", "time_end")
_CHARADES_ACTION = re.compile(r"c(\d{3})\b")
_KINETICS_NAME = re.compile(r"^(?P<id>.+)_\d{6}_\d{6}$")  # youtube_id_000010_000020.mp4


class GroundTruthError(ValueError):
    """A ground-truth file that cannot be read, or a label it names that the model does not have."""


def video_key(path: str) -> str:
    """The name a ground-truth file knows a video by: its file name without the extension."""
    return os.path.splitext(os.path.basename(str(path).rstrip("/")))[0]


def _label_id(label: str, names: Mapping[str, int], num_classes: int, where: str) -> int:
    text = label.strip()
    if text in names:
        return names[text]
    m = _CHARADES_ACTION.fullmatch(text)
    if m is not None and int(m.group(1)) < num_classes:
        return int(m.group(1))
    if text.lstrip("-").isdigit() and 0 <= int(text) < num_classes:
        return int(text)
    raise GroundTruthError(f"{where}: label {text!r} is neither one of the model's {num_classes} class names nor a "
                           f"class id in [0, {num_classes})")


def read_ground_truth(path: str, class_names: Sequence[str]) -> Dict[str, List[int]]:
    """{video key: [class ids]} from a ground-truth CSV. Three layouts, told apart by the header:

    - Kinetics-400 (label,youtube_id,time_start,time_end,split): key youtube_id, label a class name.
    - Charades (id,...,actions,...): key id, labels the actions' classes ("c092 11.90 21.20;c147 0.0 12.6").
    - otherwise video,label[,label...] (a header row is skipped when its labels are no class): key the
      video's file name without extension, labels class names or ids.
    """
    names = {n: i for i, n in enumerate(class_names)}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except OSError as exc:
        raise GroundTruthError(f"--ground-truth {path}: {exc.strerror or exc}") from None
    if not rows:
        raise GroundTruthError(f"--ground-truth {path}: no rows")
    header = [c.strip().lower() for c in rows[0]]
    truth: Dict[str, List[int]] = {}
    if all(h in header for h in _KINETICS_HEADER):
        col_label, col_id = header.index("label"), header.index("youtube_id")
        for n, row in enumerate(rows[1:], 2):
            truth[row[col_id].strip()] = [_label_id(row[col_label], names, len(class_names), f"{path}:{n}")]
        return truth
    if "id" in header and "actions" in header:
        col_id, col_actions = header.index("id"), header.index("actions")
        for n, row in enumerate(rows[1:], 2):
            actions = row[col_actions] if col_actions < len(row) else ""
            ids = sorted({int(c) for c in _CHARADES_ACTION.findall(actions)})
            bad = [c for c in ids if c >= len(class_names)]
            if bad:
                raise GroundTruthError(f"{path}:{n}: action c{bad[0]:03d} is past the model's {len(class_names)} classes")
            truth[row[col_id].strip()] = ids
        return truth
    start = 0
    try:
        [_label_id(c, names, len(class_names), "") for c in rows[0][1:] if c.strip()]
    except GroundTruthError:
        start = 1  # a header row
    for n, row in enumerate(rows[start:], start + 1):
        labels = [c for c in row[1:] if c.strip()]
        if not labels:
            raise GroundTruthError(f"{path}:{n}: expected video,label[,label...], got {','.join(row)!r}")
        truth[video_key(row[0])] = [_label_id(c, names, len(class_names), f"{path}:{n}") for c in labels]
    if not truth:
        raise GroundTruthError(f"--ground-truth {path}: no video,label rows after the header {','.join(rows[0])!r}")
    return truth


def _truth_key(video: str, truth: Mapping[str, List[int]]) -> Optional[str]:
    key = video_key(video)
    if key in truth:
        return key
    m = _KINETICS_NAME.match(key)
    if m is not None and m.group("id") in truth:
        return m.group("id")
    return None


@dataclass
class Summary:
    """Scores of predictions against ground truth (see score())."""

    num_scored: int
    multi_label: bool
    top1: Optional[float] = None
    top5: Optional[float] = None
    mean_ap: Optional[float] = None
    per_class: Dict[str, Dict[str, float]] = field(default_factory=dict)
    missing_predictions: List[str] = field(default_factory=list)   # in the ground truth, not classified
    missing_ground_truth: List[str] = field(default_factory=list)  # classified, not in the ground truth

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def lines(self) -> List[str]:
        head = f"scored {self.num_scored} videos"
        if self.multi_label:
            head += f": mAP {_pct(self.mean_ap)}"
        else:
            head += f": top-1 {_pct(self.top1)}, top-5 {_pct(self.top5)}"
        out = [head]
        if self.missing_predictions:
            out.append(f"{len(self.missing_predictions)} ground-truth videos were not classified (first: "
                       f"{self.missing_predictions[0]})")
        if self.missing_ground_truth:
            out.append(f"{len(self.missing_ground_truth)} classified videos have no ground truth (first: "
                       f"{self.missing_ground_truth[0]})")
        return out


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def score(predictions: Mapping[str, torch.Tensor], truth: Mapping[str, List[int]], class_names: Sequence[str],
          multi_label: bool) -> Summary:
    """predictions {video path: scores [C]} against truth {video key: [class ids]} (read_ground_truth).

    Single-label: top-1 / top-5 accuracy (a hit when the top-k holds the video's label; the first label when
    a row names several), per class its videos and top-1 hits. Multi-label: mAP as PySlowFast's get_map,
    per class its positives and average precision. Videos missing from either side are listed, not scored.
    """
    matched = {}
    missing_truth = []
    for video, scores in predictions.items():
        key = _truth_key(video, truth)
        if key is None:
            missing_truth.append(video)
        else:
            matched[key] = scores.float()
    missing_pred = sorted(set(truth) - set(matched))
    summary = Summary(len(matched), multi_label, missing_predictions=missing_pred,
                      missing_ground_truth=sorted(missing_truth))
    if not matched:
        return summary
    keys = sorted(matched)
    scores = torch.stack([matched[k] for k in keys])
    num_classes = scores.shape[1]
    if multi_label:
        labels = torch.zeros(len(keys), num_classes)
        for row, k in enumerate(keys):
            labels[row, truth[k]] = 1
        summary.mean_ap = mean_average_precision(scores, labels)
        for c in torch.nonzero(labels.any(dim=0)).flatten().tolist():
            summary.per_class[class_names[c]] = {
                "positives": int(labels[:, c].sum()),
                "ap": average_precision(scores[:, c].tolist(), labels[:, c].tolist())}
        return summary
    target = torch.tensor([truth[k][0] for k in keys])
    topk = scores.topk(min(5, num_classes), dim=1).indices
    hit1 = topk[:, 0] == target
    hit5 = (topk == target[:, None]).any(dim=1)
    summary.top1, summary.top5 = float(hit1.float().mean()), float(hit5.float().mean())
    for c in sorted(set(target.tolist())):
        rows = target == c
        summary.per_class[class_names[c]] = {"videos": int(rows.sum()), "top1_correct": int(hit1[rows].sum()),
                                             "top5_correct": int(hit5[rows].sum())}
    return summary


def predictions_from_records(records: Iterable[dict]) -> Dict[str, torch.Tensor]:
    """{video: scores [C]} of classify's JSON records that carry "scores" (written with --ground-truth)."""
    out = {}
    for record in records:
        if "scores" in record:
            out[record["video"]] = torch.tensor(record["scores"], dtype=torch.float64)
    return out
