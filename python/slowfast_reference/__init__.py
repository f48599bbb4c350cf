"""Pure-PyTorch SlowFast reference: trainable, no compiled code, the numerical oracle."""
from .lateral import LATERAL_MODES, FuseFastToSlow, time_strided_sampling, time_to_channel
from .models import (
    CONFIGS,
    SlowFast,
    SlowFastConfig,
    build_model,
    slow_r50_8x8,
    slowfast_r50_4x16,
    slowfast_r50_8x8,
    slowfast_r101_8x8,
    slowfast_r101_16x8,
)
from .pack import pack_pathways, slow_frame_indices

__all__ = [
    "CONFIGS", "LATERAL_MODES", "FuseFastToSlow", "SlowFast", "SlowFastConfig", "build_model",
    "pack_pathways", "slow_frame_indices", "slow_r50_8x8", "slowfast_r101_16x8", "slowfast_r101_8x8",
    "slowfast_r50_4x16", "slowfast_r50_8x8", "time_strided_sampling", "time_to_channel",
]
