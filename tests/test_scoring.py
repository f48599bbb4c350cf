"""Scoring (slowfast_kernels.scoring) on synthetic predictions against by-hand numbers; ensembles; the
ground-truth layouts (video,label CSV, Kinetics-400 csv, Charades csv); class-name files."""
import json

import pytest
import torch

from slowfast_kernels import scoring
from slowfast_kernels.cli import protocol
from slowfast_kernels.cli.errors import UsageError

NAMES = ["abseiling", "air drumming", "archery", "baking cookies", "bowling", "cartwheeling"]


def test_ensembles():
    views = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.0, 0.2, 0.8]])
    assert scoring.ensemble(views, "mean").tolist() == pytest.approx([0.2, 0.4, 0.4])
    assert scoring.ensemble(views, "sum").tolist() == pytest.approx([0.6, 1.2, 1.2])
    assert scoring.ensemble(views, "max").tolist() == pytest.approx([0.5, 0.7, 0.8])
    with pytest.raises(ValueError, match="ensemble"):
        scoring.ensemble(views, "median")


def test_average_precision_by_hand():
    # sorted 0.9 (pos): P 1, R 1/2; 0.8 (neg): P 1/2; 0.3 (pos): P 2/3, R 1 -> 1/2 * 1 + 1/2 * 2/3
    assert scoring.average_precision([0.9, 0.8, 0.3], [1, 0, 1]) == pytest.approx(0.5 + 1 / 3)
    # tied scores are one threshold (sklearn): P 1/2 at R 1
    assert scoring.average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert scoring.average_precision([0.2, 0.9, 0.4, 0.1], [0, 1, 1, 0]) == pytest.approx(1.0)


def test_mean_ap_drops_classes_without_positives():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.3, 0.2, 0.9]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    # class 0: 0.9 pos, 0.8 neg, 0.3 pos -> 5/6; class 1: 0.7 pos first -> 1; class 2: no positive, dropped
    assert scoring.mean_average_precision(scores, labels) == pytest.approx((5 / 6 + 1) / 2)


def test_single_label_summary_by_hand(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("video,label\na.mp4,archery\nb.mp4,2\nc.mp4,bowling\nmissing.mp4,abseiling\n")
    truth = scoring.read_ground_truth(str(gt), NAMES)
    assert truth == {"a": [2], "b": [2], "c": [4], "missing": [0]}
    preds = {
        "/x/a.mp4": torch.tensor([0.1, 0.1, 0.5, 0.1, 0.1, 0.1]),      # top-1 hit
        "/x/b.mp4": torch.tensor([0.3, 0.25, 0.2, 0.1, 0.1, 0.05]),    # rank 3: top-5 hit
        "/x/c.mp4": torch.tensor([0.2, 0.2, 0.2, 0.2, 0.01, 0.19]),    # rank 6: miss
        "/x/extra.mp4": torch.tensor([1.0, 0, 0, 0, 0, 0]),            # no ground truth
    }
    s = scoring.score(preds, truth, NAMES, multi_label=False)
    assert s.num_scored == 3 and s.top1 == pytest.approx(1 / 3) and s.top5 == pytest.approx(2 / 3)
    assert s.per_class == {"archery": {"videos": 2, "top1_correct": 1, "top5_correct": 2},
                           "bowling": {"videos": 1, "top1_correct": 0, "top5_correct": 0}}
    assert s.missing_predictions == ["missing"] and s.missing_ground_truth == ["/x/extra.mp4"]
    assert s.lines()[0] == "scored 3 videos: top-1 33.33%, top-5 66.67%"


def test_kinetics_csv_matches_clip_file_names(tmp_path):
    gt = tmp_path / "validate.csv"
    gt.write_text("label,youtube_id,time_start,time_end,split\n"
                  "archery,--07WQ2iBlw,1,11,validate\nbowling,-0Cu9R2CgRg,40,50,validate\n")
    truth = scoring.read_ground_truth(str(gt), NAMES)
    preds = {"k/--07WQ2iBlw_000001_000011.mp4": torch.tensor([0, 0, 1.0, 0, 0, 0]),
             "k/-0Cu9R2CgRg.mp4": torch.tensor([0, 0, 1.0, 0, 0, 0])}
    s = scoring.score(preds, truth, NAMES, multi_label=False)
    assert s.num_scored == 2 and s.top1 == pytest.approx(0.5)


def test_charades_csv_multi_label(tmp_path):
    gt = tmp_path / "Charades_v1_test.csv"
    gt.write_text('id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n'
                  'AB12C,s1,Kitchen,6,7,Yes,x,y,z,"c001 0.0 4.2;c003 1.0 9.0",30.1\n'
                  'ZZ9Z9,s2,Hall,6,7,Yes,x,y,z,c001 2.0 3.0,12.0\n')
    truth = scoring.read_ground_truth(str(gt), NAMES)
    assert truth == {"AB12C": [1, 3], "ZZ9Z9": [1]}
    preds = {"AB12C.mp4": torch.tensor([0.1, 0.9, 0.2, 0.3, 0.0, 0.0]),
             "ZZ9Z9.mp4": torch.tensor([0.1, 0.8, 0.2, 0.4, 0.0, 0.0])}
    s = scoring.score(preds, truth, NAMES, multi_label=True)
    # class 1: both positive -> AP 1; class 3: 0.4 (neg) above 0.3 (pos) -> 1/2
    assert s.mean_ap == pytest.approx(0.75)
    assert s.per_class["baking cookies"] == {"positives": 1, "ap": pytest.approx(0.5)}


def test_bad_ground_truth_is_one_line(tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("a.mp4,archery\nb.mp4,juggling fire\n")
    with pytest.raises(scoring.GroundTruthError, match=r"gt\.csv:2: label 'juggling fire' is neither"):
        scoring.read_ground_truth(str(gt), NAMES)
    gt.write_text("video,label\n")
    with pytest.raises(scoring.GroundTruthError, match="no video,label rows after the header"):
        scoring.read_ground_truth(str(gt), NAMES)
    with pytest.raises(scoring.GroundTruthError, match="No such file"):
        scoring.read_ground_truth(str(tmp_path / "nope.csv"), NAMES)


def test_label_files(tmp_path):
    charades = tmp_path / "Charades_v1_classes.txt"
    charades.write_text("c000 Holding some clothes\nc001 Putting clothes somewhere\nc002 Taking some clothes\n")
    assert protocol.read_labels(str(charades), 3)[1] == "Putting clothes somewhere"
    ssv2 = tmp_path / "something-something-v2-labels.json"
    ssv2.write_text(json.dumps({"Pushing something": "1", "Holding something": "0"}))
    assert protocol.read_labels(str(ssv2), 2) == ["Holding something", "Pushing something"]
    ava = tmp_path / "ava_action_list_v2.2.pbtxt"
    ava.write_text('label_map { item { name: "bend/bow (at the waist)" id: 1 }\n item { name: "crawl" id: 2 } }\n')
    assert protocol.read_labels(str(ava), 2) == ["bend/bow (at the waist)", "crawl"]
    plain = tmp_path / "names.txt"
    plain.write_text("a\nb\n")
    with pytest.raises(UsageError, match="2 names, the model has 3 classes"):
        protocol.read_labels(str(plain), 3)
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"x": 0, "y": 2}))
    with pytest.raises(UsageError, match="id 1 is missing"):
        protocol.read_labels(str(gap), 2)
