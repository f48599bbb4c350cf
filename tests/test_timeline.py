"""classify's timelines (cli/timeline.py): sliding windows over a file (--window / --stride) and over a live
stream (stdin, a TCP socket), each frame decoded once, the frame map bounded by the window, resume."""
import json
import math
import socket
import subprocess
import sys
import time

import pytest
import torch

import slowfast_kernels as sk
import slowfast_reference as R
from slowfast_kernels import _decode, io
from slowfast_kernels.__main__ import main
from slowfast_kernels.cli import timeline
from slowfast_kernels.cli.corpus import expand_inputs
from _checkpoint_fixtures import randomize
from _cli_corpus import json_lines

av = pytest.importorskip("av")

TINY = ["--size", "32", "--crop", "32", "--device", "cpu", "--dtype", "float32", "--arch", "slow_r50_8x8",
        "--top", "2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timeline")
    five_s = io.write_video(folder / "five_s.mp4", io.synthetic_video(40, 48, 64, seed=1), fps=8)  # 5 s at 8 fps
    short = io.write_video(folder / "short.mp4", io.synthetic_video(12, 48, 64, seed=2), fps=8)   # 1.5 s
    return five_s, short


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    """10 minutes at 4 fps, 32x32: 2400 frames (a long video made cheap)."""
    return io.write_video(tmp_path_factory.mktemp("long") / "ten_minutes.mp4", io.synthetic_video(2400, 32, 32), fps=4)


# ----------------------------------------------------------------------------------------------- windows

def test_window_spans_and_seconds():
    w = timeline.Windows(8, 2.0, 1.0, 8, total=40)  # 5 s: windows start at 0, 1, 2, 3 s (the last ends at 5)
    assert w.count == 4 and [w.span(k) for k in range(4)] == [(0, 16), (8, 24), (16, 32), (24, 40)]
    assert [w.seconds(k) for k in range(4)] == [(0, 2), (1, 3), (2, 4), (3, 5)]
    # PyTorchVideo's UniformTemporalSubsample over the window's 16 frames
    assert w.indices(1).tolist() == (8 + torch.linspace(0, 15, 8).long()).tolist()
    assert timeline.Windows(8, 2.0, 1.0, 8, total=39).count == 3  # window 3 would need frame 39
    assert timeline.Windows(30, 0.1, 0.1, 4, total=30).span(3) == (9, 12)  # 0.3 s x 30 fps is frame 9, not 10
    gaps = timeline.Windows(10, 1.0, 3.0, 4, total=100)  # stride > window: frames between windows unused
    assert gaps.count == 4 and gaps.span(3) == (90, 100)
    whole = timeline.Windows(8, 2.0, 1.0, 8, total=12)  # shorter than a window: one window of every frame
    assert whole.count == 1 and whole.span(0) == (0, 12) and whole.seconds(0) == (0, 1.5)
    live = timeline.Windows(8, 2.0, 0.5, 8)
    assert live.count is None and live.has(10 ** 6) and live.bound() == 4 * 8


def test_streams_pass_through_the_inputs(tmp_path):
    urls = ["-", "rtsp://camera.local/stream", "udp://127.0.0.1:1234", "tcp://127.0.0.1:9?listen=1"]
    assert expand_inputs(urls) == urls
    assert not _decode.is_stream(str(tmp_path / "a.mp4")) and not _decode.is_stream("file:///a.mp4")


def _assemble(path, windows_for):
    """Run the decoding side alone: every frame number delivered, the windows, the assembler."""
    source = _decode.open_in_order(path)
    windows = windows_for(source.fps, source.num_frames)
    assembler, delivered, clips = timeline.Assembler(windows), [], []
    try:
        for number, frame in source.frames(0, False):
            delivered.append(number)
            clips.extend(assembler.feed(number, frame))
            if assembler.finished:
                break
    finally:
        source.close()
    return windows, assembler, delivered, clips


