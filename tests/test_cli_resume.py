"""Resuming a classify run: records carry their settings and a rerun with other settings is refused (exit 2,
one line naming the options) unless --overwrite; videos are known by their real path (../x.mp4 and /abs/x.mp4
are one video); --retry-failed replaces error lines; --output - is stdout, --output DIR is exit 2; @list
entries are relative to the list's folder."""
import json
import os
import shutil

import pytest

from slowfast_kernels import io
from slowfast_kernels.__main__ import main
from _cli_corpus import by_video, json_lines, small_checkpoint

pytest.importorskip("av")

FAST = ["--size", "32", "--crop", "32", "--train-crop", "32", "--device", "cpu", "--dtype", "float32",
        "--no-progress", "--batch-size", "2", "--backend", "reference"]  # what is resumed, not the kernels


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    (root / "videos").mkdir()
    good = [io.write_video(root / "videos" / f"v{i}.mp4", io.synthetic_video(20, 32, 48, seed=i)) for i in range(2)]
    _, ckpt = small_checkpoint(root / "ckpt.pyth")
    return root, good, ckpt


def _classify(argv, capsys):
    status = main(["classify", *FAST, *argv])  # argv last: its options win over FAST's
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_a_rerun_with_other_settings_is_refused_unless_overwrite(clips, capsys, tmp_path):
    root, good, ckpt = clips
    out = tmp_path / "results.jsonl"
    videos = [str(p) for p in good]
    status, _, _ = _classify([*videos, "--output", str(out)], capsys)  # random weights, --top 5
    assert status == 0
    before = out.read_bytes()
    records = json_lines(before.decode())
    assert all(r["settings"] == records[0]["settings"] for r in records)
    assert records[0]["settings"]["checkpoint"] is None and records[0]["settings"]["top"] == 5
    for extra, named in [(["--top", "3"], "--top 5 there, 3 now"),
                         (["--views", "30"], "--views 1 there, 30 now"),
                         (["--arch", "slow_r50_8x8"], "--arch slowfast_r50_8x8 there, slow_r50_8x8 now"),
                         (["--checkpoint", str(ckpt)], "--checkpoint random weights there, (a file of"),
                         (["--dtype", "bfloat16"], "--dtype float32 there, bfloat16 now")]:
        status, _, err = _classify([*videos, "--output", str(out), *extra], capsys)
        line = _error_line(err)
        assert status == 2 and f"--output {out}: 2 of its 2 records were made with other settings" in line, err
        assert named in line and "--overwrite" in line, line
    assert out.read_bytes() == before  # refused before anything was written
    # --overwrite starts over: only the new run's records, with the new settings
    status, _, err = _classify([*videos, "--output", str(out), "--top", "3", "--overwrite"], capsys)
    assert status == 0 and "started over" in err
    records = json_lines(out.read_text())
    assert len(records) == 2 and all(len(r["top"]) == 3 and r["settings"]["top"] == 3 for r in records)


def test_a_moved_checkpoint_and_another_spelling_of_the_paths_resume(clips, capsys, tmp_path, monkeypatch):
    root, good, ckpt = clips
    out = tmp_path / "results.jsonl"
    assert _classify([str(good[0]), "--checkpoint", str(ckpt), "--output", str(out)], capsys)[0] == 0
    moved = shutil.copy(ckpt, tmp_path / "elsewhere.pyth")  # the same bytes under another name: the same weights
    before = out.read_bytes()
    # From inside the folder, the first video spelled relative to it, the second absolute: the first is done.
    monkeypatch.chdir(root / "videos")
    status, _, err = _classify([os.path.join("..", "videos", good[0].name), str(good[1]), "--checkpoint", str(moved),
                                "--output", str(out)], capsys)
    assert status == 0 and "resuming: 1 of 2 videos" in err, err
    after = out.read_bytes()
    assert after.startswith(before)
    records = by_video(json_lines(after.decode()))  # each video once
    assert sorted(r["resolved"] for r in records.values()) == sorted(os.path.realpath(p) for p in good)
    assert json.loads(before)["video"] == str(good[0])  # the path as it was spelled is kept


def test_retry_failed_replaces_the_error_lines(clips, capsys, tmp_path):
    root, good, ckpt = clips
    broken = tmp_path / "later.mp4"
    broken.write_text("not a video yet\n")
    out = tmp_path / "results.jsonl"
    args = [str(good[0]), str(broken), "--output", str(out)]
    assert _classify(args, capsys)[0] == 3
    io.write_video(broken, io.synthetic_video(20, 32, 48, seed=7))  # the file is repaired
    status, _, err = _classify(args, capsys)
    assert status == 3 and "resuming: 2 of 2" in err  # a plain rerun keeps the error line
    good_line = next(line for line in out.read_text().splitlines() if str(good[0]) in line)
    status, _, err = _classify([*args, "--retry-failed"], capsys)
    assert status == 0 and "1 failed ones run again" in err, err
    lines = out.read_text().splitlines()
    records = by_video(json_lines(out.read_text()))
    assert len(lines) == 2 and lines[0] == good_line  # the good line untouched, the error line replaced
    assert "top" in records[str(broken)] and "error" not in records[str(broken)]


def test_output_dash_is_stdout_a_directory_is_refused_and_list_entries_are_relative_to_the_list(
        clips, capsys, tmp_path, monkeypatch):
    root, good, ckpt = clips
    listing = root / "videos" / "list.txt"
    listing.write_text(f"# relative to this file's folder\n{good[1].name}\n{good[0]}\n")
    monkeypatch.chdir(tmp_path)  # another folder: neither "-" nor the list's entries are read against it
    status, out, err = _classify(["@" + str(listing), "--output", "-"], capsys)
    assert status == 0 and not (tmp_path / "-").exists(), err
    assert [r["video"] for r in json_lines(out)] == [str(good[1]), str(good[0])]
    status, _, err = _classify([str(good[0]), "--output", str(tmp_path)], capsys)
    assert status == 2 and f"--output {tmp_path}: is a directory" in _error_line(err)
    status, _, err = _classify([str(good[0]), "--overwrite"], capsys)
    assert status == 2 and "--overwrite: needs --output FILE" in _error_line(err)
