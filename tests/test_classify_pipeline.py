"""classify's decoding pipeline (cli/clips.py): videos in order, clips in order, every decoded byte within
the budget, a failing video reported where it fails, an early stop that does not hang."""
import threading
import time

import pytest
import torch

from slowfast_kernels.cli import clips
from slowfast_kernels.io import DecodedClip

CLIP = 1000  # bytes of one fake clip


def fake_read(clips_per_video=3, fail=None, delay=0.0):
    """read(path, budget): clips of CLIP bytes (acquired before they exist, as io.read_clips does);
    `fail`: the path whose second clip raises."""

    def read(path, budget):
        for t in range(clips_per_video):
            if path == fail and t == 1:
                raise ValueError(f"{path}: broken at clip 1")
            time.sleep(delay)
            budget.acquire(CLIP)
            yield DecodedClip(torch.zeros(CLIP, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), 30.0, t, 9)

    return read


def consume(videos, pack_delay=0.0):
    seen, errors = [], {}
    for video in videos:
        try:
            for clip in video.clips():
                time.sleep(pack_delay)
                seen.append((video.path, clip.start_frame))
        except ValueError as exc:
            errors[video.path] = str(exc)
    return seen, errors


def test_order_and_budget():
    paths = [f"v{i}" for i in range(6)]
    budget_peaks = []
    original = clips.DecodeBudget.__init__

    def spy(self, limit):
        original(self, limit)
        budget_peaks.append(self)

    clips.DecodeBudget.__init__ = spy
    try:
        # 2 clips of budget, 3 threads and 3 videos ahead: the threads would hold 12 clips without it
        seen, errors = consume(clips.decode_ahead(paths, fake_read(), workers=3, videos_ahead=3, limit=2 * CLIP),
                               pack_delay=0.002)
    finally:
        clips.DecodeBudget.__init__ = original
    assert seen == [(p, t) for p in paths for t in range(3)] and not errors
    (budget,) = budget_peaks
    assert budget.used == 0
    # The other videos fill the limit while the consumer waits for the video it reads, holding nothing;
    # that video decodes past the limit: the clip the consumer then packs, and the next one.
    assert budget.peak <= 2 * CLIP + 2 * CLIP


def test_a_failing_video_is_reported_and_the_others_go_on():
    paths = ["a", "b", "c"]
    seen, errors = consume(clips.decode_ahead(paths, fake_read(fail="b"), workers=2, videos_ahead=2, limit=CLIP))
    assert errors == {"b": "b: broken at clip 1"}
    assert seen == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("c", 0), ("c", 1), ("c", 2)]


@pytest.mark.parametrize("leave", ["mid_video", "after_video"])
def test_stopping_early_does_not_hang(leave):
    """The consumer stops (an exception in a forward, say) while threads wait on the budget."""
    finished = threading.Event()

    def run():
        videos = clips.decode_ahead([f"v{i}" for i in range(8)], fake_read(clips_per_video=5), workers=3,
                                    videos_ahead=3, limit=CLIP)
        for video in videos:
            for _ in video.clips():
                if leave == "mid_video":
                    break
            break
        videos.close()
        finished.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert finished.wait(20), "decode_ahead hung after the consumer stopped"
