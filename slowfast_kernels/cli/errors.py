"""Exit statuses of the command line and the error that carries a bad option to main()."""
from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1          # anything else: a bad checkpoint file, a failure inside the model, ...
EXIT_USAGE = 2          # a bad option or argument, found before any model is built
EXIT_VIDEOS_FAILED = 3  # the run finished, but some videos could not be decoded (their lines hold "error")
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (``| head``), as coreutils exit

DEBUG_ENV = "SLOWFAST_KERNELS_DEBUG"


class UsageError(Exception):
    """A bad option or argument; the message names it first (``--crop 300: ...``). Exit status 2."""
