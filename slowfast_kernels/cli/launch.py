"""torchrun with the command's exit status: python -m slowfast_kernels torchrun [TORCHRUN OPTIONS] classify ...
runs torch.distributed.run's launcher, in this process, with `-m slowfast_kernels classify ...` as the workers.

Plain `torchrun ... -m slowfast_kernels classify` works too, but torchrun turns any worker status other than
0 into a ChildFailedError traceback and its own status 1: a run in which videos failed (rank 0 exits 3, after
it has merged every rank's lines and printed the summary) ends that way. This launcher keeps the workers'
status instead: when each failed rank exited with a status of this command line (1 error, 2 bad option, 3
videos failed, 130 interrupted) the ranks have said why on stderr, and it exits with that status, adding
nothing; a rank killed by a signal, or ranks with different statuses, get one line naming them.
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import List

from .errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, EXIT_VIDEOS_FAILED

PROG = "python -m slowfast_kernels torchrun"
USAGE = f"usage: {PROG} [TORCHRUN OPTIONS] COMMAND [ARGS]  (e.g. --nproc-per-node 2 classify videos/ -o out.jsonl)"
OWN_STATUSES = (EXIT_ERROR, EXIT_USAGE, EXIT_VIDEOS_FAILED, EXIT_INTERRUPTED)


class _DropOwnStatus(logging.Filter):
    """torchrun's agent logs 'failed (exitcode: 3) local_rank: 0 ...' as an error: a status of ours is not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg.startswith("failed (exitcode:") and record.args and record.args[0] in OWN_STATUSES)


def _describe(rank: int, exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"rank {rank} was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"rank {rank} was killed by signal {-exitcode}"
    return f"rank {rank} exited with status {exitcode}"


def torchrun(argv: List[str]) -> int:
    """Launch the workers; returns the run's exit status (see the module docstring)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__.split("\n\n", 1)[1].strip() +
              "\n\nTORCHRUN OPTIONS: python -m torch.distributed.run --help")
        return 0
    from torch.distributed import run as torch_run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torch_run.parse_args(argv)  # torchrun's own errors: its usage line, status 2
    if not (args.module and args.training_script == "slowfast_kernels"):  # `... classify ARGS`
        if args.module or args.no_python:
            print(f"{PROG}: error: give the command (classify ...), not -m or --no-python", file=sys.stderr)
            return EXIT_USAGE
        args.training_script_args = [args.training_script, *args.training_script_args]
        args.training_script, args.module = "slowfast_kernels", True
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_DropOwnStatus())
    try:
        torch_run.run(args)
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in sorted(exc.failures.items())}
        _, first = exc.get_first_failure()
        if len(set(codes.values())) == 1 and first.exitcode in OWN_STATUSES:
            return first.exitcode
        print(f"{PROG}: error: " + ", ".join(_describe(r, c) for r, c in codes.items()), file=sys.stderr)
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode
    return 0
