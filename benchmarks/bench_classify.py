"""classify over a generated corpus: videos/s of the sequential path (one video at a time, each view a batch-1
forward, decoding in between) against the pipelined CLI (decoding threads ahead of batched forwards).

Corpus: N synthetic videos of 10 s at 320x240, 30 fps, H.264 (SLOWFAST_BENCH_CLASSIFY_VIDEOS, default 24 on
CUDA, 4 on CPU; the 30-view case uses SLOWFAST_BENCH_CLASSIFY_VIDEOS_30, default 24 on CUDA, 1 on CPU: R50
at 256x256 takes about a second per view on two cores). SlowFast R50 8x8 with random (seeded) weights,
PySlowFast's test protocol at 256 (1 view, or 10 temporal x 3 spatial). Both paths time everything a user
waits for: model build and fuse, decoding, packing, forwards. SLOWFAST_BENCH_CLASSIFY_ROUNDS rounds per path
(default 2; a round is the whole corpus), alternating between the paths; the record's median_s is seconds
per video. Both paths must agree on every video's top-1 label.

Run: python -m pytest benchmarks/bench_classify.py
"""
from __future__ import annotations

import json
import os
import statistics
import time

import pytest
import torch

import slowfast_kernels as sk
import slowfast_reference as R
from slowfast_kernels import io
from slowfast_kernels.cli import main

from conftest import record_extra

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = "bfloat16" if CUDA else "float32"
ARCH = "slowfast_r50_8x8"
SAMPLING_RATE = 2
VIDEOS = {1: int(os.environ.get("SLOWFAST_BENCH_CLASSIFY_VIDEOS", "24" if CUDA else "4")),
          30: int(os.environ.get("SLOWFAST_BENCH_CLASSIFY_VIDEOS_30", "24" if CUDA else "1"))}
# Rounds alternate between the paths (seq, pipe, seq, pipe): load that drifts during the run hits both alike.
ROUNDS = int(os.environ.get("SLOWFAST_BENCH_CLASSIFY_ROUNDS", "2"))
BATCH = {1: 16 if CUDA else 4, 30: 30 if CUDA else 6}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify_corpus")
    return [str(io.write_video(root / f"video_{i:02d}.mp4", io.synthetic_video(300, 240, 320, seed=i), fps=30))
            for i in range(max(VIDEOS.values()))]


def sequential(paths, views):
    """The classify loop before the pipeline: per video, per temporal clip a decode, per crop a batch-1 forward."""
    torch.manual_seed(0)
    labels = io.kinetics_400_labels()
    model = R.build_model(ARCH, num_classes=400, head_act="softmax").eval().to(DEVICE)
    fused = sk.fuse(model, dtype=getattr(torch, DTYPE))
    temporal, spatial = (10, 3) if views == 30 else (1, 1)
    top1 = {}
    with torch.inference_mode():
        for path in paths:
            scores = torch.zeros(400)
            for t in range(temporal):
                clip = io.read_video(path, num_frames=32, sampling_rate=SAMPLING_RATE, clip_idx=t, num_clips=temporal)
                frames, index = clip.frames.to(DEVICE), clip.index.to(DEVICE)
                for s in range(spatial):
                    probs = fused.from_video(frames, index, size=256, crop=256, spatial_idx=1 if spatial == 1 else s)
                    scores += probs.float()[0].cpu()
            top1[path] = labels[int(scores.argmax())]
    return top1


def pipelined(paths, views, output):
    status = main(["classify", *paths, "--views", str(views), "--output", str(output), "--no-progress",
                   "--device", DEVICE, "--dtype", DTYPE, "--batch-size", str(BATCH[views])])
    assert status == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    return {r["video"]: r["top"][0][0] for r in records}


@pytest.mark.parametrize("views", [1, 30])
def test_classify_corpus(corpus, views, tmp_path):
    paths = corpus[: VIDEOS[views]]
    case = f"{ARCH} classify {views} view(s), {len(paths)} videos 10 s 320x240, {DEVICE} {DTYPE}"
    paths_fn = {"sequential": lambda: sequential(paths, views),
                "pipelined": lambda: pipelined(paths, views, tmp_path / f"out{views}.jsonl")}
    results, times = {}, {impl: [] for impl in paths_fn}
    for _ in range(ROUNDS):
        for impl, fn in paths_fn.items():
            (tmp_path / f"out{views}.jsonl").unlink(missing_ok=True)
            start = time.perf_counter()
            results[impl] = fn()
            if CUDA:
                torch.cuda.synchronize()
            times[impl].append((time.perf_counter() - start) / len(paths))
    for impl, per_video in times.items():
        med = statistics.median(per_video)
        q = statistics.quantiles(per_video, n=4) if len(per_video) > 1 else [med, med, med]
        rec = record_extra(case, impl, dict(median_s=med, iqr_s=q[2] - q[0], min_s=min(per_video),
                                            max_s=max(per_video), rounds=len(per_video)),
                           suite="bench_classify", videos_per_s=1 / med, videos=len(paths), views=views,
                           batch_size=BATCH[views] if impl == "pipelined" else 1)
        rec["baseline"] = impl == "sequential"
    assert results["pipelined"] == results["sequential"]
