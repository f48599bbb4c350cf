"""Peak memory (max RSS) of `python -m slowfast_kernels classify` by video resolution and views.

Generates 5 s H.264 videos of a moving box (x264 ultrafast) at each resolution, runs
the command once per (video, views) in a fresh process (CPU, fp32, the default --batch-size, --workers,
--size 256, --crop 256; random weights: memory does not depend on them) and prints a Markdown table of
the peak resident memory of each process (os.wait4's ru_maxrss) and the wall time.

Run: python benchmarks/classify_memory.py [--frames 150] [--out DIR] [--only 320x240,1080p]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESOLUTIONS = {"320x240": (240, 320, 30), "720p": (720, 1280, 30), "1080p": (1080, 1920, 30),
               "1080p 120 fps": (1080, 1920, 120), "4K": (2160, 3840, 30)}


def moving_frame(t: int, height: int, width: int) -> np.ndarray:
    """Frame t: a gradient with a bright box moving 1/80 of the width per frame (made one at a time)."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (np.arange(width) * 120 // width)[None]
    img[..., 1] = (np.arange(height) * 120 // height)[:, None]
    img[..., 2] = 40
    bh, bw = height // 4, width // 4
    y, x = (t * height // 60) % (height - bh), (t * width // 80) % (width - bw)
    img[y:y + bh, x:x + bw] = (230, 180, 60)
    return img


def write(path: Path, frames: int, height: int, width: int, fps: int) -> Path:
    """H.264 (x264 ultrafast: a 4K video encodes in seconds, not minutes)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for t in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(moving_frame(t, height, width), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def peak_rss(args, env) -> tuple:
    """(max RSS in MiB, seconds, exit status) of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, time.perf_counter() - start, child.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=150, help="frames per video at 30 fps (x4 at 120 fps)")
    p.add_argument("--out", type=Path, default=None, help="folder for the videos (default: a temporary one)")
    p.add_argument("--only", default=None, help="comma-separated resolution names")
    p.add_argument("--views", default="1,30")
    opts = p.parse_args()
    names = opts.only.split(",") if opts.only else list(RESOLUTIONS)
    root = opts.out or Path(tempfile.mkdtemp(prefix="classify_memory_"))
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    print("| video | views | peak RSS | seconds |\n|---|---|---|---|", flush=True)
    for name in names:
        h, w, fps = RESOLUTIONS[name]
        frames = opts.frames * fps // 30
        video = root / f"{name.replace(' ', '_')}.mp4"
        if not video.exists():
            write(video, frames, h, w, fps)
        for views in opts.views.split(","):
            cmd = [sys.executable, "-m", "slowfast_kernels", "classify", str(video), "--views", views,
                   "--device", "cpu", "--dtype", "float32", "--no-progress"]
            rss, seconds, status = peak_rss(cmd, env)
            assert status == 0, f"{name} {views} views: exit {status}"
            print(f"| {name}, {frames} frames at {fps} fps | {views} | {rss / 1024:.2f} GiB | {seconds:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
