"""CPU op programs: a forward's dispatcher-level op sequence, recorded once and replayed without the Python
around it.

The fused model's CPU forward is ~117 oneDNN calls and ~100 small ops (views, the stems' casts, pools,
lateral gathers), each reached through module calls, runner lookups and views built in Python. Measured
on the 2-core AVX-512 EPYC (SlowFast R50 8x8, bf16, batch 1, one thread, 32 px so that the fixed costs
show; medians of 30): the forward 20.2 ms, the same ops replayed from a list with their data flow 18.3 ms:
~2 ms of Python a forward, at any input size. CUDA graphs remove this on the GPU; on the CPU nothing in
torch does without a compiler, so the fused model records its backbone once per input signature and
replays the list (FusedSlowFast.cpu_replay).

record(fn, inputs) runs fn() under a TorchDispatchMode that logs every op with its arguments. A tensor
argument is an input slot (one of `inputs`), the output slot of an earlier op, or a constant (weights,
packed weights, biases: kept by reference, no copy). Replaying calls the same ops with the slots
substituted and drops each slot after its last use (no later than the eager forward would). The control
flow is baked in, so a program is only valid where the Python it replaced is a function of the input
signature alone; record refuses (returns no program) when an op returned a Python scalar (a
data-dependent branch may have read it) and the caller records only inputs already checked.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

# One step: (op, args with placeholders, kwargs with placeholders, patches, output slots, slots to drop after).
# A patch fills one argument: (where: "arg" | "kw", position or name, slot) for a tensor, or (where, key,
# [(list index, slot), ...]) for a list holding tensors (copied once per call, then filled).
_Patch = Tuple[str, Any, Union[int, List[Tuple[int, int]]]]


class _Slot:
    """A tensor argument that is not a constant: an input or an earlier op's output."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class OpProgram:
    """A recorded op sequence; call it with tensors like the recorded inputs (same shapes, strides, dtypes;
    None where the recording had None) to get the outputs the recorded function returned."""

    def __init__(self, steps: List[tuple], n_inputs: int, outputs: Any, n_slots: int) -> None:
        self.steps, self.n_inputs, self.n_slots = steps, n_inputs, n_slots
        self.outputs = outputs  # (flat list of slot indices or constants, treespec)

    def __len__(self) -> int:
        return len(self.steps)

    def __call__(self, inputs: Sequence[Optional[torch.Tensor]]) -> Any:
        if len(inputs) != self.n_inputs:
            raise ValueError(f"OpProgram: inputs: expected {self.n_inputs} entries, got {len(inputs)}")
        env: List[Any] = [None] * self.n_slots
        env[:self.n_inputs] = inputs
        for op, args, kwargs, patches, out_slots, drops in self.steps:
            if patches:
                args, kwargs = list(args), dict(kwargs)
                for where, key, slot in patches:
                    target = args if where == "arg" else kwargs
                    if isinstance(slot, int):
                        target[key] = env[slot]
                    else:
                        seq = target[key] = list(target[key])
                        for j, s in slot:
                            seq[j] = env[s]
            out = op(*args, **kwargs)
            if len(out_slots) == 1:
                if out_slots[0] is not None:
                    env[out_slots[0]] = out
            elif out_slots:
                for slot, value in zip(out_slots, tree_flatten(out)[0]):
                    if slot is not None:
                        env[slot] = value
            for slot in drops:
                env[slot] = None
        flat, spec = self.outputs
        return tree_unflatten([env[v.index] if isinstance(v, _Slot) else v for v in flat], spec)


def _constant_queries() -> frozenset:
    """Ops that return a property of the machine, the same every call: left out of a program, not refused."""
    names = ("_is_mkldnn_bf16_supported", "_is_mkldnn_fp16_supported", "_is_mkldnn_acl_supported")
    return frozenset(getattr(torch.ops.mkldnn, n).default for n in names if hasattr(torch.ops.mkldnn, n))


def _forget(recorder: "weakref.ref[_Recorder]", key: int, slot: int) -> None:
    r = recorder()
    if r is not None and r.slot_of.get(key) == slot:
        del r.slot_of[key]


