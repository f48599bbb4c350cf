"""The command line's rough edges: symlink loops in a classify directory, `backends | head` (a closed stdout),
what --views 1 takes, and what a record's "seconds" measures."""
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import slowfast_kernels as sk
from slowfast_kernels import io
from slowfast_kernels.__main__ import main
from slowfast_kernels.cli import build_parser, classify
from _cli_corpus import json_lines

pytest.importorskip("av")

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "python"), env.get("PYTHONPATH", "")])
    return env


def test_symlink_loops_are_walked_once(tmp_path):
    """`self -> .` and `inner/up -> ..` made the walk list one video 41 times and, together, run for more than
    10 minutes; it runs in a subprocess so that such a walk fails the test instead of hanging it."""
    root = tmp_path / "videos"
    (root / "inner").mkdir(parents=True)
    for path in (root / "a.mp4", root / "inner" / "b.mp4"):
        path.write_bytes(b"listed, not decoded")
    os.symlink(".", root / "self")
    os.symlink("..", root / "inner" / "up")
    os.symlink("inner", root / "alias")         # a second path to a folder: its files once, by their own path
    os.symlink("a.mp4", root / "link.mp4")      # a second path to a file
    script = textwrap.dedent(f"""
        from slowfast_kernels.cli.corpus import expand_inputs
        for path in expand_inputs([{str(root)!r}]):
            print(path)
    """)
    run = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [str(root / "a.mp4"), str(root / "inner" / "b.mp4")]
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "skipped 3 symlinked folder(s) already searched" in warnings[0], run.stderr
    for skipped in ("self", "alias", os.path.join("inner", "up")):
        assert str(root / skipped) in warnings[0]


def test_a_closed_stdout_ends_quietly():
    """`python -m slowfast_kernels backends | head -2`: the reader is gone before the first line is written."""
    proc = subprocess.Popen([sys.executable, "-m", "slowfast_kernels", "backends"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child has imported torch, so its first write meets a closed pipe
    _, err = proc.communicate(timeout=120)
    assert err == "" and proc.returncode == 141  # 128 + SIGPIPE, as coreutils' tools end in a pipe


def test_views_1_help_says_which_clip_it_takes():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    views = next(a for a in sub.choices["classify"]._actions if a.dest == "views")
    assert "clip 0 of 1" in views.help and "centre clip" not in views.help  # read_video(clip_idx=0, num_clips=1)


class _ThreadClock:
    """time.perf_counter for classify, per thread, moving only when a test says so."""

    def __init__(self):
        self._local = threading.local()

    def perf_counter(self):
        return getattr(self._local, "now", 0.0)

    def advance(self, seconds):
        self._local.now = self.perf_counter() + seconds


def test_seconds_is_the_videos_own_time_not_its_wait(tmp_path, monkeypatch, capsys):
    """Four videos decoded ahead, then one forward each, the forward taking 10 s of a clock that nothing else
    moves: each video's "seconds" is its own forward (10), not the forwards it waited for (10, 20, 30, 40)."""
    videos = [str(io.write_video(tmp_path / f"v{i}.mp4", io.synthetic_video(20, 32, 48, seed=i))) for i in range(4)]
    clock = _ThreadClock()
    real_fuse = sk.fuse

    def fuse_with_a_10_s_forward(*args, **kwargs):
        fused = real_fuse(*args, **kwargs)

        def forward(inputs):
            clock.advance(10.0)
            return fused(inputs)
        return forward

    monkeypatch.setattr(sk, "fuse", fuse_with_a_10_s_forward)
    monkeypatch.setattr(classify, "time", clock)
    monkeypatch.setattr(classify.clips, "time", clock)  # the decode threads' clock: never advanced
    status = main(["classify", *videos, "--size", "32", "--crop", "32", "--train-crop", "32", "--device", "cpu",
                   "--dtype", "float32", "--no-progress", "--backend", "reference", "--batch-size", "1",
                   "--workers", "2"])
    records = json_lines(capsys.readouterr().out)
    assert status == 0 and [r["video"] for r in records] == videos
    assert [r["seconds"] for r in records] == [10.0] * 4
