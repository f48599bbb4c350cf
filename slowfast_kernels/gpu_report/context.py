"""What a stage function gets: StageContext (its parameters, its deadline, the journal it reports into).

A stage is a function f(ctx) that runs named cases through ctx.run_case and reports bench records with
ctx.record. A case that raises is recorded as an error and the stage goes on with the next one, except
after a CUDA error that poisons the process's context (an illegal address, a launch failure): then the
stage's process exits with RESTART_EXIT_CODE and the report starts it again, skipping every case already
begun (finished, failed or crashed).
"""
from __future__ import annotations

import os
import time
import traceback
from typing import Callable, Iterable, Optional

import torch

from . import journal

RESTART_EXIT_CODE = 3
# Messages of CUDA errors after which no later kernel of the process can be trusted.
_STICKY_CUDA_ERRORS = ("illegal memory access", "illegal address", "unspecified launch failure",
                       "misaligned address", "an illegal instruction", "device-side assert", "CUDA error: unknown",
                       "cudaErrorLaunchFailure", "CUDA_ERROR_ILLEGAL_ADDRESS", "CUDA_ERROR_LAUNCH_FAILED")


class CudaContextLost(RuntimeError):
    """A case hit a sticky CUDA error: the stage's process must be restarted to go on."""


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


class StageContext:
    """ctx.params: the run's parameters (dry_run, batches, rounds, ...); ctx.device: "cuda" or "cpu";
    ctx.time_left(): seconds to the stage's limit."""

    def __init__(self, stage: str, journal_path: str, params: dict, deadline: float, attempt: int = 0,
                 out_dir: Optional[str] = None, log_path: Optional[str] = None) -> None:
        self.stage, self.journal_path, self.params = stage, journal_path, dict(params)
        self.deadline, self.attempt = deadline, attempt
        self.out_dir, self.log_path = out_dir, log_path
        self.dry_run = bool(self.params.get("dry_run"))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._begun = {e["case"] for e in journal.read(journal_path, stage) if e.get("event") == "case_start"}
        self._case: Optional[str] = None
        self.env = dict(os.environ)  # for the processes a stage starts (the report sets its own)

    def time_left(self) -> float:
        return self.deadline - time.time()

    def emit(self, event: str, **fields) -> None:
        journal.append(self.journal_path, dict(stage=self.stage, event=event, attempt=self.attempt, time=time.time(),
                                               **fields))

    def plan(self, cases: Iterable[str]) -> None:
        """Announce the cases the stage means to run (the report lists those it never reached)."""
        if self.attempt == 0:
            self.emit("plan", cases=list(cases))

    def note(self, **fields) -> None:
        self.emit("note", case=self._case, **fields)

    def record(self, rec: dict) -> None:
        self.emit("record", case=self._case, record=rec)

    def skip(self, case: str, reason: str) -> None:
        self.emit("case_skip", case=case, reason=reason)

    def run_case(self, case: str, fn: Callable[[], object], needs_s: float = 0.0):
        """fn() as case `case`: skipped when an earlier attempt began it or fewer than needs_s seconds are
        left; its exception recorded as the case's error. Returns fn's value, or None."""
        if case in self._begun:
            return None
        if self.time_left() < needs_s:
            self.skip(case, f"stage time limit: {self.time_left():.0f} s left, the case needs about {needs_s:.0f} s")
            return None
        self._begun.add(case)
        self._case = case
        self.emit("case_start", case=case)
        start = time.time()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - a failing case is a result; the next one still runs
            self.emit("case_error", case=case, error=_one_line(exc), traceback=traceback.format_exc()[-4000:],
                      seconds=time.time() - start)
            if any(s.lower() in str(exc).lower() for s in _STICKY_CUDA_ERRORS):
                raise CudaContextLost(_one_line(exc)) from exc
            return None
        finally:
            self._case = None
        self.emit("case_end", case=case, seconds=time.time() - start)
        return value
