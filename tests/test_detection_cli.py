"""The detect command on a generated video with a boxes file: AVA CSV rows equal to the reference detector run
by hand on the same clip (decoded whole, indices, resize and normalization written out here), the fused model's
scores equal to the reference's, resuming, and bad boxes files."""
import csv

import pytest
import torch

from slowfast_kernels import io
from slowfast_kernels.cli import main
from slowfast_kernels.detection_checkpoints import export_detector_state_dict, load_detector
from slowfast_reference import pack_pathways
from slowfast_reference.detection import build_detector
from _checkpoint_fixtures import randomize


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("detect")
    io.write_video(d / "clipA.mp4", io.synthetic_video(60, 72, 96, seed=2), fps=30)
    (d / "boxes.csv").write_text("clipA,0.5,0.1,0.2,0.6,0.9,0.95\nclipA,0.5,0.4,0.1,1.0,0.8\n"
                                 "clipA,1.5,0.0,0.0,0.5,0.5,0.3\n")  # the last one is under --box-threshold
    model = randomize(build_detector().eval())
    with torch.no_grad():
        model.detection_head.proj.weight.mul_(5e-4)
        model.detection_head.proj.bias.sub_(1.0)
    torch.save({"model_state": export_detector_state_dict(model, "pytorchvideo")}, d / "det.pyth")
    return d


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def expected_rows(d, top):
    model = load_detector(str(d / "det.pyth"))
    frames = io.read_video(d / "clipA.mp4").frames          # [60, 72, 96, 3]
    center = int(0.5 * 30)
    index = torch.arange(center - 32, center + 32, 2).clamp(0, 59)
    x = frames[index].permute(3, 0, 1, 2).float() / 255     # [3, 32, 72, 96]
    x = torch.nn.functional.interpolate(x, size=(64, 85), mode="bilinear", align_corners=False)
    x = ((x - 0.45) / 0.225).unsqueeze(0)
    boxes = torch.tensor([[0, 0.1 * 85, 0.2 * 64, 0.6 * 85, 0.9 * 64], [0, 0.4 * 85, 0.1 * 64, 1.0 * 85, 0.8 * 64]])
    with torch.no_grad():
        scores = model(pack_pathways(x, 4), boxes)
    rows = []
    for box, s in zip(([0.1, 0.2, 0.6, 0.9], [0.4, 0.1, 1.0, 0.8]), scores):
        for i in torch.argsort(s, descending=True)[:top].tolist():
            rows.append((["clipA", "0.5"] + [f"{v:.3f}" for v in box] + [str(i + 1)], float(s[i])))
    return rows


def test_detect_writes_ava_csv(setup):
    d = setup
    out_ref, out_fused = d / "ref.csv", d / "fused.csv"
    common = [str(d / "clipA.mp4"), "--boxes", str(d / "boxes.csv"), "--checkpoint", str(d / "det.pyth"),
              "--size", "64", "--top", "3"]
    assert main(["detect", *common, "-o", str(out_ref), "--backend", "reference"]) == 0
    rows = _rows(out_ref)
    expected = expected_rows(d, 3)
    assert len(rows) == len(expected) == 6
    for row, (want, score) in zip(rows, expected):
        assert row[:7] == want
        assert float(row[7]) == pytest.approx(score, abs=2e-6)
    assert main(["detect", *common, "-o", str(out_fused)]) == 0
    fused = _rows(out_fused)
    assert [r[:7] for r in fused] == [r[:7] for r in rows]
    for a, b in zip(fused, rows):
        assert float(a[7]) == pytest.approx(float(b[7]), abs=1e-4)

    # resume: a rerun skips the logged keyframe; after a stop mid-keyframe (rows written, one cut off, no log
    # line) the rerun drops its rows and redoes it: no duplicates
    assert (d / "ref.csv.done").read_text() == "clipA,0.5\n"
    assert main(["detect", *common, "-o", str(out_ref), "--backend", "reference"]) == 0
    assert _rows(out_ref) == rows
    text = out_fused.read_text()
    out_fused.write_text(text[: len(text) // 2])
    (d / "fused.csv.done").write_text("")
    assert main(["detect", *common, "-o", str(out_fused)]) == 0
    assert _rows(out_fused) == fused


def test_detect_bad_boxes(setup, tmp_path, capsys):
    d = setup
    bad = tmp_path / "bad.csv"
    bad.write_text("clipA,0.5,0.1,0.2,1.6,0.9\n")
    assert main(["detect", str(d / "clipA.mp4"), "--boxes", str(bad), "-o", str(tmp_path / "o.csv")]) == 2
    assert "expected 0 <= x1 <= x2 <= 1" in capsys.readouterr().err
    bad.write_text("clipB,0.5,0.1,0.2,0.6,0.9\n")
    assert main(["detect", str(d / "clipA.mp4"), "--boxes", str(bad), "-o", str(tmp_path / "o.csv")]) == 2
    assert "no video for video_id 'clipB'" in capsys.readouterr().err
