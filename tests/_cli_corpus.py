"""Small generated video corpora for the command-line tests: several codecs and sizes, broken files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

import slowfast_kernels as sk
import slowfast_reference as R
from slowfast_kernels import io

from _checkpoint_fixtures import randomize


def write_with_codec(path: Path, frames: torch.Tensor, codec: str, fps: int = 30) -> Path:
    """Encode uint8 [V, H, W, 3] frames with any PyAV encoder (mpeg4 in .avi, vp9 in .webm, mjpeg ...)."""
    import av

    _, h, w, _ = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for frame in frames.numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_corpus(root: Path) -> Dict[str, List[Path]]:
    """root/ holds 5 good videos (H.264, MPEG-4 Part 2, VP9, MJPEG; 4 sizes; 25 and 30 fps) in two
    folders, a truncated MP4 and a text file named .mp4. Returns {"good": [...], "bad": [...]}."""
    (root / "b").mkdir(parents=True, exist_ok=True)
    good = [
        io.write_video(root / "a1.mp4", io.synthetic_video(40, 64, 80, seed=1), fps=25),
        write_with_codec(root / "a2.avi", io.synthetic_video(36, 48, 64, seed=2), "mpeg4"),
        write_with_codec(root / "b" / "b1.webm", io.synthetic_video(30, 72, 96, seed=3), "libvpx-vp9"),
        write_with_codec(root / "b" / "b2.avi", io.synthetic_video(32, 60, 80, seed=4), "mjpeg", fps=25),
        io.write_video(root / "b" / "b3.mp4", io.synthetic_video(50, 64, 64, seed=5)),
    ]
    whole = io.write_video(root / "cut.mp4", io.synthetic_video(40, 64, 80, seed=6))
    whole.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])  # the index (moov) at the end is gone
    text = root / "b" / "notes.mp4"
    text.write_text("not a video\n")
    (root / "b" / "readme.txt").write_text("not a video extension: never listed\n")
    return {"good": good, "bad": [whole, text]}


def small_checkpoint(path: Path, arch: str = "slowfast_r50_8x8", train_crop: int = 32, fmt: str = "pyslowfast"):
    """A randomized model with a damped classifier (probabilities of order 1/400 apart, not one-hot), saved
    in `fmt`'s layout; returns (model, path)."""
    model = randomize(R.build_model(arch, train_crop=train_crop)).eval()
    with torch.no_grad():
        model.blocks[-1].proj.weight.mul_(1e-3)
    torch.save({"model_state": sk.checkpoints.export_state_dict(model, fmt)}, path)
    return model, path


def json_lines(text: str) -> List[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def by_video(records: List[dict]) -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    for r in records:
        assert r["video"] not in out, f"{r['video']} twice"
        out[r["video"]] = r
    return out
