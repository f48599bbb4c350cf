"""classify --features FILE.npz / --features-only: one [views, D] float32 array per video (the pooled concat
before the classifier, in view order) that numpy.load opens, keyed by the video's real path; view_index says
which temporal clip and spatial crop each row is. The arrays equal the reference model's features of the same
views; --features-only gives the same arrays without the classifier; a killed run's archive is repaired and
resumed (earlier arrays kept, none twice); bad options are one line and exit 2."""
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels import io
from slowfast_kernels.__main__ import main
from slowfast_kernels.cli.features import FeaturesFile, repair
from _cli_corpus import by_video, json_lines, small_checkpoint

pytest.importorskip("av")

# --backend reference: the fused model (BN folded, the head's pooling) on eager ops, no per-shape runners to
# prepare; the kernels' parity is tested op by op elsewhere.
SMALL = ["--size", "32", "--crop", "32", "--train-crop", "32", "--device", "cpu", "--dtype", "float32",
         "--no-progress", "--backend", "reference"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    (root / "videos").mkdir()
    videos = [io.write_video(root / "videos" / f"v{i}.mp4", io.synthetic_video(20, 32, 48, seed=i), fps=25)
              for i in range(3)]
    model, ckpt = small_checkpoint(root / "ckpt.pyth")
    return root, videos, model, ckpt


def _classify(argv, capsys):
    status = main(["classify", *SMALL, *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _one_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _names(path):
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


@pytest.fixture(scope="module")
def first_run(corpus, tmp_path_factory):
    """Three videos, one view each, --output and --features: the run the parity, resume and refusal tests
    start from."""
    root, videos, _, ckpt = corpus
    out = tmp_path_factory.mktemp("first")
    status = main(["classify", *SMALL, *map(str, videos), "--checkpoint", str(ckpt), "--batch-size", "2",
                   "--output", str(out / "r.jsonl"), "--features", str(out / "f.npz")])
    assert status == 0
    return out


def _copy_run(src, dst):
    for name in ("r.jsonl", "f.npz"):
        shutil.copy(src / name, dst / name)
    return dst / "r.jsonl", dst / "f.npz"


def _views(video, alpha, clips, crops, fps=25):
    """PySlowFast's views of a video, written out: its temporal clips (by the whole-video index rule) x crops,
    packed by the eager pack_pathways_ref, clip-major."""
    full = io.read_video(video)
    slows, fasts = [], []
    for t in range(clips):
        index = sk.temporal_indices(full.num_video_frames, 32, 2, t, clips, fps=fps)
        for s in ([1] if crops == 1 else [0, 1, 2]):
            slow, fast = sk.pack_pathways_ref(full.frames, index, alpha, size=32, crop=32, spatial_idx=s)
            slows.append(slow)
            fasts.append(fast)
    return [torch.stack(slows), torch.stack(fasts)]


def test_arrays_equal_the_reference_features_and_features_only_gives_the_same(first_run, corpus, tmp_path, capsys):
    root, videos, model, ckpt = corpus
    data = np.load(first_run / "f.npz")
    records = by_video(json_lines((first_run / "r.jsonl").read_text()))
    assert data["view_index"].tolist() == [[0, 1]]  # --views 1: clip 0 of 1, the centre crop
    assert json.loads(str(data["settings"])) == next(iter(records.values()))["settings"]
    only = tmp_path / "only.npz"
    status, out, _ = _classify([*map(str, videos), "--checkpoint", str(ckpt), "--batch-size", "2",
                                "--features", str(only), "--features-only"], capsys)
    assert status == 0
    only_records = by_video(json_lines(out))
    only_data = np.load(only)
    with torch.no_grad():
        want = model.features([torch.cat(x) for x in zip(*(_views(v, model.config.alpha, 1, 1) for v in videos))])
    for i, video in enumerate(videos):
        record, only_record = records[str(video)], only_records[str(video)]
        assert record["features"] == only_record["features"] == os.path.realpath(video) == record["resolved"]
        assert "top" in record and "top" not in only_record
        array = data[record["features"]]
        assert array.dtype == np.float32 and array.shape == (1, 2304)
        np.testing.assert_array_equal(only_data[record["features"]], array)  # one fused forward, no classifier
        # fused vs reference in fp32: DESIGN's 1e-4 relative (of the largest feature)
        expected = want["concat"][i:i + 1]
        torch.testing.assert_close(torch.from_numpy(array), expected, rtol=1e-4,
                                   atol=1e-4 * expected.abs().max().item())
    assert only_records[str(videos[0])]["settings"]["features_only"] is True
    assert "top" not in only_records[str(videos[0])]["settings"]


class _ViewProbe(torch.nn.Module):
    """Stands in for the fused network: a view's "features" are statistics that tell its clip and crop apart
    (per-frame and per-column means of the fast pathway, per-channel means of the slow one)."""

    @staticmethod
    def describe(inputs):
        slow, fast = (t.float() for t in inputs)
        return torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(1, 3, 4)), fast.mean(dim=(1, 2, 3))], dim=1)

    def features(self, inputs):
        return {"concat": self.describe(inputs)}


