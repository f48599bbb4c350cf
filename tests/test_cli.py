"""The command line: demo (parity printed), classify (1 and 30 views, PySlowFast's protocol), bench, backends."""
import re

import pytest
import torch

import slowfast_kernels as sk
import slowfast_reference as R
from slowfast_kernels import io
from slowfast_kernels.__main__ import main
from _checkpoint_fixtures import randomize
from _cli_corpus import json_lines

pytest.importorskip("av")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return io.write_video(tmp_path_factory.mktemp("cli") / "clip.mp4", io.synthetic_video(48, 64, 80), fps=25)


def _checkpoint(tmp_path, arch, **kwargs):
    model = randomize(R.build_model(arch, **kwargs)).eval()
    path = tmp_path / f"{arch}.pyth"
    torch.save({"model_state": sk.checkpoints.export_state_dict(model, "pyslowfast")}, path)
    return model, path


def test_demo_prints_parity_and_speed(capsys):
    assert main(["demo", "--size", "64", "--crop", "64", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    rel = float(re.search(r"max rel ([0-9.e+-]+)", out).group(1))
    assert rel < 1e-4
    assert "clips/s" in out and "speedup" in out


def _top5(out):
    (record,) = json_lines(out)
    return [(name, p) for name, p in record["top"]]


@pytest.mark.parametrize("arch,views", [("slowfast_r50_8x8", 1), ("slow_r50_8x8", 30)])
def test_classify_matches_the_views_averaged_by_hand(video, tmp_path, capsys, arch, views):
    # train_crop 32 with a 48 crop leaves 2x2 head positions, as PySlowFast's 224-trained models have at 256
    model, ckpt = _checkpoint(tmp_path, arch, train_crop=32)
    with torch.no_grad():  # logits of order 1, so the per-position softmax is not one-hot
        model.blocks[-1].proj.weight.mul_(1e-3)
    torch.save({"model_state": sk.checkpoints.export_state_dict(model, "pyslowfast")}, ckpt)
    # --batch-size 7: the 30 views span 5 forwards, the last one partial
    assert main(["classify", str(video), "--checkpoint", str(ckpt), "--arch", arch, "--views", str(views),
                 "--size", "48", "--crop", "48", "--train-crop", "32", "--device", "cpu", "--dtype", "float32",
                 "--batch-size", "7"]) == 0
    top = _top5(capsys.readouterr().out)
    assert len(top) == 5
    # PySlowFast testing, written out: 10 temporal x 3 spatial views (or the first clip's centre) of a video
    # sampled at 30 fps-equivalent spans (this one is 25 fps), each view's head a softmax per position
    # averaged over positions, the views' probabilities averaged.
    labels = io.kinetics_400_labels()
    cfg, rate = model.config, {"slowfast_r50_8x8": 2, "slow_r50_8x8": 8}[arch]
    temporal, spatial = (10, [0, 1, 2]) if views == 30 else (1, [1])
    scores = torch.zeros(400)
    full = io.read_video(video)
    with torch.no_grad():
        for t in range(temporal):
            index = sk.temporal_indices(full.num_video_frames, cfg.num_frames, rate, t, temporal, fps=25)
            for s in spatial:
                slow, fast = sk.pack_pathways_ref(full.frames, index, cfg.alpha, size=48, crop=48, spatial_idx=s)
                x = [fast[None]] if cfg.slow_only else [slow[None], fast[None]]
                logits = _per_position_logits(model, x)
                assert logits.shape[1:4].numel() == 4  # 2x2 positions
                scores += logits.softmax(-1).mean(dim=(1, 2, 3))[0]
    scores /= temporal * len(spatial)
    expected = scores.topk(5)
    assert [name for name, _ in top] == [labels[i] for i in expected.indices.tolist()]
    torch.testing.assert_close(torch.tensor([p for _, p in top]), expected.values, atol=1e-4, rtol=0)


def _per_position_logits(model, x):
    """The reference network up to its classifier, then the classifier at every pooled position."""
    blocks = list(model.blocks)
    if model.config.slow_only:
        y = x[0]
        for block in blocks[:-1]:
            y = block(y)
        head = blocks[-1]
        y = R.models.head_pool(y, head.pool_kernel)
    else:
        y = list(x)
        for block in blocks[:-2]:
            y = block(y)
        y = blocks[-2](y)
        head = blocks[-1]
    return head.proj(y.permute(0, 2, 3, 4, 1))


def test_classify_without_checkpoint_says_so_in_the_output(video, capsys, recwarn):
    assert main(["classify", str(video), "--size", "32", "--crop", "32", "--device", "cpu",
                 "--dtype", "float32"]) == 0
    captured = capsys.readouterr()
    (record,) = json_lines(captured.out)
    assert record["checkpoint"] is None and "random weights" in record["warning"] and len(record["top"]) == 5
    assert captured.err.count("random weights") == 1 and not [w for w in recwarn if "weights" in str(w.message)]


def test_classify_bad_video_is_an_error_line(tmp_path, capsys):
    bad = tmp_path / "not_a_video.mp4"
    bad.write_text("hello")
    assert main(["classify", str(bad), "--size", "32", "--crop", "32", "--device", "cpu", "--dtype",
                 "float32"]) == 3
    (record,) = json_lines(capsys.readouterr().out)
    assert record["video"] == str(bad) and "not_a_video.mp4" in record["error"] and "top" not in record


def test_bench_and_backends(capsys):
    assert main(["bench", "--size", "32", "--runs", "1", "--device", "cpu", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"eager .* clips/s", out) and re.search(r"fused .* clips/s", out)
    assert main(["backends"]) == 0
    assert "reference  available" in capsys.readouterr().out
