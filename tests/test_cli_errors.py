"""The command line's errors as a user meets them: one line naming the option, exit status 2 for bad options
(before any model is built), 3 when videos failed, 1 otherwise; --debug / SLOWFAST_KERNELS_DEBUG=1 show the
traceback. Every case runs through main([...]) in this process and through `python -m slowfast_kernels`."""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slowfast_kernels as sk
import slowfast_reference as R
from slowfast_kernels import io
from slowfast_kernels.cli import build_parser, options
from slowfast_kernels.__main__ import main
from _checkpoint_fixtures import NotAWeight, randomize

pytest.importorskip("av")

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--dtype", "float32", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_errors")
    video = io.write_video(d / "clip.mp4", io.synthetic_video(24, 64, 80))
    (d / "empty").mkdir()
    slow = randomize(R.slow_r50_8x8(num_classes=5)).eval()
    good = d / "slow.pyth"
    torch.save({"model_state": sk.checkpoints.export_state_dict(slow, "pyslowfast")}, good)
    cut = d / "cut.pyth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    trained = d / "training_state.pyth"  # a checkpoint with Python objects beside the weights
    torch.save({"model_state": sk.checkpoints.export_state_dict(slow, "pyslowfast"), "logger": NotAWeight(3)},
               trained)
    # R101 weights (half precision: half the file, the same keys and shapes)
    r101 = R.slowfast_r101_8x8(num_classes=400)
    state = {k: v.half() if v.is_floating_point() else v
             for k, v in sk.checkpoints.export_state_dict(r101, "pyslowfast").items()}
    r101_path = d / "SLOWFAST_8x8_R101.pyth"
    torch.save({"model_state": state}, r101_path)
    labels = d / "labels.txt"
    labels.write_text("a\nb\n")
    return dict(video=str(video), empty=str(d / "empty"), good=str(good), cut=str(cut), trained=str(trained),
                r101=str(r101_path), labels=str(labels), dir=str(d))


CUDA_BUILD = torch.version.cuda is not None
CASES = {
    # name: (argv with {placeholders}, exit status, stderr pattern)
    "empty directory": (["classify", "{empty}"], 2, r"{empty}: a directory without video files"),
    "missing video": (["classify", "{dir}/nope.mp4"], 2, r"{dir}/nope\.mp4: no such file or directory"),
    "top 500": (["classify", "{video}", "--top", "500"], 2, r"--top 500: must be between 1 and 400"),
    "top -1": (["classify", "{video}", "--top", "-1"], 2, r"--top -1: must be between 1 and 400"),
    "top 0": (["classify", "{video}", "--top", "0"], 2, r"--top 0: must be between 1 and 400"),
    "top above the checkpoint's classes": (["classify", "{video}", "--checkpoint", "{good}", "--top", "6"], 2,
                                           r"--top 6: must be between 1 and 5"),
    "size 0": (["classify", "{video}", "--size", "0"], 2, r"argument --size: expected a positive integer, got 0"),
    "crop 300": (["classify", "{video}", "--crop", "300"], 2,
                 r"--crop 300: larger than the 256x320 frame after resizing \(--size 256\)"),
    "train crop": (["classify", "{video}", "--train-crop", "100"], 2, r"--train-crop 100: must be a multiple of 32"),
    "batch size 0": (["classify", "{video}", "--batch-size", "0"], 2, r"argument --batch-size: expected a positive"),
    "views 5": (["classify", "{video}", "--views", "5"], 2, r"argument --views: invalid choice"),
    "bad device": (["classify", "{video}", "--device", "gpu0"], 2, r"--device gpu0: not a device"),
    "missing checkpoint": (["classify", "{video}", "--checkpoint", "{dir}/nope.pyth"], 2,
                           r"--checkpoint {dir}/nope\.pyth: no such file"),
    "wrong labels": (["classify", "{video}", "--labels", "{labels}"], 2,
                     r"--labels {labels}: 2 names, the model has 400 classes"),
    "R101 weights, --arch R50": (["classify", "{video}", "--checkpoint", "{r101}", "--arch", "slowfast_r50_8x8"], 2,
                                 r"--arch slowfast_r50_8x8: the checkpoint {r101} holds slowfast_r101_8x8 "
                                 r"\(pyslowfast layout, 400 classes\)"),
    "truncated checkpoint": (["classify", "{video}", "--checkpoint", "{cut}"], 1,
                             r"truncated or corrupt checkpoint file {cut} "),
    "untrusted checkpoint": (["classify", "{video}", "--checkpoint", "{trained}"], 1, r"pass --trust-checkpoint"),
}
if not torch.cuda.is_available():
    CASES["device cuda without CUDA"] = (
        ["classify", "{video}", "--device", "cuda"], 2,
        r"--device cuda: this PyTorch build .* has no CUDA support" if not CUDA_BUILD else r"--device cuda: no CUDA GPU")