def test_30_views_rows_follow_view_index(corpus, tmp_path, capsys, monkeypatch):
    """--views 30 through the whole command (decoding, sampling, packing, batching across forwards), the
    network replaced by a probe: row i of the array is the view (clip, crop) = view_index[i]."""
    root, videos, model, ckpt = corpus
    monkeypatch.setattr(sk, "fuse", lambda *args, **kwargs: _ViewProbe())
    # 100 frames at 25 fps: 4 s, so the 10 clips of 64 frames at 30 fps (53 here) start at 10 different frames
    video = io.write_video(tmp_path / "long.mp4", io.synthetic_video(100, 32, 48, seed=7), fps=25)
    path = tmp_path / "probe.npz"
    # --batch-size 7: the 30 views span 5 forwards, the last one partial
    status, out, _ = _classify([str(video), "--checkpoint", str(ckpt), "--views", "30", "--batch-size", "7",
                                "--features", str(path), "--features-only"], capsys)
    assert status == 0
    (record,) = json_lines(out)
    data = np.load(path)
    assert data["view_index"].tolist() == [[t, s] for t in range(10) for s in (0, 1, 2)]
    want = _ViewProbe.describe(_views(video, model.config.alpha, 10, 3))
    got = torch.from_numpy(data[record["features"]])
    assert got.shape == (30, want.shape[1])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # the fused pack op vs the eager one
    # every view is told apart from every other by more than that tolerance, so no two rows can swap unseen
    gaps = torch.cdist(want, want, p=float("inf")) + torch.eye(30)
    assert gaps.min() > 1e-3


def test_resume_after_a_kill_keeps_the_arrays_and_adds_the_rest(first_run, corpus, tmp_path, capsys):
    """A run killed while the third video's array was being written, after the second video's array but
    before its line: the cut member goes, the second video's array stays (not written twice), both run again."""
    root, videos, _, ckpt = corpus
    out, npz = _copy_run(first_run, tmp_path)
    args = [*map(str, videos), "--checkpoint", str(ckpt), "--batch-size", "2", "--output", str(out),
            "--features", str(npz)]
    full = np.load(npz)
    arrays = {k: full[k] for k in full.files}
    lines = out.read_text().splitlines()
    assert len(arrays) == 3 + 2  # three videos, view_index, settings
    with zipfile.ZipFile(npz) as zf:
        last = max(zf.infolist(), key=lambda i: i.header_offset)
    assert last.filename == os.path.realpath(videos[2]) + ".npy"  # the order the videos finished in
    npz.write_bytes(npz.read_bytes()[:last.header_offset + 100])  # no central directory, the last member cut
    out.write_text(lines[0] + "\n")
    status, _, err = _classify(args, capsys)
    assert status == 0 and "resuming: 1 of 3" in err
    assert sorted(_names(npz)) == sorted(k + ".npy" for k in arrays)  # each once
    assert out.read_text().splitlines()[0] == lines[0]
    records = by_video(json_lines(out.read_text()))  # each video once
    assert {r["features"] for r in records.values()} == {os.path.realpath(v) for v in videos}
    data = np.load(npz)
    recomputed = last.filename[:-4]
    for key, value in arrays.items():
        if key != recomputed:
            np.testing.assert_array_equal(data[key], value)  # kept
    # computed again in another batch (of 2, not 1): oneDNN's blocking differs, the fp32 tolerance applies
    expected = arrays[recomputed]
    np.testing.assert_allclose(data[recomputed], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_refusals_are_one_line_and_exit_2(first_run, corpus, tmp_path, capsys):
    root, videos, _, ckpt = corpus
    video = str(videos[0])
    (tmp_path / "notes.npz").write_text("not an archive\n")
    np.savez(tmp_path / "theirs.npz", x=np.zeros(3))
    cases = [
        (["--features-only"], "--features-only: needs --features"),
        (["--features", str(tmp_path)], "is a directory"),
        (["--features", str(tmp_path / "no" / "f.npz")], "does not exist"),
        (["--features", str(tmp_path / "notes.npz")], "is not an .npz"),
        (["--features", str(tmp_path / "theirs.npz")], "not written by classify --features"),
        (["--features", str(tmp_path / "f.npz"), "--features-only", "--ground-truth", str(tmp_path / "gt.csv")],
         "--ground-truth:"),
        (["--features", str(tmp_path / "r.jsonl"), "--output", str(tmp_path / "r.jsonl")], "is the --output file"),
    ]
    if os.path.isdir("/sys"):  # not writable, even by root
        cases.append((["--features", "/sys/f.npz"], "cannot write in /sys"))
    for extra, expected in cases:
        status, _, err = _classify([video, *extra], capsys)
        assert status == 2 and expected in _one_line(err), (extra, err)
    # resumed runs: the settings of the records and of the archive must be this run's
    out, npz = _copy_run(first_run, tmp_path)
    base = [*map(str, videos), "--checkpoint", str(ckpt), "--output", str(out)]
    for extra, expected in [
        ([], "--features f.npz there, none now"),                        # made with --features, rerun without
        (["--features", str(tmp_path / "g.npz")], "--features f.npz there, g.npz now"),
        (["--features", str(npz), "--features-only"], "--features-only none there, True now"),
    ]:
        status, _, err = _classify([*base, *extra], capsys)
        assert status == 2 and expected in _one_line(err), (extra, err)
    # made without --features, rerun with it: refused (its videos have no arrays)
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({**r, "settings": {k: v for k, v in r["settings"].items() if k != "features"}})
                             + "\n" for r in json_lines(out.read_text())))
    status, _, err = _classify([*base[:-1], str(plain), "--features", str(tmp_path / "p.npz")], capsys)
    assert status == 2 and "--features none there, " in _one_line(err)
    # an archive of other settings given to a new --output
    status, _, err = _classify([video, "--checkpoint", str(ckpt), "--output", str(tmp_path / "new.jsonl"),
                                "--features", str(npz), "--top", "3"], capsys)
    assert status == 2 and "was written with other settings (--top 5 there, 3 now)" in _one_line(err)
    # the records name arrays the archive lost
    os.remove(npz)
    status, _, err = _classify([*base, "--features", str(npz)], capsys)
    assert status == 2 and "3 of the 3 videos recorded with an array have none in it" in _one_line(err)


