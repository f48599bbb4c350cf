"""The progress bar of a classify run, on rank 0's stderr.

One process: its own videos. Under torchrun with --output: every rank's, out of every video of the run;
rank 0 counts the lines the ranks append to their part files (a thread reading what is new every 0.5 s),
so the bar moves while rank 0 waits for the others. Under torchrun without --output there are no part files
to count: the bar says it shows rank 0's share.
"""
from __future__ import annotations

import sys
import threading
from typing import Dict, List, Optional

from .corpus import ResultsFile

POLL_SECONDS = 0.5


class Progress:
    def __init__(self, pending: List[str], mine: List[str], rank: int, world_size: int,
                 results: Optional[ResultsFile], disable: bool) -> None:
        from tqdm import tqdm

        self._count_parts = world_size > 1 and results is not None
        if world_size == 1:
            total, desc = len(pending), "classify"
        elif self._count_parts:
            total, desc = len(pending), f"classify ({world_size} ranks)"
        else:
            total, desc = len(mine), f"classify (rank 0's share of {world_size} ranks)"
        self.bar = tqdm(total=total, unit="video", file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                        disable=disable or rank != 0, desc=desc)
        self._results = results
        self._offsets: Dict[str, int] = {}
        self._lines = 0
        self._stop = threading.Event()
        self._thread = None
        if self._count_parts and not self.bar.disable:
            self._thread = threading.Thread(target=self._poll, name="progress", daemon=True)
            self._thread.start()

    def wrote(self) -> None:
        """One record written by this process."""
        if not self._count_parts:
            self.bar.update(1)

    def _count_new_lines(self) -> None:
        for part in self._results.part_files():
            try:
                with open(part, "rb") as f:
                    f.seek(self._offsets.get(part, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            self._offsets[part] = self._offsets.get(part, 0) + len(data)
            self._lines += data.count(b"\n")
        self.bar.update(self._lines - self.bar.n)

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._count_new_lines()

    def close(self) -> None:
        """After every rank closed its part file: the last count, then the bar's final line."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._count_new_lines()
        self.bar.close()
