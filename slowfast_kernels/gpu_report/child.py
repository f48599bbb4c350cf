"""One stage in a process of its own (started by the report):

    python -m slowfast_kernels.gpu_report.child MODULE:FUNCTION CONFIG_JSON

CONFIG_JSON: {stage, journal, params, deadline (epoch seconds), attempt, out_dir, log}. stdout and stderr
are the report's log. faulthandler dumps every thread's stack to it on a fatal signal, and once shortly
before the deadline, so a stall shows where it is before the report kills the process.
Exit status: 0 done, 1 the stage raised (recorded), 3 a sticky CUDA error (restart me).
"""
from __future__ import annotations

import faulthandler
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Optional

from .context import RESTART_EXIT_CODE, CudaContextLost, StageContext, _one_line

STALL_DUMP_MARGIN_S = 8.0  # the stacks are written this long before the report's kill
HARD_STOP_GRACE_S = 20.0   # past the deadline by this much, the process group ends itself


def end_with_parent(parent: int, deadline: Optional[float] = None) -> None:
    """A daemon thread that kills this process's group (torch.compile's or xdist's workers too) when the
    process `parent` (the report, which started it) is gone, or `deadline` + HARD_STOP_GRACE_S passes: a
    stage runs in a process group of its own, so nothing else would stop it if the report itself were killed."""
    if os.getpgid(0) != os.getpid():
        return  # not a group of its own (started by hand): there is no group to end

    def watch():
        while os.getppid() == parent and (deadline is None or time.time() < deadline + HARD_STOP_GRACE_S):
            time.sleep(1.0)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="end_with_parent", daemon=True).start()


def resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv) -> int:
    target, config = argv[0], json.loads(argv[1])
    faulthandler.enable(all_threads=True)
    left = config["deadline"] - time.time()
    faulthandler.dump_traceback_later(max(1.0, left - STALL_DUMP_MARGIN_S), exit=False)
    end_with_parent(config["parent_pid"], config["deadline"])
    ctx = StageContext(config["stage"], config["journal"], config["params"], config["deadline"],
                       config.get("attempt", 0), config.get("out_dir"), config.get("log"))
    try:
        resolve(target)(ctx)
    except CudaContextLost as exc:
        print(f"[{ctx.stage}] sticky CUDA error, restarting the stage: {exc}", flush=True)
        return RESTART_EXIT_CODE
    except Exception as exc:  # noqa: BLE001 - recorded for the report, which goes on with the next stage
        traceback.print_exc()
        ctx.emit("stage_error", error=_one_line(exc), traceback=traceback.format_exc()[-4000:])
        return 1
    finally:
        faulthandler.cancel_dump_traceback_later()
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