# -- the archive writer alone ---------------------------------------------------------------------------------

def _write(path, items, rank=0, world_size=1, close=True):
    ff = FeaturesFile(str(path), rank, world_size)
    ff.open({"run": 1}, {"view_index": np.arange(4).reshape(2, 2)})
    written = [ff.write(k, v) for k, v in items]
    if close:
        ff.close()
    return ff, written


def test_every_cut_of_a_killed_archive_repairs_to_its_whole_members(tmp_path):
    arrays = {f"/v/{i}.mp4": np.full((2, 5), i, dtype=np.float32) for i in range(3)}
    whole = tmp_path / "whole.npz"
    _, written = _write(whole, [*arrays.items(), ("/v/0.mp4", np.zeros(1))])
    assert written == [True, True, True, False]  # the first array of a key stays
    with zipfile.ZipFile(whole) as zf:
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        ends = [i.header_offset + len(i.FileHeader()) + i.compress_size for i in infos]
    data = whole.read_bytes()
    start = infos[2].header_offset  # the cuts: anywhere from the first video's member to the last one's end
    for cut in range(start, ends[-1] + 1):
        path = tmp_path / "cut.npz"
        path.write_bytes(data[:cut])
        repair(str(path))
        expected = [i.filename for i, end in zip(infos, ends) if end <= cut]
        assert _names(path) == expected, cut
        loaded = np.load(path)
        for name in expected[2:]:
            np.testing.assert_array_equal(loaded[name[:-4]], arrays[name[:-4]])
    # a member whose header was never finalized (sizes 0: killed while its data was written)
    header = bytearray(data[infos[-1].header_offset:ends[-1]])
    header[14:26] = bytes(12)  # CRC-32, compressed and uncompressed sizes
    path.write_bytes(data[:infos[-1].header_offset] + bytes(header))
    repair(str(path))
    assert _names(path) == [i.filename for i in infos[:-1]]
    # a run killed while appending to a closed archive: its new member overwrote the old central directory
    ff, _ = _write(path, [("/v/2.mp4", arrays["/v/2.mp4"]), ("/v/3.mp4", arrays["/v/2.mp4"])], close=False)
    killed = path.read_bytes()
    ff.close()
    path.write_bytes(killed)
    repair(str(path))
    assert _names(path) == [i.filename for i in infos] + ["/v/3.mp4.npy"]


def test_merge_parts_moves_each_member_once(tmp_path):
    main_path = tmp_path / "f.npz"
    _write(main_path, [("/v/a", np.ones(2))])
    _write(main_path, [("/v/b", np.full(2, 2.0)), ("/v/a", np.zeros(2))], rank=0, world_size=2)
    _write(main_path, [("/v/c", np.full(2, 3.0))], rank=1, world_size=2, close=False)  # a killed rank
    ff = FeaturesFile(str(main_path))
    assert ff.keys() == {"/v/a", "/v/b", "/v/c", "view_index", "settings"}
    ff.merge_parts()
    assert not ff.part_files()
    names = _names(main_path)
    assert sorted(names) == sorted(["view_index.npy", "settings.npy", "/v/a.npy", "/v/b.npy", "/v/c.npy"])
    loaded = np.load(main_path)
    assert loaded["/v/a"].tolist() == [1, 1] and loaded["/v/c"].tolist() == [3, 3]
    assert json.loads(str(loaded["settings"])) == {"run": 1}
