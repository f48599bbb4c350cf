"""Shape arithmetic shared by the op layer (ops/) and the kernel layer (triton/).

This module sits below both: it imports only torch, so triton/ never needs to import ops/ (ops/ imports
triton/ lazily, when a Triton backend runs).
"""
from __future__ import annotations

from typing import Sequence, Tuple


def output_shape(x_shape: Sequence[int], w_shape: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int]) -> Tuple[int, int, int, int, int]:
    """[N, C_out, T_out, H_out, W_out] of a conv3d of an input of x_shape ([N, C_in, T, H, W]) with a weight
    of w_shape ([C_out, C_in, kd, kh, kw]): floor((size + 2 * pad - dil * (k - 1) - 1) / stride) + 1."""
    spatial = [(x_shape[2 + i] + 2 * padding[i] - dilation[i] * (w_shape[2 + i] - 1) - 1) // stride[i] + 1
               for i in range(3)]
    return (x_shape[0], w_shape[0], *spatial)
