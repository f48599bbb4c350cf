"""classify's decoding: threads decode videos ahead of the model, clip by clip, within a memory budget.

Each video is decoded in one pass (io.read_clips): only the frames its views sample are held, and each
temporal clip is handed over as soon as its last frame is decoded. The consumer (the main thread) takes
the videos in order and the clips of each in order; it packs a clip's crops, then releases it. Every
byte of decoded frames held by the decoding threads or waiting in their queues counts against one
budget (DECODE_AHEAD_BYTES): a thread that would exceed it waits, except the thread of the video the
consumer is reading while none of its clips is waiting (the consumer waits for it: it must go on). The
other videos fill at most the budget, so the peak is the budget plus what the video being read needs
beyond it: its one pass's held frames, the clip being packed and the clip being stacked.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Deque, Iterator, List, Optional

# 512 MiB of decoded frames ahead: 2.7 1080p clips of 32 frames (6.2 MB each), less than one 4K clip
# (32 x 24.9 MB = 796 MB: there only the video being read decodes, its next clip while one is packed),
# 70 clips of 320x240 (there --workers bounds the videos in flight first).
DECODE_AHEAD_BYTES = 512 << 20


class _Cancelled(Exception):
    """The consumer stopped reading this video (it failed to pack, or the run ended)."""


class DecodeBudget:
    """Bytes of decoded frames held ahead of the consumer, shared by the decoding threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()
        self._head: Optional["DecodingVideo"] = None

    def acquire(self, video: "DecodingVideo", nbytes: int) -> None:
        with self._cond:
            while (self.used + nbytes > self.limit and not video.cancelled
                   and (video is not self._head or video.queued > 0)):
                self._cond.wait()
            if video.cancelled:
                raise _Cancelled()
            self.used += nbytes
            self.peak = max(self.peak, self.used)

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self._cond.notify_all()

    def count(self, video: "DecodingVideo", change: int) -> None:
        """A clip of `video` entered (+1) or left (-1) its queue."""
        with self._cond:
            video.queued += change
            self._cond.notify_all()

    def wake(self, head: Optional["DecodingVideo"] = None) -> None:
        with self._cond:
            if head is not None:
                self._head = head
            self._cond.notify_all()


class DecodingVideo:
    """One video's clips, from its decoding thread to the consumer, in order."""

    def __init__(self, path: str, budget: DecodeBudget) -> None:
        self.path, self.budget = path, budget
        self.started: Optional[float] = None
        self.seconds = 0.0  # time spent decoding (written by its thread only), without waits for the budget
        self._waited = 0.0
        self.cancelled = False
        self.queued = 0  # clips decoded, not yet taken by the consumer
        self._queue: "queue.Queue" = queue.Queue()
        self._finished = False  # the consumer has seen the end (or the error)

    # the decoding thread: io.read_clips calls acquire / release for every byte it holds
    def acquire(self, nbytes: int) -> None:
        started = time.perf_counter()
        self.budget.acquire(self, nbytes)
        self._waited += time.perf_counter() - started

    def release(self, nbytes: int) -> None:
        self.budget.release(nbytes)

    def decode(self, read: Callable) -> None:
        self.started = time.perf_counter()
        try:
            if self.cancelled:
                raise _Cancelled()
            decoding = iter(read(self.path, budget=self))
            while True:
                started, waited = time.perf_counter(), self._waited
                clip = next(decoding, None)
                self.seconds += time.perf_counter() - started - (self._waited - waited)
                if clip is None:
                    break
                self.budget.count(self, +1)
                self._queue.put(("clip", clip))
            self._queue.put(("end", None))
        except _Cancelled:
            self._queue.put(("end", None))
        except Exception as exc:  # noqa: BLE001 - the consumer writes the video's error line
            self._queue.put(("error", exc))

    # the consumer
    def clips(self) -> Iterator:
        """The clips in order; raises the decoding error, if any, where it happened."""
        while True:
            kind, item = self._queue.get()
            if kind != "clip":
                self._finished = True
                if kind == "error":
                    raise item
                return
            self.budget.count(self, -1)
            try:
                yield item
            finally:
                self.budget.release(item.frames.nbytes)  # its crops are packed: the frames can go
                del item  # now, not once the next clip has come

    def cancel(self) -> None:
        """Stop decoding this video and drop the clips already decoded (returns once its thread stopped)."""
        self.cancelled = True
        self.budget.wake()
        while not self._finished:
            kind, item = self._queue.get()
            if kind == "clip":
                self.budget.count(self, -1)
                self.budget.release(item.frames.nbytes)
            else:
                self._finished = True


def decode_ahead(paths: List[str], read: Callable, workers: int, videos_ahead: int,
                 limit: int = DECODE_AHEAD_BYTES) -> Iterator[DecodingVideo]:
    """The videos in order, each decoding in one of `workers` threads, at most `videos_ahead` started
    beyond the one being read, all of them within `limit` bytes of decoded frames (see DecodeBudget).
    read(path, budget=...) -> iterator of io.DecodedClip (io.read_clips with a sampler)."""
    budget = DecodeBudget(limit)
    todo = iter(paths)
    started: Deque[DecodingVideo] = collections.deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        def start() -> None:
            path = next(todo, None)
            if path is not None:
                video = DecodingVideo(path, budget)
                started.append(video)
                pool.submit(video.decode, read)

        try:
            for _ in range(1 + videos_ahead):
                start()
            while started:
                video = started[0]
                budget.wake(head=video)
                yield video
                video.cancel()  # whatever the consumer left of it (nothing, when it read every clip)
                started.popleft()
                start()
        finally:  # the run ended early: stop the threads before the pool waits for them
            for video in started:
                video.cancelled = True
            for video in started:
                video.cancel()