@pytest.mark.parametrize("window,stride", [(None, None), (4.0, 1.0)])
def test_ten_minutes_decoded_once_in_a_bounded_frame_map(ten_minutes, window, stride):
    t, rate = 8, 8  # slow_r50_8x8: 8 frames, sampling rate 8 -> default window 64 / 30 s
    window = window or timeline.default_window(t, rate, 30)
    stride = stride or window
    windows, assembler, delivered, clips = _assemble(
        ten_minutes, lambda fps, total: timeline.Windows(fps, window, stride, t, total))
    # each frame decoded once, in order, none after the last window's last frame
    assert delivered == list(range(len(delivered))) and delivered[-1] == windows.span(windows.count - 1)[1] - 1
    assert len(delivered) <= 2400 and windows.count == int((600 - window) / stride + 1e-9) + 1
    assert [c.k for c in clips] == list(range(windows.count))
    sampled = {n for k in range(windows.count) for n in windows.indices(k).tolist()}
    assert assembler.converted == len(sampled)  # each sampled frame converted to RGB once
    # the frame map is bounded by the window, not by the 2400 frames
    assert assembler.peak <= windows.bound() == math.ceil(window / stride - 1e-9) * t
    assert not assembler.held
    # a window's clip is what io.read_video decodes for the same frame numbers
    for k in (0, windows.count // 2, windows.count - 1):
        ref = io.read_video(ten_minutes, frame_index=lambda v, fps, k=k: windows.indices(k))
        clip = clips[k]
        assert torch.equal(clip.frames[clip.index], ref.frames[ref.index])
        assert clip.numbers[clip.index].tolist() == windows.indices(k).tolist()


# ----------------------------------------------------------------------------------------------- files

def _checkpoint(tmp_path):
    model = randomize(R.build_model("slow_r50_8x8", train_crop=32)).eval()
    with torch.no_grad():  # logits of order 1: the per-position softmax is not one-hot
        model.blocks[-1].proj.weight.mul_(1e-3)
    path = tmp_path / "slow.pyth"
    torch.save({"model_state": sk.checkpoints.export_state_dict(model, "pyslowfast")}, path)
    return model, path


def test_timeline_matches_the_reference_and_resumes(videos, tmp_path, capsys):
    five_s, short = videos
    model, ckpt = _checkpoint(tmp_path)
    out = tmp_path / "timeline.jsonl"
    args = ["classify", str(five_s), str(short), "--window", "2", "--stride", "1", "--checkpoint", str(ckpt),
            "--size", "32", "--crop", "32", "--train-crop", "32", "--device", "cpu", "--dtype", "float32",
            "--batch-size", "1", "--output", str(out), "--no-progress"]
    assert main(args) == 0
    lines = json_lines(out.read_text())
    by_video = {str(v): [r for r in lines if r["video"] == str(v)] for v in (five_s, short)}
    a, b = by_video[str(five_s)], by_video[str(short)]
    assert [(r["window"], r["start"], r["end"]) for r in a[:-1]] == [(0, 0, 2), (1, 1, 3), (2, 2, 4), (3, 3, 5)]
    assert timeline.is_end_line(a[-1]) and a[-1]["windows"] == 4 and a[-1]["frames"] == 40
    assert [(r["window"], r["start"], r["end"]) for r in b[:-1]] == [(0, 0, 1.5)] and b[-1]["windows"] == 1
    # each window's probabilities: the reference model on io.read_video's frames of the window
    reference = R.build_model("slow_r50_8x8", head_act="softmax", train_crop=32).eval()
    reference.load_state_dict(model.state_dict())
    labels = io.kinetics_400_labels()
    for path, records in ((five_s, a), (short, b)):
        windows = timeline.Windows(8, 2.0, 1.0, 8, total=io.probe_video(path).num_frames)
        for r in records[:-1]:
            clip = io.read_video(path, frame_index=lambda v, fps, k=r["window"]: windows.indices(k))
            _, fast = sk.pack_pathways_ref(clip.frames, clip.index, 1, size=32, crop=32, spatial_idx=1)
            with torch.no_grad():
                probs = reference([fast[None]])[0]
            top = probs.topk(5)
            assert [n for n, _ in r["top"]] == [labels[i] for i in top.indices.tolist()]
            torch.testing.assert_close(torch.tensor([p for _, p in r["top"]]), top.values, atol=1e-4, rtol=0)
    capsys.readouterr()

    # a run stopped inside the second timeline: its end line and a window line lost; the first is complete
    partial = [json.dumps(r) for r in a] + [json.dumps(b[0])]  # the second's window line, not its end line
    out.write_text("\n".join(partial) + "\n" + json.dumps(b[-1])[:-10])  # and a cut-off last line
    assert main(args) == 0
    assert "1 of 2 timelines already complete" in capsys.readouterr().err
    again = json_lines(out.read_text())
    assert again[:len(a)] == a  # the complete one untouched
    redone = [r for r in again if r["video"] == str(short)]  # the partial one redone once, no duplicate line
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in redone] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in b]

    # complete: nothing to do (no model built); other settings refused
    assert main(args) == 0 and json_lines(out.read_text()) == again
    assert "2 of 2 timelines already complete" in capsys.readouterr().err
    assert main([*args[:6], "2", *args[7:]]) == 2  # --stride 2
    err = capsys.readouterr().err
    assert "--stride 1.0 there, 2.0 now" in err and err.count("\n") == 1



