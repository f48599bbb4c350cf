"""The tests stage: the tests that need CUDA (pytest_plugin.needs_cuda), under pytest-xdist when it is
installed, with a per-test limit, recorded as one `gpu_test_suite` record:

    {passed, failed, skipped, errors, crashed, timed_out, not_run, failures: [...], crashes: [...],
     timeouts: [...], error_tests: [...], details: {nodeid: the failure's last lines}, ...}

A test that kills its process (a segfault in a native op, the per-test limit) is a crash, not the end of
the run: xdist replaces the worker and reports the test; without xdist the stage starts pytest again
without the tests already run, the crashed one named from the journal (the test that started and never
reported). The H200 run of the whole suite (pytest -n 10) did not finish in 7 minutes; these tests are
the ones whose behaviour depends on the GPU.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from . import journal
from .versions import REPO

DEFAULT_TEST_TIMEOUT_S = 60.0   # per test; the slowest GPU tests took 150 s before (Triton autotuning)
MAX_WORKERS = 12                # processes sharing the one GPU (each holds a CUDA context, ~0.5 GB)
DRY_RUN_TESTS = ("tests/test_backends.py",)  # a few seconds on the CPU: the plumbing, not the GPU checks


def _xdist_workers(requested) -> int:
    if importlib.util.find_spec("xdist") is None:
        return 0
    if requested is not None:
        return int(requested)
    return max(1, min(MAX_WORKERS, (os.cpu_count() or 2) - 2))


def _pytest_cmd(paths, select, workers, timeout_s, jpath, log, exclude, attempt) -> List[str]:
    cmd = [sys.executable, "-m", "pytest", *paths, "-p", "slowfast_kernels.gpu_report.pytest_plugin",
           f"--sk-journal={jpath}", f"--sk-log={log}", f"--sk-select={select}", f"--sk-exclude={exclude}",
           f"--sk-test-timeout={timeout_s}", f"--sk-attempt={attempt}", f"--sk-parent-pid={os.getpid()}",
           "-q", "-rN", "-p", "no:cacheprovider", "--color=no"]
    if importlib.util.find_spec("pytest_benchmark") is not None:
        cmd.append("--benchmark-disable")
    if workers:
        cmd += ["-n", str(workers), f"--max-worker-restart={4 * workers}"]
    return cmd


def summarize(events: List[dict]) -> Dict[str, object]:
    """Per test its final outcome from the journal's test events, counted like pytest's summary."""
    outcome: Dict[str, str] = {}
    details: Dict[str, str] = {}
    timed_out = {e["nodeid"] for e in events if e.get("event") == "test_timeout"}
    started = []
    for e in events:
        ev = e.get("event")
        if ev == "test_start":
            started.append(e["nodeid"])
        if ev != "test_report":
            continue
        node, when, res = e["nodeid"], e["when"], e["outcome"]
        if when == "???":  # xdist: the worker running this test died
            outcome[node] = "timed_out" if node in timed_out else "crashed"
        elif res == "failed":
            outcome[node] = "failed" if when == "call" else "error"
        elif res == "skipped" and outcome.get(node) is None:
            outcome[node] = "skipped"
        elif res == "passed" and when == "call" and outcome.get(node) is None:
            outcome[node] = "passed"
        if res == "failed" and e.get("longrepr"):
            details[node] = e["longrepr"]
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors", "crashed", "timed_out")}
    for node, res in outcome.items():
        counts["errors" if res == "error" else res] += 1
    names = lambda what: sorted(n for n, r in outcome.items() if r == what)  # noqa: E731
    return dict(counts, failures=names("failed"), error_tests=names("error"), crashes=names("crashed"),
                timeouts=names("timed_out"), details=details, outcomes=outcome, started=started)


def test_suite(ctx) -> None:
    """The stage: pytest in a loop until every selected test ran, the stage's time ran out, or pytest ended
    for a reason other than a crash."""
    params = ctx.params
    paths = list(params.get("tests_paths") or (DRY_RUN_TESTS if ctx.dry_run else ("tests",)))
    root = Path(params.get("tests_root") or REPO)
    if not all((root / p).exists() or Path(p).is_absolute() and Path(p).exists() for p in paths):
        ctx.skip("pytest", f"no {' '.join(paths)} under {root} (the checkout's tests are needed)")
        return
    select = params.get("tests_select") or "cuda"
    workers = _xdist_workers(params.get("test_workers"))
    timeout_s = float(params.get("test_timeout_s") or DEFAULT_TEST_TIMEOUT_S)
    jpath, log = ctx.journal_path, ctx.log_path or os.devnull
    exclude = Path(ctx.out_dir or ".") / ".gpu_report_tests_exclude.txt"
    start, runs, stopped = time.time(), 0, None
    env = dict(ctx.env)
    ctx.emit("case_start", case="pytest")
    for attempt in range(20):
        events = journal.read(jpath, "tests")
        summary = summarize(events)
        done = set(summary["outcomes"]) | set(summary["started"])
        exclude.write_text("".join(n + "\n" for n in sorted(done)))
        cmd = _pytest_cmd(paths, select, workers, timeout_s, jpath, log, exclude, attempt)
        left = ctx.time_left()
        if left < 5:
            stopped = "the stage's time limit ran out"
            break
        with open(log, "ab") as logf:
            logf.write(f"\n--- {' '.join(cmd)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(cmd, cwd=str(root), stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            runs += 1
            try:
                rc = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                from .report import _kill_group

                _kill_group(proc)
                stopped = "stopped at the stage's time limit"
                break
        run = [e for e in journal.read(jpath, "tests") if e.get("attempt") == attempt]
        if any(e.get("event") == "pytest_finish" for e in run):
            break  # pytest ended by itself (xdist survived any crash)
        finished = {e["nodeid"] for e in run if e.get("event") == "test_report" and e["when"] in ("teardown", "???")}
        dangling = [e["nodeid"] for e in run if e.get("event") == "test_start" and e["nodeid"] not in finished]
        if not dangling:
            stopped = f"pytest ended with status {rc} before running a test (see the log)"
            break
        node = dangling[-1]
        timed = any(e.get("event") == "test_timeout" and e.get("nodeid") == node for e in run)
        ctx.emit("test_report", nodeid=node, when="???", outcome="failed",
                 longrepr=f"the pytest process died while running it (exit status {rc}"
                          f"{', over the per-test limit' if timed else ''}; stacks in the log)")
    summary = summarize(journal.read(jpath, "tests"))
    collected = [e for e in journal.read(jpath, "tests") if e.get("event") == "pytest_collected"]
    selected = collected[0]["selected"] + collected[0]["excluded"] if collected else None
    ran = sum(summary[k] for k in ("passed", "failed", "skipped", "errors", "crashed", "timed_out"))
    exclude.unlink(missing_ok=True)
    rec = dict(suite="gpu_test_suite", **{k: summary[k] for k in ("passed", "failed", "skipped", "errors",
                                                                  "crashed", "timed_out")},
               selected=selected, not_run=(selected - ran) if selected is not None else None,
               failures=summary["failures"], crashes=summary["crashes"], timeouts=summary["timeouts"],
               error_tests=summary["error_tests"], details=summary["details"], stopped=stopped,
               seconds=round(time.time() - start, 1), pytest_runs=runs, xdist_workers=workers,
               per_test_timeout_s=timeout_s, select=select, paths=paths,
               command=" ".join(_pytest_cmd(paths, select, workers, timeout_s, "J", "L", "X", 0)[1:]))
    ctx.record(rec)
    ctx.emit("case_end", case="pytest", seconds=time.time() - start)
