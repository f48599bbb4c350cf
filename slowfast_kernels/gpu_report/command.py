"""The gpu-report subcommand: its options and the summary it prints."""
from __future__ import annotations

import argparse
import sys

from .report import STAGES, TOTAL_LIMIT_S, run_report

DESCRIPTION = (
    "Measure what an H100/H200 must measure, in one command of at most 8 minutes: versions; the stems against "
    "cuDNN (with a Triton config sweep); every conv layer of R50 8x8, ours vs cuDNN, batch 32 bf16; end to end "
    "at batch 1, 8, 32: fused (CUDA graphs) vs eager bf16 (with and without a graph) vs torch.compile; the "
    "tests that need CUDA (pytest-xdist, a per-test limit, crashes survived). Writes DIR/TAG-gpu_report.json "
    "(rewritten after every stage), TAG-gpu_report.jsonl (the journal) and TAG-gpu_report.log.")


def _limits(items, stage_names):
    from ..cli.errors import UsageError

    limits = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in stage_names:
            raise UsageError(f"--limit {item}: expected STAGE=SECONDS with STAGE one of {', '.join(stage_names)}")
        try:
            limits[name] = float(value)
        except ValueError:
            raise UsageError(f"--limit {item}: SECONDS must be a number, got {value!r}") from None
        if limits[name] <= 0:
            raise UsageError(f"--limit {item}: SECONDS must be positive")
    return limits


def _batches(text):
    try:
        batches = [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}") from None
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes, got {text!r}")
    return batches


def add_parser(sub, epilog: str) -> argparse.ArgumentParser:
    names = [s.name for s in STAGES]
    limits = ", ".join(f"{s.name} {s.limit_s:.0f}" for s in STAGES)
    p = sub.add_parser("gpu-report", help="on a GPU machine: tests, kernels, layers and the model against cuDNN and "
                                          "torch.compile, one JSON report (<= 8 minutes)",
                       description=DESCRIPTION, epilog=epilog)
    p.add_argument("--out", required=True, metavar="DIR", help="where the report goes (created if missing)")
    p.add_argument("--dry-run", action="store_true",
                   help="every stage's plumbing on the CPU with tiny shapes (under a minute): CI's check")
    p.add_argument("--stages", default=",".join(names), metavar="LIST",
                   help=f"comma-separated stages to run, in order (default: {','.join(names)})")
    p.add_argument("--limit", action="append", default=[], metavar="STAGE=SECONDS",
                   help=f"a stage's time limit (repeatable; defaults: {limits} s)")
    p.add_argument("--total-limit", type=float, default=TOTAL_LIMIT_S, metavar="SECONDS",
                   help=f"all stages together (default {TOTAL_LIMIT_S:.0f}); a stage gets what is left at most")
    p.add_argument("--batches", type=_batches, default=None, metavar="LIST",
                   help="end-to-end batch sizes (default 1,8,32; dry run 1,2)")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="timed samples per measurement (default 20; dry run 2)")
    p.add_argument("--test-workers", type=int, default=None, metavar="N",
                   help="pytest-xdist workers (default: CPUs - 2, at most 12; 0: no xdist)")
    p.add_argument("--test-timeout", type=float, default=None, metavar="SECONDS",
                   help="per-test limit (default 60)")
    p.add_argument("--tests-select", choices=("cuda", "all"), default="cuda",
                   help="cuda: the tests that need CUDA, none marked slow (default); all: every test")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p.set_defaults(func=command)
    return p


def command(args, debug: bool) -> int:
    from ..cli.errors import UsageError

    names = [s.name for s in STAGES]
    wanted = [n.strip() for n in args.stages.split(",") if n.strip()]
    bad = [n for n in wanted if n not in names]
    if bad or not wanted:
        raise UsageError(f"--stages {args.stages}: expected a comma-separated list of {', '.join(names)}")
    stages = [s for n in wanted for s in STAGES if s.name == n]
    params = dict(batches=args.batches, rounds=args.rounds, test_workers=args.test_workers,
                  test_timeout_s=args.test_timeout, tests_select=args.tests_select)
    report = run_report(args.out, stages=stages, dry_run=args.dry_run, limits=_limits(args.limit, names),
                        total_limit_s=args.total_limit, params=params, argv=sys.argv)
    print(summary(report))
    failed = [n for n, s in report["stages"].items() if s["status"] not in ("ok", "skipped")]
    return 1 if failed else 0


def summary(report: dict) -> str:
    """A few lines: the test counts, the end-to-end medians, the stems, the layer sums."""
    lines = [f"gpu-report: {report['path']} ({report['seconds']:.0f} s)"]
    t = report["gpu_test_suite"]
    if "passed" in t:
        lines.append(f"  tests: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped, {t['errors']} errors, "
                     f"{t['crashed']} crashed, {t['timed_out']} timed out"
                     + (f"; failures {', '.join(t['failures'] + t['crashes'] + t['timeouts'])[:300]}"
                        if t["failures"] or t["crashes"] or t["timeouts"] else ""))
    else:
        lines.append(f"  tests: {t.get('status')} ({t.get('reason')})")
    for r in report["results"]:
        if r.get("suite") == "bench_model" and r["impl"] in ("fused_graph", "fused", "eager", "compile") \
                and r.get("median_s"):
            extra = f" ({r['variant']})" if r.get("variant") else ""
            lines.append(f"  {r['case']:38s} {r['impl']:12s} {r['median_s'] * 1e3:9.2f} ms{extra}")
        elif r.get("suite") == "bench_conv3d" and "count" not in r and r.get("median_s") and not r.get("sweep"):
            lines.append(f"  {r['case']:38s} {r['impl']:22s} {r['median_s'] * 1e3:9.3f} ms  rel_err {r['rel_err']:.1e}")
    for impl, s in report["layer_sums"].items():
        lines.append(f"  conv layers summed: {impl:8s} {s['ms']:8.2f} ms over {s['layers']} shapes / {s['convs']} convs")
    return "\n".join(lines)