class _Recorder(TorchDispatchMode):
    def __init__(self, inputs: Sequence[Optional[torch.Tensor]]) -> None:
        super().__init__()
        self.constant_queries = _constant_queries()
        self.slot_of: Dict[int, int] = {}  # id(live tensor) -> slot
        self.n_slots = len(inputs)
        self.log: List[tuple] = []
        self.refusal: Optional[str] = None
        for i, t in enumerate(inputs):
            if t is not None:
                self._bind(t, i)

    def _bind(self, t: torch.Tensor, slot: int) -> None:
        key = id(t)
        self.slot_of[key] = slot
        # A dead tensor's id may be reused by a constant: forget it when the tensor goes.
        weakref.finalize(t, _forget, weakref.ref(self), key, slot)

    def _mark(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            slot = self.slot_of.get(id(value))
            return value if slot is None else _Slot(slot)
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(self._mark(v) for v in value)
        return value

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.constant_queries:
            return func(*args, **kwargs)
        marked_args = tuple(self._mark(a) for a in args)
        marked_kwargs = {k: self._mark(v) for k, v in kwargs.items()}
        out = func(*args, **kwargs)
        flat, _ = tree_flatten(out)
        out_slots: List[Optional[int]] = []
        for value in flat:
            if isinstance(value, torch.Tensor):
                slot = self.slot_of.get(id(value))  # an in-place op returns its argument: same slot
                if slot is None:
                    slot = self.n_slots
                    self.n_slots += 1
                    self._bind(value, slot)
                out_slots.append(slot)
            elif value is None:
                out_slots.append(None)
            else:
                out_slots.append(None)
                self.refusal = self.refusal or f"{func} returned a Python {type(value).__name__}"
        self.log.append((func, marked_args, marked_kwargs, out_slots))
        return out


def _patches(args: tuple, kwargs: dict) -> Tuple[tuple, dict, List[_Patch], List[int]]:
    """args and kwargs with None in place of each slot marker, the patches that fill them, the slots read."""
    patches: List[_Patch] = []
    reads: List[int] = []
    for where, items in (("arg", list(enumerate(args))), ("kw", list(kwargs.items()))):
        for key, value in items:
            if isinstance(value, _Slot):
                patches.append((where, key, value.index))
                reads.append(value.index)
            elif isinstance(value, (list, tuple)):
                filled = [(j, v.index) for j, v in enumerate(value) if isinstance(v, _Slot)]
                if filled:
                    patches.append((where, key, filled))
                    reads.extend(slot for _, slot in filled)
    plain = lambda v: None if isinstance(v, _Slot) else v  # noqa: E731 (placeholders, patched per call)
    args = tuple(type(a)(plain(v) for v in a) if isinstance(a, (list, tuple)) else plain(a) for a in args)
    kwargs = {k: type(v)(plain(x) for x in v) if isinstance(v, (list, tuple)) else plain(v)
              for k, v in kwargs.items()}
    return args, kwargs, patches, reads


def record(fn: Callable[[], Any], inputs: Sequence[Optional[torch.Tensor]]) -> Tuple[Any, Optional[OpProgram],
                                                                                         Optional[str]]:
    """fn()'s result, the program that replays it for inputs like `inputs` (the tensors fn reads that may
    change between calls), and why there is no program (None when there is one)."""
    recorder = _Recorder(inputs)
    with recorder:
        result = fn()
    if recorder.refusal is not None:
        return result, None, recorder.refusal
    flat, spec = tree_flatten(result)
    outputs = []
    for value in flat:
        slot = recorder.slot_of.get(id(value)) if isinstance(value, torch.Tensor) else None
        outputs.append(value if slot is None else _Slot(slot))
    kept = {v.index for v in outputs if isinstance(v, _Slot)}
    steps, last_use = [], {}
    for i, (op, args, kwargs, out_slots) in enumerate(recorder.log):
        args, kwargs, patches, reads = _patches(args, kwargs)
        for slot in reads + [s for s in out_slots if s is not None]:
            last_use[slot] = i
        steps.append([op, args, kwargs, patches, out_slots, []])
    for slot, i in last_use.items():
        if slot not in kept:
            steps[i][5].append(slot)
    return result, OpProgram([tuple(s) for s in steps], len(inputs), (outputs, spec), recorder.n_slots), None
