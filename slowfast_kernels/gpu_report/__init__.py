"""gpu-report: everything an H100/H200 must measure, in one command of at most 8 minutes.

    python -m slowfast_kernels gpu-report --out DIR [--dry-run]

Stages (report.STAGES; each with its own time limit, --limit NAME=SECONDS): versions, stems (the stem
kernels against cuDNN, a config sweep), layers (every conv of R50 8x8, ours against cuDNN), model (end to
end at batch 1, 8, 32: fused vs eager vs torch.compile), tests (the tests that need CUDA). The report,
DIR/TAG-gpu_report.json, is rewritten after every stage; see report.py for the files and the isolation,
timing.py for how things are timed and the record format (benchmarks/conftest.py's).
"""
from .report import STAGES, TOTAL_LIMIT_S, Stage, run_report

__all__ = ["STAGES", "Stage", "TOTAL_LIMIT_S", "run_report"]
