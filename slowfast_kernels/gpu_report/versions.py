"""What the report ran on: GPU, driver, torch, CUDA, cuDNN, triton, Python, the checkout's commit; and the
file-name tag of the machine (h200, h100, ...; cpu<N> without a GPU)."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding slowfast_kernels/


def _run(cmd, cwd=None) -> Optional[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit() -> dict:
    """{commit, commit_dirty} of the checkout, None where it is not a git checkout (or git is missing)."""
    sha = _run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO) if sha else None
    return dict(commit=sha, commit_dirty=bool(status) if status is not None else None)


def machine_info() -> dict:
    """The keys benchmarks/conftest.py's machine_info writes (date, python, torch, cpu, threads, triton, gpu,
    cuda, cudnn, driver, commit), plus the GPU's compute capability, memory and count."""
    info = dict(date=datetime.date.today().isoformat(), python=platform.python_version(), torch=torch.__version__,
                cpu=platform.processor() or platform.machine(), cpus=os.cpu_count(), threads=torch.get_num_threads())
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - a broken triton is a fact to report, not a reason to stop
        info["triton"] = None
    info["cuda"] = torch.version.cuda
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sm=f"{props.major}.{props.minor}", gpu_memory_bytes=props.total_memory,
                    multiprocessors=props.multi_processor_count, gpus=torch.cuda.device_count())
        info["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if info["driver"]:
            info["driver"] = info["driver"].splitlines()[0].strip()
    else:
        info.update(gpu=None, driver=None)
    info.update(commit())
    return info


def machine_tag(gpu_name: Optional[str] = None) -> str:
    """'h200' for 'NVIDIA H200', 'h100' for 'NVIDIA H100 80GB HBM3', 'a100' ...; 'cpu<N>' without a GPU."""
    if gpu_name is None and torch.cuda.is_available():
        gpu_name = torch.cuda.get_device_properties(0).name
    if not gpu_name:
        return f"cpu{os.cpu_count()}"
    model = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Za-z]?)\b", gpu_name.replace("NVIDIA", ""))
    word = model.group(1) if model else gpu_name.split()[-1]
    return re.sub(r"[^a-z0-9]+", "_", word.lower()).strip("_") or "gpu"


def stage(ctx) -> None:
    """The versions stage: one record (suite "machine"), the report's `machine`."""
    ctx.run_case("machine", lambda: ctx.record(dict(suite="machine", **machine_info())))
