"""gpu-report: the --dry-run runs every stage's plumbing on the CPU and writes a complete report; a stage
that raises, crashes or overruns its limit is recorded as such and the next stage still runs; the tests
stage survives a segfaulting and a hanging test and names them."""
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slowfast_kernels.cli import main
from slowfast_kernels.gpu_report import Stage, run_report
from slowfast_kernels.gpu_report import journal, suite
from slowfast_kernels.gpu_report.context import StageContext

REPO = Path(__file__).resolve().parents[1]
RECORD_KEYS = {"suite", "case", "impl", "baseline", "median_s", "iqr_s", "min_s", "max_s", "rounds"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_report")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "python"),
                                                       os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "slowfast_kernels", "gpu-report", "--out", str(out), "--dry-run"],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=600)
    reports = list(out.glob("*-gpu_report.json"))
    assert len(reports) == 1, f"no report in {out}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done, json.loads(reports[0].read_text()), out


def test_dry_run_every_stage_ran(dry_run):
    done, report, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["dry_run"] is True and report["finished"] is True
    assert list(report["stages"]) == ["versions", "stems", "layers", "model", "tests"]
    for name, stage in report["stages"].items():
        assert stage["status"] == "ok", (name, stage)
        assert stage["errors"] == [] and stage["not_run"] == [], (name, stage)
        assert stage["records"] > 0, name
        assert all(s["reason"] for s in stage["skipped"]), (name, stage["skipped"])
        assert 0 < stage["seconds"] <= stage["limit_s"] + 5, (name, stage)
    for f in report["files"].values():
        assert (out / f).exists()


def test_dry_run_versions_and_test_suite(dry_run):
    _, report, _ = dry_run
    for key in ("torch", "triton", "cuda", "cudnn", "gpu", "driver", "commit", "python", "date"):
        assert key in report["machine"], key
    assert report["machine"]["torch"].split("+")[0] == __import__("torch").__version__.split("+")[0]
    t = report["gpu_test_suite"]
    for key in ("passed", "failed", "skipped", "errors", "crashed", "timed_out"):
        assert isinstance(t[key], int), key
    assert t["passed"] > 0 and t["selected"] == t["passed"] + t["failed"] + t["skipped"] + t["errors"] \
        + t["crashed"] + t["timed_out"]
    assert t["failures"] == [] and t["crashes"] == []


def test_dry_run_records_match_the_benchmarks_format(dry_run):
    _, report, _ = dry_run
    results = report["results"]
    for rec in results:
        assert RECORD_KEYS <= set(rec), rec
        assert rec["median_s"] > 0 and rec["iqr_s"] >= 0 and rec["min_s"] <= rec["median_s"] <= rec["max_s"]
    stems = {(r["case"], r["impl"]) for r in results if r["suite"] == "bench_conv3d" and "count" not in r}
    for name in ("fast_stem", "slow_stem"):
        for impl in ("eager", "onednn", "fused", "triton_pool_fused", "triton_pool_separate"):
            assert (name, impl) in stems
    assert any(r.get("sweep") and r.get("config") for r in results)
    layers = [r for r in results if r["suite"] == "bench_conv3d" and "count" in r]
    assert {r["impl"] for r in layers} == {"eager", "onednn", "fused"}
    assert all(r["variant"] for r in layers if r["impl"] == "fused")
    assert set(report["layer_sums"]) == {"eager", "onednn", "fused"}
    for r in results:
        if r["suite"] == "bench_conv3d":
            assert r["parity_ok"] and r["speedup_vs_baseline"] > 0, r
            assert r["impl"] == "eager" or r["speedup_vs_eager"] > 0, r
    model = {r["impl"]: r for r in results if r["suite"] == "bench_model"}
    assert {"fused", "eager_fp32_ncdhw", "compile_default", "eager", "compile"} <= set(model)
    assert model["fused"]["speedup_vs_eager"] > 0 and model["fused"]["speedup_vs_compile"] > 0
    assert model["compile_default"]["compile_s"] > 0 and model["fused"]["first_call_s"] > 0
    assert all(r["rel_err"] < 1e-4 for r in model.values())  # fp32 on the CPU


PROBE = '''
import ctypes, time

def record(ctx, impl, median_s, baseline=False):
    ctx.record(dict(suite="bench_model", case="probe", impl=impl, baseline=baseline, median_s=median_s,
                    iqr_s=0.0, min_s=median_s, max_s=median_s, rounds=1))

def raises(ctx):
    raise RuntimeError("injected failure")

def crashes_once(ctx):
    ctx.plan(["one", "two", "three", "four"])
    ctx.run_case("one", lambda: record(ctx, "eager", 2.0, baseline=True))
    ctx.run_case("two", lambda: ctx.string_at_is_no_attribute)
    ctx.run_case("three", lambda: ctypes.string_at(0))
    ctx.run_case("four", lambda: record(ctx, "fast", 0.5))

def hangs(ctx):
    ctx.plan(["sleep", "never"])
    ctx.run_case("sleep", lambda: time.sleep(600))
    ctx.run_case("never", lambda: None)
'''


