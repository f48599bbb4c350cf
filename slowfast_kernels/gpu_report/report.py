"""The report: stages run one after another, each under its own time limit, the JSON rewritten after each.

Files in DIR (TAG = the GPU, e.g. h200; cpu<N> for --dry-run):
  TAG-gpu_report.json   the report: machine and versions, per stage its status, the gpu_test_suite record,
                        bench_conv3d / bench_model records (benchmarks/conftest.py's format)
  TAG-gpu_report.jsonl  the journal every process appends to (the report is rebuilt from it)
  TAG-gpu_report.log    the stages' output, pytest's, and the stack dumps of stalls and crashes

An isolated stage runs in a child process (python -m slowfast_kernels.gpu_report.child) in a process group of
its own: at its limit the report kills the whole process group (torch.compile's workers too) and records
the case that was running as not finished; a crash (a segfault, a sticky CUDA error) ends only that
process, and the report starts the stage again from the next case (at most MAX_RESTARTS times).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import journal
from .context import RESTART_EXIT_CODE, StageContext, _one_line
from .timing import finalize
from .versions import REPO, machine_info, machine_tag

MAX_RESTARTS = 3
MIN_STAGE_S = 5.0      # a stage with less time than this left in the total is skipped
KILL_GRACE_S = 2.0     # after the limit, SIGTERM, then this long before SIGKILL


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    target: str          # "module:function", called with a StageContext
    limit_s: float       # default time limit (--limit NAME=SECONDS overrides)
    isolated: bool = True
    doc: str = ""


# Time limits (460 s in all, estimates: no stage has run on a GPU yet): stems ~16 Triton compiles of the
# sweep at 1-3 s each; layers 51 shapes x 3 impls, cuDNN's algorithm search per shape; model 3 torch.compile
# runs of ~30-60 s each, largest batch first; tests 258 tests on 12 workers. TOTAL_LIMIT_S caps the sum at
# 8 minutes with the Python start-up included.
STAGES = (
    Stage("versions", "slowfast_kernels.gpu_report.versions:stage", 30, isolated=False,
          doc="GPU, driver, torch, CUDA, cuDNN, triton, commit"),
    Stage("stems", "slowfast_kernels.gpu_report.kernels:stems", 60,
          doc="Fast / Slow stem to the pooled output: eager, cuDNN, ours (auto, Triton pool fused / separate, "
              "a config sweep), batch 32 bf16"),
    Stage("layers", "slowfast_kernels.gpu_report.kernels:layers", 70,
          doc="every distinct conv of R50 8x8: eager, cuDNN, ours (the plan's runner), batch 32 bf16"),
    Stage("model", "slowfast_kernels.gpu_report.model:end_to_end", 150,
          doc="R50 8x8 at 224, batch 1, 8, 32: fused + CUDA graph vs eager bf16 (+ graph) vs torch.compile"),
    Stage("tests", "slowfast_kernels.gpu_report.suite:test_suite", 150, isolated=False,
          doc="the tests that need CUDA, pytest-xdist, a per-test limit; crashes survive"),
)
TOTAL_LIMIT_S = 465.0  # + ~5 s of Python start-up and the last write: under 8 minutes


def report_paths(out_dir: Path, tag: str) -> Dict[str, Path]:
    stem = f"{tag}-gpu_report"
    return {"json": out_dir / f"{stem}.json", "journal": out_dir / f"{stem}.jsonl", "log": out_dir / f"{stem}.log"}


def _child_env(dry_run: bool, cache_dir: str) -> dict:
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "python")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["SLOWFAST_KERNELS_CACHE"] = cache_dir  # the plan measures its per-shape choices afresh, here
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the plumbing on the CPU, whatever the machine
    import torch

    if dry_run or not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _open_case(jpath: Path, stage: str, attempt: int) -> Optional[str]:
    """The case an attempt began and never ended (it was running when the process died or was killed)."""
    open_case = None
    for e in journal.read(jpath, stage):
        if e.get("attempt") != attempt:
            continue
        if e.get("event") == "case_start":
            open_case = e["case"]
        elif e.get("event") in ("case_end", "case_error") and e.get("case") == open_case:
            open_case = None
    return open_case


def _signal_name(rc: int) -> str:
    if rc < 0:
        try:
            return signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
    return f"exit status {rc}"


class Runner:
    """Runs stages and keeps the report file current."""

    def __init__(self, out_dir: Path, dry_run: bool, params: dict, limits: Dict[str, float],
                 total_limit_s: float, argv: Sequence[str], stream=sys.stdout) -> None:
        self.out_dir, self.dry_run, self.params = out_dir, dry_run, dict(params, dry_run=dry_run)
        self.limits, self.total_limit_s, self.argv, self.stream = limits, total_limit_s, list(argv), stream
        self.tag = f"cpu{os.cpu_count()}" if dry_run else machine_tag()
        self.paths = report_paths(out_dir, self.tag)
        self.start = time.time()
        self.cache_dir = tempfile.mkdtemp(prefix="slowfast_kernels_gpu_report_")
        self.env = _child_env(dry_run, self.cache_dir)
        self.stage_meta: Dict[str, dict] = {}

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _log(self, text: str) -> None:
        with open(self.paths["log"], "a") as f:
            f.write(text)

    def run(self, stages: Sequence[Stage]) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for p in self.paths.values():
            p.unlink(missing_ok=True)
        total_deadline = self.start + self.total_limit_s
        self.planned = [s.name for s in stages]
        for stage in stages:
            limit = min(self.limits.get(stage.name, stage.limit_s), total_deadline - time.time())
            meta = self.stage_meta[stage.name] = dict(limit_s=round(limit, 1), doc=stage.doc)
            if limit < MIN_STAGE_S:
                meta.update(status="skipped", reason=f"the total time limit ({self.total_limit_s:.0f} s) ran out")
            else:
                t0 = time.time()
                self._log(f"\n===== stage {stage.name} (limit {limit:.0f} s) =====\n")
                status, reason, attempts = (self._isolated if stage.isolated else self._inline)(stage, t0 + limit)
                meta.update(status=status, reason=reason, attempts=attempts, seconds=round(time.time() - t0, 2))
            report = self.write()
            s = report["stages"][stage.name]
            self.say(f"gpu-report: {stage.name:9s} {s['status']:8s} {s.get('seconds', 0):7.1f} s  "
                     f"{s['records']} records, {len(s['errors'])} errors{'  (' + s['reason'] + ')' if s.get('reason') else ''}")
        report = self.write(finished=True)
        return report

    def _ctx(self, stage: Stage, deadline: float, attempt: int = 0) -> StageContext:
        ctx = StageContext(stage.name, str(self.paths["journal"]), self.params, deadline, attempt,
                           str(self.out_dir), str(self.paths["log"]))
        ctx.env = dict(self.env)
        return ctx

    def _inline(self, stage: Stage, deadline: float):
        from .child import resolve

        ctx = self._ctx(stage, deadline)
        try:
            resolve(stage.target)(ctx)
        except Exception as exc:  # noqa: BLE001 - recorded; the next stage still runs
            self._log(traceback.format_exc())
            ctx.emit("stage_error", error=_one_line(exc), traceback=traceback.format_exc()[-4000:])
            return "error", _one_line(exc), 1
        if time.time() > deadline + 1:
            return "timeout", f"ran {time.time() - deadline:.0f} s past its limit", 1
        return "ok", None, 1

    def _isolated(self, stage: Stage, deadline: float):
        jpath = self.paths["journal"]
        for attempt in range(MAX_RESTARTS + 1):
            config = dict(stage=stage.name, journal=str(jpath), params=self.params, deadline=deadline,
                          attempt=attempt, out_dir=str(self.out_dir), log=str(self.paths["log"]),
                          parent_pid=os.getpid())
            cmd = [sys.executable, "-m", "slowfast_kernels.gpu_report.child", stage.target, json.dumps(config)]
            with open(self.paths["log"], "ab") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=str(REPO),
                                        start_new_session=True)
                try:
                    rc = proc.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    rc = None
            if rc is None:
                case = _open_case(jpath, stage.name, attempt)
                if case:
                    journal.append(jpath, dict(stage=stage.name, event="case_error", attempt=attempt, case=case,
                                               error="not finished: the stage's time limit ran out"))
                return "timeout", f"stopped at its time limit{' in case ' + repr(case) if case else ''}", attempt + 1
            if rc == 0:
                return "ok", None, attempt + 1
            if rc == 1:
                errs = [e for e in journal.read(jpath, stage.name) if e.get("event") == "stage_error"]
                return "error", errs[-1]["error"] if errs else "the stage's process exited with status 1", attempt + 1
            case = _open_case(jpath, stage.name, attempt)
            why = "sticky CUDA error" if rc == RESTART_EXIT_CODE else f"crashed ({_signal_name(rc)})"
            if case and rc != RESTART_EXIT_CODE:
                journal.append(jpath, dict(stage=stage.name, event="case_error", attempt=attempt, case=case,
                                           error=f"crashed: {_signal_name(rc)} (stacks in the log)"))
            began = any(e.get("event") == "case_start" and e.get("attempt") == attempt
                        for e in journal.read(jpath, stage.name))
            if not began or deadline - time.time() < MIN_STAGE_S or attempt == MAX_RESTARTS:
                return "crashed", f"{why}{' in case ' + repr(case) if case else ''}", attempt + 1
            journal.append(jpath, dict(stage=stage.name, event="note", attempt=attempt,
                                       note=f"{why} in case {case!r}: restarting the stage after it"))
            self._log(f"\n===== stage {stage.name}: {why}, attempt {attempt + 2} =====\n")
        return "crashed", "restarted too often", MAX_RESTARTS + 1

    def write(self, finished: bool = False) -> dict:
        report = build_report(journal.read(self.paths["journal"]), self.stage_meta, self.planned)
        report.update(format="slowfast_kernels gpu-report 1", dry_run=self.dry_run, command=self.argv,
                      params=self.params, total_limit_s=self.total_limit_s,
                      started=datetime.datetime.fromtimestamp(self.start, datetime.timezone.utc).isoformat(),
                      seconds=round(time.time() - self.start, 2), finished=finished,
                      files={k: p.name for k, p in self.paths.items()})
        if report["machine"] is None:
            report["machine"] = machine_info()
        tmp = self.paths["json"].with_suffix(".json.tmp")
        tmp.write_text(json.dumps(journal._clean(report), indent=1, default=str) + "\n")
        os.replace(tmp, self.paths["json"])
        return report


def build_report(events: List[dict], stage_meta: Dict[str, dict], planned: Sequence[str]) -> dict:
    """The report's body from the journal: machine, stages, gpu_test_suite, results, layer_sums."""
    stages, records, machine, suite = {}, [], None, None
    for name in planned:
        evs = [e for e in events if e.get("stage") == name]
        meta = dict(stage_meta.get(name, {}))
        plan = next((e["cases"] for e in evs if e.get("event") == "plan"), None)
        begun = {e["case"] for e in evs if e.get("event") == "case_start"}
        skipped = [dict(case=e["case"], reason=e["reason"]) for e in evs if e.get("event") == "case_skip"]
        errors = [dict(case=e.get("case"), error=e["error"]) for e in evs if e.get("event") in ("case_error", "stage_error")]
        recs = [e["record"] for e in evs if e.get("event") == "record"]
        notes = [e.get("note") or {k: v for k, v in e.items() if k not in ("stage", "event", "attempt", "time")}
                 for e in evs if e.get("event") == "note"]
        for r in recs:
            if r.get("suite") == "machine":
                machine = {k: v for k, v in r.items() if k != "suite"}
            elif r.get("suite") == "gpu_test_suite":
                suite = r
            else:
                records.append(r)
        done = {s["case"] for s in skipped} | begun
        meta.setdefault("status", "not run")
        stages[name] = dict(meta, records=len(recs), errors=errors, skipped=skipped, notes=notes,
                            not_run=[c for c in plan if c not in done] if plan else [])
    if suite is None:
        st = stages.get("tests", {})
        suite = dict(status=st.get("status", "not run"), reason=st.get("reason") or "the tests stage did not run")
    results = finalize(records)
    return dict(machine=machine, stages=stages, gpu_test_suite=suite, results=results,
                layer_sums=layer_sums(results))


