"""AVA frame-mAP (slowfast_kernels.ava_eval and the evaluate-ava command) against a computation by hand on
synthetic files: label map classes only, excluded keyframes dropped, greedy matching at IoU 0.5, VOC AP."""
import math

import pytest

from slowfast_kernels import ava_eval
from slowfast_kernels.cli import main

LABELMAP = 'item {\n  name: "stand"\n  id: 1\n}\nitem {\n  name: "sit"\n  id: 3\n}\n'
A, B, C = "0.1,0.1,0.5,0.5", "0.6,0.6,0.9,0.9", "0.2,0.2,0.6,0.8"
GT = "\n".join([
    f"v1,0902,{A},1,0", f"v1,0902,{B},1,1", f"v1,0902,{A},3,0",
    f"v1,0903,{C},1,2",
    f"v1,0904,{A},1,0",      # excluded keyframe
    f"v1,0902,{B},2,1",      # class 2: not in the label map
]) + "\n"
PRED = "\n".join([
    "v1,0902,0.12,0.1,0.5,0.5,1,0.9",    # A: IoU 0.95 -> TP
    "v1,0902,0.1,0.12,0.5,0.52,1,0.8",   # A again (IoU 0.905): A is taken -> FP
    "v1,0903,0.0,0.0,0.1,0.1,1,0.7",     # nothing there -> FP
    "v1,0902,0.6,0.6,0.9,0.85,1,0.3",    # B: IoU 0.833 -> TP
    "v1,0904,0.1,0.1,0.5,0.5,1,0.95",    # excluded keyframe: dropped
    f"v1,0902,{A},3,0.6",                # sit on A -> TP
    f"v1,0903,{C},3,0.4",                # no sit at 0903 -> FP
    f"v1,0902,{B},2,0.99",               # class 2: dropped
]) + "\n"
EXCL = "v1,0904\n"


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, text in (("labelmap.pbtxt", LABELMAP), ("gt.csv", GT), ("pred.csv", PRED), ("excl.csv", EXCL)):
        (tmp_path / name).write_text(text)
        paths[name] = str(tmp_path / name)
    return paths


def test_frame_map_by_hand(files):
    # stand: 3 ground-truth boxes (A, B at 0902; C at 0903). Detections by score: 0.9 TP, 0.8 FP, 0.7 FP,
    # 0.3 TP -> precision 1, 1/2, 1/3, 1/2 at recall 1/3, 1/3, 1/3, 2/3; made monotone: 1 up to recall 1/3,
    # 1/2 up to 2/3, 0 after. AP = 1/3 * 1 + 1/3 * 1/2 = 0.5.
    # sit: 1 ground-truth box; 0.6 TP, 0.4 FP -> precision 1 at recall 1: AP = 1.
    result = ava_eval.frame_map(files["gt.csv"], files["pred.csv"], files["labelmap.pbtxt"], files["excl.csv"])
    assert result.ap_per_class[1] == pytest.approx(0.5)
    assert result.ap_per_class[3] == pytest.approx(1.0)
    assert set(result.ap_per_class) == {1, 3} and result.class_names == {1: "stand", 3: "sit"}
    assert result.mean_ap == pytest.approx(0.75)
    # without the exclusions the 0.95 detection at 0904 is a TP on the fourth stand box: detections
    # 0.95 TP, 0.9 TP, 0.8 FP, 0.7 FP, 0.3 TP over 4 boxes -> 1/4 + 1/4 + 1/4 * 3/5 = 0.65
    kept = ava_eval.frame_map(files["gt.csv"], files["pred.csv"], files["labelmap.pbtxt"], None)
    assert kept.ap_per_class[1] == pytest.approx(0.65)
    # capacity 1: only the best row per keyframe survives (0902: 0.9 stand; 0903: 0.7 stand)
    top1 = ava_eval.frame_map(files["gt.csv"], files["pred.csv"], files["labelmap.pbtxt"], files["excl.csv"], 1)
    assert top1.ap_per_class[1] == pytest.approx(1 / 3) and top1.ap_per_class[3] == 0.0


def test_average_precision_edge_cases():
    import numpy as np

    assert math.isnan(ava_eval.average_precision(np.zeros(0), np.zeros(0, bool), 0))
    assert ava_eval.average_precision(np.zeros(0), np.zeros(0, bool), 2) == 0.0
    assert ava_eval.average_precision(np.array([0.5, 0.9]), np.array([True, False]), 1) == pytest.approx(0.5)


def test_evaluate_ava_command(files, capsys):
    status = main(["evaluate-ava", "--ground-truth", files["gt.csv"], "--labels", files["labelmap.pbtxt"],
                   "--exclusions", files["excl.csv"], files["pred.csv"]])
    out = capsys.readouterr().out
    assert status == 0 and "frame-mAP@0.5: 0.7500" in out and "stand: AP 0.5000" in out
    assert main(["evaluate-ava", "--ground-truth", "nope.csv", "--labels", files["labelmap.pbtxt"],
                 files["pred.csv"]]) == 2
    assert "--ground-truth nope.csv: no such file" in capsys.readouterr().err