def test_timeline_features_match_the_reference(videos, tmp_path, capsys):
    """--features in a timeline: one [crops, D] array per window, key VIDEO@k, equal to the reference model's
    features of the window's crops; --features-only writes the same arrays and lines without "top"."""
    import numpy as np

    five_s, _ = videos
    model, ckpt = _checkpoint(tmp_path)
    common = ["classify", str(five_s), "--window", "2", "--stride", "1.5", "--crops", "3", "--checkpoint", str(ckpt),
              "--size", "32", "--crop", "32", "--train-crop", "32", "--device", "cpu", "--dtype", "float32",
              "--batch-size", "2", "--no-progress"]  # 3 crops in batches of 2: a window's rows span batches
    assert main([*common, "--features", str(tmp_path / "f.npz"), "--output", str(tmp_path / "a.jsonl")]) == 0
    assert main([*common, "--features", str(tmp_path / "g.npz"), "--features-only"]) == 0
    lines = json_lines(capsys.readouterr().out)
    windows = [r for r in json_lines((tmp_path / "a.jsonl").read_text()) if "window" in r]
    assert [r["window"] for r in windows] == [0, 1, 2] == [r["window"] for r in lines if "window" in r]
    assert all("top" not in r and r["features"] == w["features"] for r, w in zip(lines, windows))
    reference = R.build_model("slow_r50_8x8", train_crop=32).eval()
    reference.load_state_dict(model.state_dict())
    spans = timeline.Windows(8, 2.0, 1.5, 8, total=40)
    with np.load(tmp_path / "f.npz") as f, np.load(tmp_path / "g.npz") as g:
        assert f["view_index"].tolist() == [[0, 0], [0, 1], [0, 2]]
        for r in windows:
            assert r["features"] == f"{five_s.resolve()}@{r['window']}"
            clip = io.read_video(five_s, frame_index=lambda v, fps, k=r["window"]: spans.indices(k))
            with torch.no_grad():
                expected = torch.cat([reference.features([sk.pack_pathways_ref(
                    clip.frames, clip.index, 1, size=32, crop=32, spatial_idx=s)[1][None]])["concat"]
                    for s in range(3)])
            got = torch.from_numpy(f[r["features"]])
            assert got.shape == (3, 2048)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
            np.testing.assert_array_equal(g[r["features"]], f[r["features"]])