def layer_sums(results: List[dict]) -> Dict[str, dict]:
    """Per impl: its layer times summed over the model (each weighted by how often a forward runs it)."""
    sums: Dict[str, dict] = {}
    for r in results:
        if r.get("suite") != "bench_conv3d" or "count" not in r or not r.get("median_s"):
            continue
        s = sums.setdefault(r["impl"], dict(ms=0.0, layers=0, convs=0, gflop=0.0))
        s["ms"] += r["median_s"] * r["count"] * 1e3
        s["layers"] += 1
        s["convs"] += r["count"]
        s["gflop"] += r.get("layer_flops", 0) * r["count"] / 1e9
    for s in sums.values():
        s["tflops"] = s["gflop"] / s["ms"] if s["ms"] else None
    return sums


def run_report(out_dir, stages: Optional[Sequence[Stage]] = None, dry_run: bool = False,
               limits: Optional[Dict[str, float]] = None, total_limit_s: float = TOTAL_LIMIT_S,
               params: Optional[dict] = None, argv: Sequence[str] = (), stream=sys.stdout) -> dict:
    """Run the stages (default: all of STAGES) and write DIR/TAG-gpu_report.json; returns the report."""
    runner = Runner(Path(out_dir), dry_run, params or {}, limits or {}, total_limit_s, argv, stream)
    try:
        report = runner.run(list(stages or STAGES))
    finally:
        import shutil

        shutil.rmtree(runner.cache_dir, ignore_errors=True)
    report["path"] = str(runner.paths["json"])
    return report