# The cases also run as a user runs them (a subprocess each, ~4 s of imports); the others share
# their code path with one of these and run in this process only, to keep the file fast.
SUBPROCESS_CASES = sorted(name for name in CASES if name not in (
    "top -1", "top 0", "top above the checkpoint's classes", "train crop", "batch size 0", "views 5",
    "bad device", "wrong labels"))


def _fill(items, files):
    argv = [item.format(**files) for item in items]
    return argv + CPU + ([] if "--device" in argv else ["--device", "cpu"])


def _pattern(pattern, files):
    return pattern.format(**{k: re.escape(v) for k, v in files.items()})


def _env(**extra):
    env = dict(os.environ)
    env.pop("SLOWFAST_KERNELS_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "python"), str(ROOT / "tests"),
                                         env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _check_stderr(err, status, expected_status, pattern):
    lines = [line for line in err.splitlines() if line.strip() and "random weights" not in line]
    assert status == expected_status, err
    # one line; the architecture mismatch adds a second one saying what to pass instead
    allowed = 2 if "--arch" in pattern else 1
    assert 1 <= len(lines) <= allowed, f"expected {allowed} line(s), got:\n{err}"
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_through_main(name, files, capsys, monkeypatch):
    argv, expected, pattern = CASES[name]
    if expected == 2:  # bad options are found before any model is built
        def no_model(*args, **kwargs):
            raise AssertionError("a model was built before the options were checked")
        monkeypatch.setattr(options.ModelSource, "build", no_model)
    status = main(_fill(argv, files))
    _check_stderr(capsys.readouterr().err, status, expected, _pattern(pattern, files))


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_error_through_a_subprocess(name, files):
    argv, expected, pattern = CASES[name]
    run = subprocess.run([sys.executable, "-m", "slowfast_kernels", *_fill(argv, files)], env=_env(),
                         capture_output=True, text=True, timeout=300)
    _check_stderr(run.stderr, run.returncode, expected, _pattern(pattern, files))


def test_arch_mismatch_lists_the_keys_only_under_debug(files, capsys):
    argv = _fill(["classify", "{video}", "--checkpoint", "{r101}", "--arch", "slowfast_r50_8x8"], files)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) <= 3 and "pass --arch slowfast_r101_8x8" in err
    assert "s4.pathway0_res22" not in err
    assert main(argv + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "s4.pathway0_res22.branch2.c_bn.weight" in err and "unexpected" in err


def test_debug_shows_the_traceback(files, capsys, monkeypatch):
    argv = _fill(["classify", "{video}", "--checkpoint", "{cut}"], files)
    assert main(argv + ["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "CheckpointError" in err
    monkeypatch.setenv("SLOWFAST_KERNELS_DEBUG", "1")
    assert main(argv) == 1
    assert "Traceback" in capsys.readouterr().err
    run = subprocess.run([sys.executable, "-m", "slowfast_kernels", *argv], env=_env(SLOWFAST_KERNELS_DEBUG="1"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" in run.stderr and "truncated or corrupt checkpoint" in run.stderr


def test_trusted_checkpoint_and_auto_arch(files, capsys):
    status = main(_fill(["classify", "{video}", "--checkpoint", "{trained}", "--trust-checkpoint",
                         "--size", "32", "--crop", "32", "--top", "3"], files))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "slow_r50_8x8 (pyslowfast layout, 5 classes)" in captured.err  # --arch auto, printed
    assert '"arch": "slow_r50_8x8"' in captured.out and '"class_' in captured.out


def test_every_option_has_help_and_each_command_is_listed_once(capsys):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "classify", "bench", "backends"):
        assert len(re.findall(rf"^\s+{command}\s", out, flags=re.M)) == 1, out
    assert "{demo" not in out