BAD = [
    (["--window", "0"], "argument --window: expected a positive number of seconds, got 0"),
    (["--window", "nan"], "argument --window: expected a positive number of seconds, got nan"),
    (["--stride", "1"], "--stride 1: needs --window SEC"),
    (["--window", "2", "--views", "30"], "--views 30: a timeline scores one clip per window"),
    (["--window", "2", "--clips", "3"], "--clips 3: a timeline scores one clip per window"),
    (["--window", "2", "--sampling", "mmaction2"], "--sampling mmaction2: a window's frames are sampled uniformly"),
    (["--window", "2", "--ground-truth", "gt.csv"], "--ground-truth: scores one prediction per video"),
    (["--window", "2", "--features-only"], "--features-only: needs --features FILE.npz"),
    (["-"], "-: a stream must be the only input (got 2 inputs)"),
    (["--window", "2", "--overwrite"], "--overwrite: needs --output FILE"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_timeline_options_are_one_line(videos, capsys, extra, message):
    assert main(["classify", str(videos[0]), *extra, *TINY]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_stream_is_not_resumed(tmp_path, capsys):
    out = tmp_path / "stream.jsonl"
    assert main(["classify", "-", "--output", str(out), "--retry-failed", *TINY]) == 2
    assert "--retry-failed: - is a stream, which is not resumed" in capsys.readouterr().err
    settings = {"arch": "slow_r50_8x8", "checkpoint": None, "views": 1, "size": 32, "crop": 32, "train_crop": 224,
                "dtype": "float32", "top": 2, "window": 2.0, "stride": 2.0, "labels": None}
    out.write_text(json.dumps({"video": "-", "resolved": "-", "window": 0, "settings": settings}) + "\n")
    assert main(["classify", "-", "--window", "2", "--output", str(out), *TINY]) == 2
    assert "already holds a timeline of -; a stream is not resumed" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- streams

# A producer of MPEG-TS (MPEG-2 video, 32x32, no B-frames: each frame leaves the encoder at once), in a
# process of its own, as a camera or an encoder would be: python -c WRITER TARGET FRAMES FPS PAUSE. TARGET "-"
# is its stdout; a tcp:// URL is connected to (retried while nothing listens yet). PAUSE >= 0: before that
# frame it flushes and waits for a line on its stdin. Frames go as fast as the reader takes them.
WRITER = r"""
import sys, time, av, numpy as np
target, frames, fps, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def write():
    with av.open(sys.stdout.buffer if target == "-" else target, "w", format="mpegts") as out:
        stream = out.add_stream("mpeg2video", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.max_b_frames = 0
        for i in range(frames):
            if i == pause:
                sys.stdout.flush()
                sys.stdin.readline()
            a = np.full((32, 32, 3), (i * 37) % 256, np.uint8)
            a[:, : (i % 32)] = 255 - a[0, 0]
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
deadline = time.time() + 120
while True:
    try:
        write()
        break
    except (ConnectionRefusedError, av.error.ConnectionRefusedError):
        if time.time() > deadline:
            raise
        time.sleep(0.2)
"""


def _writer(target, frames, pause=-1, **popen):
    return subprocess.Popen([sys.executable, "-c", WRITER, target, str(frames), "8", str(pause)], **popen)


def test_stdin_stream_yields_a_line_per_window_as_it_completes():
    # 8 s of stream first (the demuxer probes about 5 s), then the writer waits for a line before the last 2 s
    writer = _writer("-", 80, pause=64, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-m", "slowfast_kernels", "classify", "-", "--window", "1",
                             "--batch-size", "16", *TINY], stdin=writer.stdout, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    writer.stdout.close()
    lines, open_at_first_line = [], None
    try:
        for raw in proc.stdout:
            lines.append(json.loads(raw))
            if open_at_first_line is None:
                open_at_first_line = writer.poll() is None
                writer.stdin.write(b"go\n")
                writer.stdin.close()
        err = proc.stderr.read().decode()
        assert proc.wait(60) == 0, err
        assert writer.wait(60) == 0
    finally:
        for p in (proc, writer):
            if p.poll() is None:
                p.kill()
    assert open_at_first_line  # the first window's line came while the stream was still open
    windows, end = lines[:-1], lines[-1]
    assert [(r["window"], r["start"], r["end"], r["dropped"]) for r in windows] == [
        (k, k, k + 1, 0) for k in range(10)]
    assert timeline.is_end_line(end) and end["frames"] == 80 and end["dropped"] == 0
    assert "-: 10 windows, none dropped" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_stream_drops_windows_when_the_model_falls_behind(monkeypatch, capsys):
    seen = {}

    class Recorded(timeline.Assembler):
        def __init__(self, windows):
            super().__init__(windows)
            seen["assembler"] = self

    class RecordedQueue(timeline.WindowQueue):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen["queue"] = self

    slow_forward = timeline._WindowBatcher.forward

    def forward(self, inputs):
        time.sleep(0.3)  # a model slower than the stream arrives
        return slow_forward(self, inputs)

    monkeypatch.setattr(timeline, "Assembler", Recorded)
    monkeypatch.setattr(timeline, "WindowQueue", RecordedQueue)
    monkeypatch.setattr(timeline._WindowBatcher, "forward", forward)
    port = _free_port()
    # classify listens, the writer connects (once classify's model is built): 240 frames, 30 windows of 1 s
    writer = _writer(f"tcp://127.0.0.1:{port}", 240)
    try:
        assert main(["classify", f"tcp://127.0.0.1:{port}?listen=1", "--window", "1", "--batch-size", "1",
                     *TINY]) == 0
        assert writer.wait(60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    captured = capsys.readouterr()
    lines = json_lines(captured.out)
    windows, end = lines[:-1], lines[-1]
    ks = [r["window"] for r in windows]
    assert ks == sorted(ks) and [r["dropped"] for r in windows] == [k - p - 1 for k, p in zip(ks, [-1] + ks)]
    assert end["dropped"] > 0 and end["dropped"] == sum(r["dropped"] for r in windows)
    assert len(windows) + end["dropped"] == 30 and end["frames"] == 240
    assert f"{end['dropped']} dropped (the model fell behind the stream)" in captured.err
    # memory stays bounded while windows are dropped: the frame map and one waiting window
    assert seen["assembler"].peak <= seen["assembler"].windows.bound() and seen["queue"].peak_windows == 1


def test_a_silent_url_times_out_while_opening():
    """A sender that connects and sends nothing: the open gives up after the timeout, one line naming it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        started = time.perf_counter()
        with pytest.raises(_decode.VideoDecodeError, match=r"no data within 0\.5 s of opening \(--stream-timeout\)"):
            _decode.LiveStream(url, "classify", timeout=0.5)
        assert time.perf_counter() - started < 20


def test_a_stalled_stream_ends_in_an_error_line(capsys):
    """The sender stops after 64 frames (8 s) and keeps the connection open: after --stream-timeout the
    stream's timeline ends with an error line (the windows complete before it written), instead of waiting
    forever."""
    port = _free_port()
    writer = _writer(f"tcp://127.0.0.1:{port}", 80, pause=64, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        started = time.perf_counter()
        code = main(["classify", f"tcp://127.0.0.1:{port}?listen=1", "--window", "1", "--batch-size", "1",
                     "--stream-timeout", "2", *TINY])
        waited = time.perf_counter() - started
    finally:
        writer.kill()
        writer.wait(60)
    captured = capsys.readouterr()
    lines = json_lines(captured.out)
    assert code == 3  # a video with an error line
    windows, error = lines[:-1], lines[-1]
    ks = [r["window"] for r in windows]  # the sender outruns the model: windows may be dropped
    assert ks and ks == sorted(set(ks)) and ks[-1] < 8 and all(r["end"] <= 8 for r in windows)
    assert [r["dropped"] for r in windows] == [k - p - 1 for k, p in zip(ks, [-1] + ks)]
    assert "error" in error and "no data for 2 s after" in error["error"] and "(--stream-timeout)" in error["error"]
    assert waited < 60


@pytest.mark.parametrize("value, message", [("-1", "expected a number of seconds >= 0, got -1"),
                                            ("soon", "expected a number of seconds >= 0, got 'soon'")])
def test_bad_stream_timeout_is_one_line(value, message, capsys):
    assert main(["classify", "-", "--stream-timeout", value, *TINY]) == 2
    assert message in capsys.readouterr().err
