"""classify over a corpus: directories and @lists, JSON lines, error lines and exit status 3, resuming
after lost lines and after a kill, and torchrun with 2 gloo processes equal to one process."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slowfast_kernels import io
from slowfast_kernels.__main__ import main
from _cli_corpus import by_video, json_lines, make_corpus, small_checkpoint

pytest.importorskip("av")

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--size", "32", "--crop", "32", "--train-crop", "32", "--device", "cpu", "--dtype", "float32",
        "--no-progress"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "python"), str(ROOT / "tests"),
                                         env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    videos = make_corpus(root / "videos")
    _, ckpt = small_checkpoint(root / "ckpt.pyth")
    return root, videos, ckpt


def _classify(argv, capsys):
    status = main(["classify", *argv, *FAST])
    captured = capsys.readouterr()
    return status, json_lines(captured.out), captured.err


def test_directory_and_list_inputs(corpus, capsys, tmp_path):
    root, videos, ckpt = corpus
    status, records, err = _classify([str(root / "videos"), "--checkpoint", str(ckpt), "--batch-size", "3"], capsys)
    assert status == 3  # two files failed, the others were classified
    got = by_video(records)
    listed = {str(p) for p in videos["good"] + videos["bad"]}
    assert set(got) == listed  # readme.txt is not a video extension
    for path in videos["good"]:
        r = got[str(path)]
        assert set(r) == {"video", "resolved", "top", "views", "arch", "checkpoint", "seconds", "settings", "preset",
                          "clips", "crops", "ensemble"}
        assert r["resolved"] == os.path.realpath(path) and r["settings"]["arch"] == "slowfast_r50_8x8"
        assert r["views"] == 1 and r["arch"] == "slowfast_r50_8x8" and r["checkpoint"] == str(ckpt)
        assert len(r["top"]) == 5 and all(isinstance(label, str) for label, _ in r["top"])
        probs = [p for _, p in r["top"]]
        assert probs == sorted(probs, reverse=True) and r["seconds"] > 0
    for path in videos["bad"]:
        assert set(got[str(path)]) == {"video", "resolved", "error", "settings"}
        assert path.name in got[str(path)]["error"]
    assert "slowfast_r50_8x8 (pyslowfast layout, 400 classes)" in err  # --arch auto, said once
    # The same videos through a list file (comments, blank lines, a repeat): the same scores.
    listing = tmp_path / "videos.txt"
    good = [str(p) for p in videos["good"][:3]]
    listing.write_text("# three videos\n" + "\n".join(good) + "\n\n" + good[0] + "\n")
    status, records, _ = _classify(["@" + str(listing), "--checkpoint", str(ckpt)], capsys)
    assert status == 0 and [r["video"] for r in records] == good
    for r in records:
        assert [label for label, _ in r["top"]] == [label for label, _ in got[r["video"]]["top"]]
        torch.testing.assert_close([p for _, p in r["top"]], [p for _, p in got[r["video"]]["top"]],
                                   atol=1e-5, rtol=0)
    # A list may name anything: a missing file and a directory are error lines of their own, the run goes on.
    listing.write_text(f"{tmp_path / 'gone.mp4'}\n{root / 'videos' / 'b'}\n{good[1]}\n")
    status, records, _ = _classify(["@" + str(listing), "--checkpoint", str(ckpt)], capsys)
    got = by_video(records)
    assert status == 3 and "top" in got[good[1]]
    assert "no such file" in got[str(tmp_path / "gone.mp4")]["error"]
    assert "is a directory" in got[str(root / "videos" / "b")]["error"]


def test_resume_after_lost_lines_and_a_cut_last_line(corpus, capsys, tmp_path):
    root, videos, ckpt = corpus
    out = tmp_path / "results.jsonl"
    args = [str(root / "videos"), "--checkpoint", str(ckpt), "--output", str(out)]
    status, stdout, _ = _classify(args, capsys)
    assert status == 3 and stdout == []  # the lines went to the file
    first = out.read_text().splitlines()
    assert len(first) == 7
    # Lose two lines, and leave a half-written one (a kill in the middle of a write).
    kept = first[1:3] + first[4:]
    out.write_text("\n".join(kept) + "\n" + first[0][: len(first[0]) // 2])
    status, _, err = _classify(args, capsys)
    assert status == 3 and "resuming: 5 of 7 videos" in err
    lines = out.read_text().splitlines()
    assert lines[: len(kept)] == kept  # kept lines untouched (their "seconds" too: not redone)
    assert sorted(json.loads(x)["video"] for x in lines) == sorted(json.loads(x)["video"] for x in first)
    by_video([json.loads(x) for x in lines])  # each video once
    # Everything done: a third run classifies nothing and changes nothing.
    before = out.read_bytes()
    status, _, err = _classify(args, capsys)
    assert status == 3 and out.read_bytes() == before and "resuming: 7 of 7" in err


def _run_process_group(cmd, timeout):
    """subprocess.run in a session of its own: on timeout the whole group goes (torchrun's workers too, which
    would otherwise outlive a killed agent, blocked on its store)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} ... did not finish in {timeout} s: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_resume_after_a_kill(corpus, capsys, tmp_path):
    root, _, ckpt = corpus
    clips = tmp_path / "many"
    clips.mkdir()
    for i in range(12):
        io.write_video(clips / f"v{i:02d}.mp4", io.synthetic_video(20, 32, 48, seed=i))
    out = tmp_path / "killed.jsonl"
    cmd = [sys.executable, "-m", "slowfast_kernels", "classify", str(clips), "--checkpoint", str(ckpt),
           "--output", str(out), "--batch-size", "1", "--workers", "1", *FAST]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_bytes()
    done_before = before.count(b"\n")
    assert 2 <= done_before < 12
    status, _, err = _classify([str(clips), "--checkpoint", str(ckpt), "--output", str(out)], capsys)
    assert status == 0 and f"resuming: {done_before} of 12" in err
    after = out.read_bytes()
    assert after.startswith(before[: before.rfind(b"\n") + 1])
    records = by_video(json_lines(after.decode()))  # no video twice
    assert sorted(records) == sorted(str(p) for p in clips.glob("*.mp4"))  # none missing


