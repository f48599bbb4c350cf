"""Compile a Triton launch for sm_90 with no GPU: record the launch, bind it as Triton would, compile, disassemble.

A launcher is run for real on CPU tensors (torch.empty: pages are never touched, so batch-32 activations
cost no memory) inside ``recording()``, which replaces ``JITFunction.run`` and ``Autotuner.run`` so that
``kernel[grid](...)`` stores its arguments instead of launching. ``bind`` then feeds them through Triton's own
binder for a ``GPUTarget("cuda", 90, 32)`` backend: the same i32/i64/pointer signature, divisibility-16 and
==1 specializations and constexprs a launch on an H100/H200 would compile (CPU tensors are 64-byte aligned,
as CUDA allocations are). ``compile_sm90`` runs ``triton.compile`` and reads the cubin with the
``cuobjdump`` that ships in the triton wheel (triton/backends/nvidia/bin).

Compiles go through Triton's on-disk cache (TRITON_CACHE_DIR, default ~/.triton/cache), so a rerun only
disassembles; within a process identical specializations are compiled once.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

try:
    from triton import knobs
except ImportError:  # older triton: no knobs module, no extra launch options
    knobs = None

TARGET = GPUTarget("cuda", 90, 32)
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
CUOBJDUMP = os.path.join(_BIN, "cuobjdump")
PTXAS = os.path.join(_BIN, "ptxas")


def missing_tools() -> Optional[str]:
    """Why sm_90 cubins cannot be built and read here, or None."""
    for tool in (PTXAS, CUOBJDUMP):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing from the triton {triton.__version__} wheel"
    return None


@dataclass
class Launch:
    """One recorded ``kernel[grid](*args, **kwargs)``; configs: the autotuner's configs, else None."""
    fn: JITFunction
    args: tuple
    kwargs: dict
    grid: Any
    configs: Optional[list] = None

    def variants(self) -> Iterator[dict]:
        """Keyword arguments of each launch the call can make: one, or one per autotune config."""
        if self.configs is None:
            yield dict(self.kwargs)
            return
        for cfg in self.configs:
            extra = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            yield dict(self.kwargs, **extra)


@contextlib.contextmanager
def recording() -> Iterator[List[Launch]]:
    """Within: ``kernel[grid](...)`` of any Triton kernel appends a Launch to the yielded list and returns None."""
    launches: List[Launch] = []
    saved = JITFunction.run, Autotuner.run

    def jit_run(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs, grid))

    def tuned_run(self, *args, **kwargs):
        grid = kwargs.pop("grid")
        kwargs.pop("warmup", None)
        fn = self.fn
        while not isinstance(fn, JITFunction):  # heuristics / nested autotuners wrap the JITFunction
            fn = fn.fn
        self.nargs = dict(zip(self.arg_names, args))  # what Autotuner.run sets before pruning
        try:
            configs = list(self.prune_configs(kwargs))  # the configs it would benchmark
        finally:
            self.nargs = None
        launches.append(Launch(fn, args, kwargs, grid, configs))

    JITFunction.run, Autotuner.run = jit_run, tuned_run
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run = saved


@dataclass
class Bound:
    """A launch bound as Triton binds it for sm_90."""
    fn: JITFunction
    args: Dict[str, Any]      # every parameter by name, constexprs included
    signature: Dict[str, str]
    constexprs: dict
    attrs: dict
    options: Any              # the backend's options (num_warps, num_stages, ...)

    @property
    def key(self) -> str:
        return repr((self.fn.__name__, self.signature, sorted(self.constexprs.items()),
                     sorted((k, repr(v)) for k, v in self.attrs.items()), repr(self.options)))


def bind(fn: JITFunction, args: tuple, kwargs: dict) -> Bound:
    """Triton's own binder and argument packing (JITFunction.run's first steps) for an sm_90 target."""
    backend = make_backend(TARGET)
    kwargs = dict(kwargs)
    kwargs.setdefault("debug", False)
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):
        if knobs is not None and hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return Bound(fn, dict(bound_args), signature, constexprs, attrs, options)


@dataclass
class Compiled:
    cubin: bytes
    shared_bytes: int         # dynamic shared memory the launch requests (Triton's metadata.shared)
    sass: str
    res_usage: str
    compile_s: float


_COMPILED: Dict[str, Compiled] = {}


def compile_sm90(b: Bound) -> Compiled:
    """The cubin of a bound launch and its disassembly; one compile per distinct specialization per process."""
    if b.key in _COMPILED:
        return _COMPILED[b.key]
    t0 = time.perf_counter()
    kernel = triton.compile(ASTSource(b.fn, b.signature, b.constexprs, b.attrs), target=TARGET,
                            options=b.options.__dict__)
    seconds = time.perf_counter() - t0
    cubin = kernel.asm["cubin"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = _run([CUOBJDUMP, "-sass", f.name])
        res = _run([CUOBJDUMP, "-res-usage", f.name])
    out = Compiled(cubin, int(kernel.metadata.shared), sass, res, seconds)
    _COMPILED[b.key] = out
    return out


def _run(cmd: List[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])} failed ({done.returncode}): {done.stderr.strip()[:300]}")
    return done.stdout


def programs(launch: Launch, b: Bound) -> int:
    """Programs of the launch: the grid, called with the bound arguments when it is a function."""
    grid = launch.grid(b.args) if callable(launch.grid) else launch.grid
    n = 1
    for g in grid:
        n *= int(g)
    return n


def tensor_bytes(args: Dict[str, Any]) -> int:
    """Bytes of the distinct tensors among the arguments (a tensor passed twice, e.g. as an unused dummy
    pointer, counts once): what the launch must move at least once."""
    seen: Dict[int, int] = {}
    for v in args.values():
        if isinstance(v, torch.Tensor):
            seen[v.data_ptr()] = max(seen.get(v.data_ptr(), 0), v.numel() * v.element_size())
    return sum(seen.values())


def record(call: Callable[[], Any]) -> List[Launch]:
    """The launches `call` makes (it runs with launching disabled)."""
    with recording() as launches:
        call()
    return launches
