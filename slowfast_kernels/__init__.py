"""slowfast_kernels: fused kernels and a fast inference model for SlowFast video networks.

Public API (DESIGN.md): load_checkpoint, temporal_indices, pack_pathways, lateral_fuse, fold_bn,
conv3d_bn_act, conv3d_bn_act_maxpool, fuse. Every op takes backend = auto | triton | cuda | cpu | reference; see
slowfast_kernels.backends for how one is chosen.

Importing this package before torch makes OpenMP wait passively (OMP_WAIT_POLICY=PASSIVE, unless the
environment already sets OMP_WAIT_POLICY, GOMP_SPINCOUNT or KMP_BLOCKTIME): OpenMP reads its policy once,
when torch loads it, so after ``import torch`` nothing can change it (``OMP_WAIT_POLICY_SET`` says whether
this import set it). DESIGN.md, "Threads under load".
"""
import os as _os
import sys as _sys

_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# OpenMP's default active wait spins a worker thread ~ms after every parallel region: with another process on
# one of its cores the next region waits for that thread's time slice (R50 fused, 2 threads, one core busy:
# 2.0 s a forward against 0.77 s passive).
OMP_WAIT_POLICY_SET = "torch" not in _sys.modules and not any(v in _os.environ for v in _WAIT_VARS)
if OMP_WAIT_POLICY_SET:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from . import _ext, backends  # noqa: E402
from .backends import BackendUnavailable
from .ops.lateral_fuse import lateral_fuse, lateral_fuse_ref
from .checkpoints import load_checkpoint
from . import io  # noqa: E402  (PyAV is imported only when a video is read)
from .ops.pack_pathways import pack_pathways, pack_pathways_ref, temporal_indices
from .ops.conv3d_bn_act import conv3d_bn_act, conv3d_bn_act_ref, fold_bn
from .ops.conv3d_bn_act_maxpool import conv3d_bn_act_maxpool, conv3d_bn_act_maxpool_ref
from .modules import Conv3dBNAct, Conv3dBNActMaxPool
from . import tuning
from .fuse import fuse
from . import export  # noqa: E402  (onnxruntime and the ONNX exporter are imported only when exporting)
from . import presets, sampling, scoring  # noqa: E402  (test protocols: presets, clip sampling, scoring)
# Detection (AVA): the RoI head op and the fused detector
from .ops.roi_align_pool import roi_align_pool, roi_align_pool_ref
from .fuse_detection import FusedSlowFastDetector, fuse_detector

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable", "Conv3dBNAct", "Conv3dBNActMaxPool", "backends", "conv3d_bn_act", "conv3d_bn_act_maxpool",
    "conv3d_bn_act_maxpool_ref", "conv3d_bn_act_ref", "fold_bn", "fuse", "io",
    "lateral_fuse", "lateral_fuse_ref", "load_checkpoint", "pack_pathways", "pack_pathways_ref", "presets", "sampling",
    "scoring", "temporal_indices", "tuning",
    "FusedSlowFastDetector", "fuse_detector", "roi_align_pool", "roi_align_pool_ref",
]