def test_torchrun_two_gloo_processes_equal_one_process(corpus, capsys, tmp_path):
    """`python -m slowfast_kernels torchrun` (torchrun's launcher with the command's status): the lines equal one
    process's, a run with failed videos exits 3 without torchrun's ChildFailedError traceback, and rank 0's
    progress bar counts every rank's videos."""
    root, videos, ckpt = corpus
    single = tmp_path / "single.jsonl"
    status, _, _ = _classify([str(root / "videos"), "--checkpoint", str(ckpt), "--output", str(single)], capsys)
    assert status == 3
    multi = tmp_path / "multi.jsonl"
    cmd = [sys.executable, "-m", "slowfast_kernels", "torchrun", "--standalone", "--nproc-per-node", "2",
           "classify", str(root / "videos"), "--checkpoint", str(ckpt), "--output", str(multi),
           *[a for a in FAST if a != "--no-progress"]]
    run = _run_process_group(cmd, timeout=300)
    assert run.returncode == 3, run.stderr[-3000:]  # two videos failed, as in one process
    assert "Traceback" not in run.stderr and "ChildFailedError" not in run.stderr, run.stderr[-3000:]
    assert "7 videos in" in run.stderr and "2 failed to decode" in run.stderr
    # one bar, rank 0's, over the whole corpus (each rank classifies 3 or 4 of the 7)
    totals = set(re.findall(r"\d+/(\d+) \[", run.stderr))
    assert totals == {"7"} and "7/7 [" in run.stderr and "classify (2 ranks)" in run.stderr, run.stderr[-3000:]
    assert not list(tmp_path.glob("multi.jsonl.part-*"))  # merged and removed
    one, two = by_video(json_lines(single.read_text())), by_video(json_lines(multi.read_text()))
    assert set(one) == set(two) and len(two) == 7
    for video, r in one.items():
        s = two[video]
        assert s.keys() == r.keys()
        assert {k: v for k, v in s.items() if k not in ("top", "seconds")} == \
            {k: v for k, v in r.items() if k not in ("top", "seconds")}
        if "top" in r:
            assert [label for label, _ in s["top"]] == [label for label, _ in r["top"]]
            torch.testing.assert_close([p for _, p in s["top"]], [p for _, p in r["top"]], atol=1e-5, rtol=0)


def test_resume_from_the_part_files_of_a_killed_torchrun(corpus, capsys, tmp_path):
    """A torchrun killed before its merge leaves OUTPUT.part-RANK files: the next run (any number of
    processes) counts their videos as done, merges them into OUTPUT and removes them."""
    root, videos, ckpt = corpus
    out = tmp_path / "results.jsonl"
    args = [str(root / "videos"), "--checkpoint", str(ckpt), "--output", str(out)]
    assert _classify(args, capsys)[0] == 3
    full = out.read_text().splitlines()
    out.write_text("\n".join(full[:2]) + "\n")
    # part-0: a line also in OUTPUT (killed during a merge), a new one, a cut-off one; part-3: from a wider run
    (tmp_path / "results.jsonl.part-0").write_text(full[1] + "\n" + full[2] + "\n" + full[3][:20])
    (tmp_path / "results.jsonl.part-3").write_text(full[4] + "\n")
    status, _, err = _classify(args, capsys)
    assert status == 3 and "resuming: 4 of 7 videos" in err
    assert not list(tmp_path.glob("results.jsonl.part-*"))
    lines = out.read_text().splitlines()
    assert lines[:2] == full[:2]  # OUTPUT's lines stay; this run's and the parts' lines follow
    assert full[2] in lines and full[4] in lines  # the parts' lines, merged as they were
    assert sorted(by_video(json_lines(out.read_text()))) == sorted(r["video"] for r in json_lines("\n".join(full)))
