"""Integer arguments: Python ints and numpy integers (PyTorchVideo's modules carry np.int64 strides) are
accepted wherever PyTorch accepts them, and stored as Python ints; bool is not an int here."""
from __future__ import annotations

import numbers
from typing import Optional


def is_int(value) -> bool:
    """An int or a numpy integer (numbers.Integral), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_int(value, name: str, min_value: Optional[int] = None, where: str = "") -> int:
    """value as a Python int, or a ValueError naming the argument (`where` prefixes it, e.g. "lateral_fuse: ")."""
    bound = "" if min_value is None else f" >= {min_value}"
    if not is_int(value):
        raise ValueError(f"{where}{name}: expected an int{bound}, got {value!r}")
    value = int(value)
    if min_value is not None and value < min_value:
        raise ValueError(f"{where}{name}: expected an int{bound}, got {value}")
    return value
