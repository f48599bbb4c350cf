"""slowfast_kernels: fused kernels and a fast inference model for SlowFast video networks.

Public API (DESIGN.md): load_checkpoint, temporal_indices, pack_pathways, lateral_fuse, fold_bn,
conv3d_bn_act, fuse. Every op takes backend = auto | triton | cuda | cpu | reference; see
slowfast_kernels.backends for how one is chosen.
"""
from . import _ext, backends
from .backends import BackendUnavailable
from .ops.lateral_fuse import lateral_fuse, lateral_fuse_ref

__version__ = "0.1.0"

__all__ = ["BackendUnavailable", "backends", "lateral_fuse", "lateral_fuse_ref"]
