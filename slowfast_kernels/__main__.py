"""python -m slowfast_kernels {demo, classify, bench, backends}: see slowfast_kernels.cli."""
import sys

from slowfast_kernels.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
