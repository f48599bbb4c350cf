"""Presets end to end: classify with an MMAction2 checkpoint equals MMAction2's test rules applied by hand
(SampleFrames test_mode, Resize(-1, S) on uint8, ThreeCrop, ImageNet mean/std on 0-255, Slow = nearest
resampling, softmax averaged over views) on odd videos (short, 25 / 60 fps, portrait), scored with
--ground-truth; Charades-style weights give sigmoid scores per head position, max over views; the preset a
checkpoint implies."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slowfast_kernels as sk
import slowfast_reference as R
from slowfast_kernels import io, presets
from slowfast_kernels.__main__ import main
from slowfast_kernels.checkpoints import detect_arch, export_state_dict, load_checkpoint
from _checkpoint_fixtures import randomize
from _cli_corpus import json_lines

pytest.importorskip("av")

MEAN = torch.tensor([123.675, 116.28, 103.53])
STD = torch.tensor([58.395, 57.12, 57.375])


@pytest.fixture(scope="module")
def odd_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("presets")
    short = io.write_video(d / "short_25fps.mp4", io.synthetic_video(20, 48, 64, seed=1), fps=25)      # < 64 frames
    portrait = io.write_video(d / "portrait_60fps.mp4", io.synthetic_video(100, 62, 46, seed=2), fps=60)
    return [short, portrait]


def mmaction2_clip_inds(total, clip_len, interval, num_clips):
    """MMAction2 v0.24 SampleFrames(test_mode=True, out_of_bound_opt='loop')."""
    ori = clip_len * interval
    avg = (total - ori + 1) / float(num_clips)
    offsets = (np.arange(num_clips) * avg + avg / 2.0).astype(int) if total > ori - 1 else np.zeros(num_clips, int)
    return np.mod(offsets[:, None] + np.arange(clip_len)[None, :] * interval, total)


def mmaction2_views(frames, clip_len, interval, num_clips, size, three):
    """The test pipeline by hand: each view's [3, T, crop, crop] float input (crop = size)."""
    views = []
    for inds in mmaction2_clip_inds(frames.shape[0], clip_len, interval, num_clips):
        imgs = frames[torch.from_numpy(inds)]                                   # [T, H, W, 3] uint8
        h, w = imgs.shape[1:3]
        scale = size / min(h, w)                                                # Resize(-1, size), keep_ratio
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        x = F.interpolate(imgs.permute(0, 3, 1, 2).float(), size=(nh, nw), mode="bilinear", align_corners=False)
        x = x.round().clamp(0, 255)                                             # back to uint8 levels
        if three:                                                               # ThreeCrop: left, right, middle
            if nh == size:
                step = (nw - size) // 2
                offsets = [(0, 0), (2 * step, 0), (step, 0)]
            else:
                step = (nh - size) // 2
                offsets = [(0, 0), (0, 2 * step), (0, step)]
        else:                                                                   # CenterCrop
            offsets = [((nw - size) // 2, (nh - size) // 2)]
        for x0, y0 in offsets:
            crop = x[:, :, y0:y0 + size, x0:x0 + size]
            crop = (crop - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)         # ActionDataPreprocessor
            views.append(crop.permute(1, 0, 2, 3))                              # FormatShape NCTHW
    return views


def test_mmaction2_checkpoint_end_to_end(odd_videos, tmp_path, capsys):
    source = randomize(R.slowfast_r50_8x8(num_classes=400)).eval()
    with torch.no_grad():
        source.blocks[-1].proj.weight.mul_(0.05)  # probabilities away from one-hot
    ckpt = tmp_path / "slowfast_r50_8x8x1_256e_kinetics400_rgb.pth"
    torch.save({"state_dict": export_state_dict(source, "mmaction2")}, ckpt)
    assert detect_arch(ckpt).preset == "mmaction2"
    model = load_checkpoint(R.slowfast_r50_8x8(num_classes=400, head_act="softmax"), ckpt).eval()
    assert model.preset == "mmaction2"

    expected = {}
    with torch.no_grad():
        for video in odd_videos:
            frames = io.read_video(video).frames
            probs = []
            # short side 32: the 48x64 video's long side rounds to 43 (PySlowFast floors to 42)
            for x in mmaction2_views(frames, 32, 2, 2, 32, three=True):
                slow = F.interpolate(x[None], mode="nearest", scale_factor=(1 / 4, 1, 1))  # ResNet3dSlowFast
                probs.append(model([slow, x[None]])[0])         # global pool, softmax (average_clips="prob")
            expected[str(video)] = torch.stack(probs).mean(0)
    labels = io.kinetics_400_labels()
    gt = tmp_path / "gt.csv"
    a, b = (expected[str(v)].topk(2).indices.tolist() for v in odd_videos)
    gt.write_text(f"video,label\n{odd_videos[0].name},{labels[a[0]]}\n{odd_videos[1].name},{labels[b[1]]}\n"
                  "never_classified.mp4,abseiling\n")
    out = tmp_path / "out.jsonl"
    assert main(["classify", *map(str, odd_videos), "--checkpoint", str(ckpt), "--clips", "2", "--crops", "3",
                 "--size", "32", "--crop", "32", "--device", "cpu", "--dtype", "float32", "--batch-size", "5",
                 "--output", str(out), "--ground-truth", str(gt), "--no-progress"]) == 0
    err = capsys.readouterr().err
    records = {r["video"]: r for r in json_lines(out.read_text())}
    for video, probs in expected.items():
        r = records[video]
        assert (r["preset"], r["clips"], r["crops"], r["ensemble"], r["views"]) == ("mmaction2", 2, 3, "mean", 6)
        top = probs.topk(5)
        assert [name for name, _ in r["top"]] == [labels[i] for i in top.indices.tolist()]
        torch.testing.assert_close(torch.tensor([p for _, p in r["top"]]), top.values, atol=2e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(r["scores"]), probs, atol=2e-5, rtol=0)
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["num_scored"] == 2 and summary["top1"] == 0.5 and summary["top5"] == 1.0
    assert summary["missing_predictions"] == ["never_classified"] and summary["preset"] == "mmaction2"
    assert "scored 2 videos: top-1 50.00%, top-5 100.00%" in err


def test_mmaction2_rules_differ_from_pyslowfast_on_a_portrait_frame():
    # 62x46 -> short side 40: MMAction2 rounds the long side (int(53.9 + 0.5) = 54), PySlowFast floors (53);
    # Slow frames 0, 4, ..., 28 against 0, 4, 8, 13, ...; crop offsets floor vs ceil.
    assert presets.mmaction2_resize_shape(62, 46, 40) == (54, 40)
    assert sk.ops.pack_pathways.clip_geometry(62, 46, 40, None)[0] == (53, 40)
    assert presets.mmaction2_crop_offset(54, 40, 40, 2, three=True) == (14, 0)   # 2 * (14 // 2)
    assert presets.mmaction2_crop_offset(55, 41, 40, 1, three=False) == (7, 0)   # CenterCrop floors
    video = torch.randint(0, 256, (40, 62, 46, 3), dtype=torch.uint8)
    slow, fast = presets.get_preset("mmaction2").pack(video, torch.arange(32), 4, 1, size=40, crop=40)
    assert torch.equal(slow, fast[:, ::4])
    with pytest.raises(ValueError, match="ThreeCrop needs the crop"):
        presets.get_preset("mmaction2").pack(video, torch.arange(32), 4, 0, size=40, crop=30)


def _per_position_logits(model, x):
    """The Slow-only reference up to its classifier, then the classifier at every pooled head position."""
    y = x[0]
    for block in list(model.blocks)[:-1]:
        y = block(y)
    head = model.blocks[-1]
    return head.proj(R.models.head_pool(y, head.pool_kernel).permute(0, 2, 3, 4, 1))


def test_charades_weights_give_max_ensembled_sigmoid_scores(odd_videos, tmp_path, capsys):
    source = randomize(R.slow_r50_8x8(num_classes=157, train_crop=32)).eval()
    with torch.no_grad():
        source.blocks[-1].proj.weight.mul_(1e-3)  # sigmoids near 0.43, not saturated at 1 (no ties)
        source.blocks[-1].proj.bias.fill_(-0.3)
    ckpt = tmp_path / "SLOW_8x8_R50_ptv.pyth"
    torch.save(export_state_dict(source, "pytorchvideo"), ckpt)
    assert detect_arch(ckpt).preset == "charades"  # by its 157 classes
    video = odd_videos[1]
    frames = io.read_video(video).frames
    views = []
    with torch.no_grad():
        for t in range(2):
            # PySlowFast charades.py get_seq_frames: gap = (V - ((8 - 1) * 8 + 1)) / (2 - 1), start round(gap * t)
            start = int(round(float(max(frames.shape[0] - 57, 0)) * t))
            index = torch.tensor([min(start + i * 8, frames.shape[0] - 1) for i in range(8)])
            for s in (0, 1, 2):
                _, fast = sk.pack_pathways_ref(frames, index, 8, size=48, crop=48, spatial_idx=s)
                logits = _per_position_logits(source, [fast[None]])
                assert logits.shape[1:4].numel() == 4  # 2x2 positions: sigmoid before their mean matters
                views.append(logits.sigmoid().mean(dim=(1, 2, 3))[0])
    expected = torch.stack(views).max(0).values  # ENSEMBLE_METHOD max
    names = tmp_path / "Charades_v1_classes.txt"
    names.write_text("".join(f"c{i:03d} action {i}\n" for i in range(157)))
    assert main(["classify", str(video), "--checkpoint", str(ckpt), "--clips", "2", "--crops", "3", "--size", "48",
                 "--crop", "48", "--train-crop", "32", "--labels", str(names), "--threshold", "0.43",
                 "--device", "cpu", "--dtype", "float32", "--no-progress"]) == 0
    (record,) = json_lines(capsys.readouterr().out)
    assert (record["preset"], record["ensemble"], record["views"]) == ("charades", "max", 6)
    top = expected.topk(5)
    assert [n for n, _ in record["top"]] == [f"action {i}" for i in top.indices.tolist()]
    torch.testing.assert_close(torch.tensor([p for _, p in record["top"]]), top.values, atol=2e-5, rtol=0)
    above = sorted((i for i in range(157) if expected[i] >= 0.43), key=lambda i: -float(expected[i]))
    assert 0 < len(above) < 157 and record["threshold"] == 0.43
    assert [n for n, _ in record["labels"]] == [f"action {i}" for i in above]


def test_sigmoid_head_is_per_position():
    head = R.models.ResNetBasicHead(6, 3, head_act="sigmoid").eval()
    x = torch.randn(2, 6, 1, 2, 2)
    expected = head.proj(x.permute(0, 2, 3, 4, 1)).sigmoid().mean(dim=(1, 2, 3))
    torch.testing.assert_close(head(x), expected)


@pytest.mark.parametrize("fmt,classes,name,preset", [
    ("pyslowfast", 400, "SLOWFAST_8x8_R50.pyth", "pyslowfast"),
    ("pyslowfast-caffe2", 400, "SLOWFAST_8x8_R50.pkl", "pyslowfast"),
    ("pytorchvideo", 400, "SLOWFAST_8x8_R50.pyth", "pytorchvideo"),
    ("mmaction2", 400, "slowfast_r50_4x16x1.pth", "mmaction2"),
    ("pytorchvideo", 157, "x.pyth", "charades"),
    ("pytorchvideo", 174, "x.pyth", "ssv2"),
    ("pyslowfast", 10, "checkpoint 'SLOWFAST_charades_ft.pyth'", "charades"),
    ("pytorchvideo", 10, "checkpoint 'ssv2_slowfast.pyth'", "ssv2"),
])
def test_preset_for_checkpoints(fmt, classes, name, preset):
    assert presets.preset_for(fmt, classes, name) == preset


def test_preset_table_and_bad_names():
    for p in presets.PRESETS.values():
        assert p.views() == [(c, s) for c in range(p.clips) for s in p.crop_indices()]
    assert presets.get_preset("ssv2").views() == [(0, 0), (0, 1), (0, 2)]
    assert presets.get_preset("charades").ensemble == "max" and presets.get_preset("charades").head_act == "sigmoid"
    with pytest.raises(ValueError, match="preset: expected one of"):
        presets.get_preset("kinetics")
    with pytest.raises(ValueError, match="ensemble"):
        presets.get_preset("pyslowfast").with_views(ensemble="median")


def test_bgr_channel_order_reverses_the_input():
    video = torch.randint(0, 256, (8, 20, 24, 3), dtype=torch.uint8)
    rgb = presets.Preset("x", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), pixel_max=1.0, channel_order="RGB",
                         resize="float-floor", size=16, crop=16, crop_rule="pyslowfast", temporal="pyslowfast",
                         slow_rule="linspace", head_act="softmax", ensemble="mean", clips=1, crops=1)
    bgr = presets.Preset(**{**rgb.__dict__, "channel_order": "BGR"})
    s_rgb, f_rgb = rgb.pack(video, torch.arange(8), 4, backend="reference")
    s_bgr, f_bgr = bgr.pack(video, torch.arange(8), 4, backend="reference")
    torch.testing.assert_close(f_bgr, f_rgb.flip(0))
    torch.testing.assert_close(s_bgr, s_rgb.flip(0))


def test_fused_from_video_with_a_preset():
    model = randomize(R.slow_r50_8x8(num_classes=5)).eval()
    fused = sk.fuse(model)
    video = torch.randint(0, 256, (12, 46, 62, 3), dtype=torch.uint8)
    index = torch.arange(8)
    preset = presets.get_preset("mmaction2")
    slow, fast = preset.pack(video, index, 8, 1, size=32, crop=32)
    with torch.no_grad():
        expected = model([fast[None]])
    got = fused.from_video(video, index, preset="mmaction2", size=32, crop=32)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("extra,message", [
    (["--views", "30", "--clips", "2"], "--views 30: names (clips, crops) = (10, 3)"),
    (["--preset", "ssv2"], "--preset ssv2: made for 174-class checkpoints, the model has 400 classes"),
    (["--preset", "mmaction2", "--crops", "3", "--size", "40", "--crop", "32"], "--crop 32: MMAction2's ThreeCrop"),
    (["--threshold", "2"], "argument --threshold: expected a number in [0, 1]"),
    (["--ground-truth", "{gt}"], "label 'no such class' is neither"),
    (["--ground-truth", "{missing}"], "--ground-truth {missing}: No such file"),
])
def test_protocol_option_errors_are_one_line_exit_2(odd_videos, tmp_path, capsys, extra, message):
    gt = tmp_path / "gt.csv"
    gt.write_text("video,label\na.mp4,no such class\n")
    names = {"gt": str(gt), "missing": str(tmp_path / "nope.csv")}
    extra = [e.format(**names) for e in extra]
    assert main(["classify", str(odd_videos[0]), "--size", "32", "--crop", "32", "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert message.format(**names) in err and len(err.strip().splitlines()) == 1