def test_failing_stages_are_recorded_and_the_next_ones_run(tmp_path, monkeypatch):
    (tmp_path / "gpu_report_probe.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    stages = [Stage("raises", "gpu_report_probe:raises", 30, isolated=False),
              Stage("raises_isolated", "gpu_report_probe:raises", 60),
              Stage("crashes", "gpu_report_probe:crashes_once", 90),
              Stage("hangs", "gpu_report_probe:hangs", 12),
              Stage("versions", "slowfast_kernels.gpu_report.versions:stage", 30, isolated=False)]
    report = run_report(tmp_path / "out", stages=stages, dry_run=True, total_limit_s=400, stream=io.StringIO())
    st = report["stages"]
    assert st["raises"]["status"] == "error" and "injected failure" in st["raises"]["reason"]
    assert st["raises_isolated"]["status"] == "error" and "injected failure" in st["raises_isolated"]["reason"]
    # a case that raises is an error of that case; a segfault ends the process, the stage restarts after it
    crashes = st["crashes"]
    assert crashes["status"] == "ok" and crashes["attempts"] == 2, crashes
    errors = {e["case"]: e["error"] for e in crashes["errors"]}
    assert set(errors) == {"two", "three"} and "AttributeError" in errors["two"] and "SIGSEGV" in errors["three"]
    probe = {r["impl"]: r for r in report["results"] if r["case"] == "probe"}
    assert probe["fast"]["speedup_vs_eager"] == pytest.approx(4.0)
    hangs = st["hangs"]
    assert hangs["status"] == "timeout" and hangs["seconds"] < 12 + 10, hangs
    if hangs["errors"]:  # the case began within the limit (the child's import can take most of it)
        assert hangs["errors"] == [{"case": "sleep", "error": "not finished: the stage's time limit ran out"}]
        assert hangs["not_run"] == ["never"]
    assert st["versions"]["status"] == "ok" and report["machine"]["torch"]
    on_disk = json.loads(Path(report["path"]).read_text())
    assert on_disk["stages"] == json.loads(json.dumps(st))


CRASHY = '''
import ctypes, time

def test_a_passes():
    pass

def test_b_segfaults():
    ctypes.string_at(0)

def test_c_fails():
    assert 1 == 2

def test_d_hangs():
    time.sleep(600)

def test_e_passes():
    pass
'''


def test_the_test_stage_survives_crashing_and_hanging_tests(tmp_path):
    (tmp_path / "test_crashy.py").write_text(textwrap.dedent(CRASHY))
    jpath = tmp_path / "journal.jsonl"
    params = dict(tests_paths=["test_crashy.py"], tests_root=str(tmp_path), tests_select="all", test_timeout_s=2,
                  test_workers=0)
    ctx = StageContext("tests", str(jpath), params, __import__("time").time() + 300, out_dir=str(tmp_path),
                       log_path=str(tmp_path / "log.txt"))
    ctx.env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "python"), os.environ.get("PYTHONPATH", "")])
    suite.test_suite(ctx)
    rec = next(e["record"] for e in journal.read(jpath) if e.get("event") == "record")
    assert (rec["passed"], rec["failed"], rec["crashed"], rec["timed_out"], rec["not_run"]) == (2, 1, 1, 1, 0), rec
    assert rec["failures"] == ["test_crashy.py::test_c_fails"]
    assert rec["crashes"] == ["test_crashy.py::test_b_segfaults"]
    assert rec["timeouts"] == ["test_crashy.py::test_d_hangs"]
    assert "assert 1 == 2" in rec["details"]["test_crashy.py::test_c_fails"]
    assert "over the per-test limit" in (tmp_path / "log.txt").read_text()


def test_needs_cuda_selection():
    from slowfast_kernels.gpu_report.pytest_plugin import needs_cuda

    class Item:
        def __init__(self, nodeid, markers=(), reason=""):
            self.nodeid, self.name = nodeid, nodeid.split("::")[-1]
            self.originalname = self.name.split("[")[0]
            self._markers, self._reason = set(markers), reason

        def get_closest_marker(self, name):
            return object() if name in self._markers else None

        def iter_markers(self, name):
            if name == "skipif" and self._reason:
                yield type("Mark", (), {"kwargs": {"reason": self._reason}})()

    assert needs_cuda(Item("t.py::test_x", markers=["cuda"]))
    assert needs_cuda(Item("t.py::test_x", reason="needs a CUDA GPU"))
    assert needs_cuda(Item("t.py::test_parity[fp32-cuda]"))
    assert needs_cuda(Item("t.py::test_native_op_validates_itself"))
    assert needs_cuda(Item("t.py::test_cuda_matches_reference[x]"))
    assert not needs_cuda(Item("t.py::test_parity[fp32-cpu]"))
    assert not needs_cuda(Item("t.py::test_api[fuse(model, cuda_graph=auto)]"))
    assert not needs_cuda(Item("t.py::test_cudart_free_name"))
    assert not needs_cuda(Item("t.py::test_x", reason="needs PyAV"))


@pytest.mark.parametrize("argv, message", [
    (["--limit", "nope=3"], "--limit nope=3: expected STAGE=SECONDS"),
    (["--limit", "tests=soon"], "SECONDS must be a number"),
    (["--stages", "tests,bogus"], "--stages tests,bogus: expected"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["gpu-report", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # found before anything ran
