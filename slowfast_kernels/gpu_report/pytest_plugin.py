"""pytest plugin of the gpu-report tests stage (loaded with -p slowfast_kernels.gpu_report.pytest_plugin).

--sk-journal PATH     append every test's start and report to the report's journal (by the controller under
                      pytest-xdist, whose crash reports name the test a dead worker was running)
--sk-select cuda      keep only the tests that need CUDA (see needs_cuda), and none marked slow
--sk-exclude PATH     deselect the node ids listed in PATH (tests an earlier, crashed run already ran)
--sk-parent-pid PID   end this pytest (and its workers) when PID, the report, is gone
--sk-test-timeout S   per-test limit: past it the process running the test dumps every stack into the
                      log and exits (xdist replaces the worker and reports the test as crashed)
"""
from __future__ import annotations

import faulthandler
import os
import re
import threading
import time

import pytest

from . import journal

STAGE = "tests"


def pytest_addoption(parser):
    group = parser.getgroup("slowfast_kernels gpu-report")
    group.addoption("--sk-journal", default=None)
    group.addoption("--sk-log", default=None)
    group.addoption("--sk-select", default="all", choices=("all", "cuda"))
    group.addoption("--sk-exclude", default=None)
    group.addoption("--sk-test-timeout", type=float, default=0.0)
    group.addoption("--sk-attempt", type=int, default=0)
    group.addoption("--sk-parent-pid", type=int, default=0)


def needs_cuda(item) -> bool:
    """A test needs CUDA when it is marked `cuda`, is skipped without CUDA (a skipif whose reason names
    CUDA: conftest's requires_cuda), is parametrized or named for CUDA, or checks a native op's own input
    validation (test_native_*: two of them crashed the CUDA build of the extension on an H200)."""
    if item.get_closest_marker("cuda") is not None:
        return True
    for mark in item.iter_markers("skipif"):
        if "cuda" in str(mark.kwargs.get("reason", "")).lower():
            return True
    name = getattr(item, "originalname", None) or item.name.split("[")[0]
    params = item.name[len(name):]
    # "cuda" as a word of the name (test_parity_cuda, test_cuda_x) or a parameter (dtype0-cuda, not cuda_graph)
    return bool(re.search(r"(^|_)cuda(_|$)", name) or re.search(r"(?<!\w)cuda(?!\w)", params)
                or name.startswith("test_native"))


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def _emit(config, event: str, **fields) -> None:
    path = config.getoption("--sk-journal")
    if path:
        journal.append(path, dict(stage=STAGE, event=event, attempt=config.getoption("--sk-attempt"),
                                  time=time.time(), **fields))


def pytest_collection_modifyitems(session, config, items):
    excluded = set()
    path = config.getoption("--sk-exclude")
    if path and os.path.exists(path):
        with open(path) as f:
            excluded = {line.strip() for line in f if line.strip()}
    select = config.getoption("--sk-select")
    keep, drop = [], []
    for item in items:
        ok = item.nodeid not in excluded
        if select == "cuda":
            ok = ok and needs_cuda(item) and item.get_closest_marker("slow") is None
        (keep if ok else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if not _is_worker(config) or config.workerinput.get("workerid") == "gw0":
        _emit(config, "pytest_collected", selected=len(keep), deselected=len(drop), excluded=len(excluded))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.pluginmanager.register(_Journal(config), "sk_gpu_report_journal")


class _Journal:
    def __init__(self, config) -> None:
        self.config = config
        self.worker = _is_worker(config)
        self.timeout = config.getoption("--sk-test-timeout")
        self.log = None
        log_path = config.getoption("--sk-log")
        if self.timeout > 0 and log_path:
            self.log = open(log_path, "a")

    def pytest_sessionstart(self, session):
        if not self.worker:
            from .child import end_with_parent

            if self.config.getoption("--sk-parent-pid"):  # started by the report, in a process group of its own
                end_with_parent(self.config.getoption("--sk-parent-pid"))
            _emit(self.config, "pytest_start", pid=os.getpid())

    def pytest_runtest_logstart(self, nodeid, location):
        if not self.worker:
            _emit(self.config, "test_start", nodeid=nodeid)

    def pytest_runtest_logreport(self, report):
        if self.worker:
            return
        longrepr = None
        if report.failed:
            text = str(report.longrepr) if report.longrepr is not None else ""
            longrepr = text[-1500:]
        _emit(self.config, "test_report", nodeid=report.nodeid, when=report.when, outcome=report.outcome,
              duration=getattr(report, "duration", None), wasxfail=hasattr(report, "wasxfail"), longrepr=longrepr)

    def pytest_sessionfinish(self, session, exitstatus):
        if not self.worker:
            _emit(self.config, "pytest_finish", exitstatus=int(exitstatus))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        """The per-test limit, in the process that runs the test: a Python timer that says which test timed
        out (journal and log), dumps the stacks and exits; faulthandler's C watchdog 10 s later in case the
        test holds the GIL."""
        if self.timeout <= 0:
            yield
            return

        def expire():
            _emit(self.config, "test_timeout", nodeid=item.nodeid, limit_s=self.timeout)
            if self.log:
                self.log.write(f"\n+++ {item.nodeid}: over the per-test limit of {self.timeout:.0f} s, stacks:\n")
                self.log.flush()
                faulthandler.dump_traceback(file=self.log, all_threads=True)
                self.log.flush()
            os._exit(1)

        timer = threading.Timer(self.timeout, expire)
        timer.daemon = True
        timer.start()
        if self.log:
            faulthandler.dump_traceback_later(self.timeout + 10, exit=True, file=self.log)
        try:
            yield
        finally:
            timer.cancel()
            if self.log:
                faulthandler.cancel_dump_traceback_later()
