"""benchmarks/layers_vs_openvino.py (the per-layer diagnosis): its classification of the fused model's ops and
OpenVINO's convs, and the fused side's profile of a small forward."""
import argparse
import importlib.util
from pathlib import Path

import pytest

from slowfast_kernels import _ext

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "layers_vs_openvino.py"
_spec = importlib.util.spec_from_file_location("layers_vs_openvino", _PATH)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


@pytest.mark.parametrize("x, w, expected", [
    ([1, 3, 32, 224, 224], [8, 3, 5, 7, 7], ("fast", "stem")),
    ([1, 3, 8, 224, 224], [64, 3, 1, 7, 7], ("slow", "stem")),
    ([1, 1024, 8, 196], [256, 1024, 3, 1], ("slow", "3x1x1")),          # the (T, H*W) view
    ([1, 1024, 8, 14, 14], [256, 1024, 3, 1, 1], ("slow", "3x1x1")),    # OpenVINO's 5-d shapes
    ([1, 32, 32, 3136], [64, 32, 7, 1], ("fast", "lateral")),          # the time-strided Fast -> Slow conv
    ([1, 64, 32, 28, 28], [64, 64, 1, 3, 3], ("fast", "1x3x3")),
    ([1, 256, 8, 56, 56], [512, 256, 1, 1, 1], ("slow", "1x1x1")),
])
def test_conv_kind(x, w, expected):
    assert tool.conv_kind(x, w, t_slow=8) == expected


def test_classify_op_reads_the_in_place_conv_and_the_gemms():
    # the in-place (residual) conv's first argument is the accumulator: its x and weight come after
    assert tool.classify_op("mkldnn::_convolution_pointwise_", [[1, 512, 8, 28, 28], [1, 128, 8, 28, 28],
                                                                [512, 128, 1, 1, 1]], 8) == ("slow", "1x1x1")
    assert tool.classify_op("slowfast_kernels::conv3d_winograd", [[1, 64, 32, 28, 28], [36, 64, 64]], 8) \
        == ("fast", "1x3x3")
    assert tool.classify_op("mkldnn::_linear_pointwise", [[392, 1024], [256, 1024]], 8)[0] == "gemm"
    assert tool.classify_op("aten::view", [[1, 2]], 8) is None


@pytest.mark.skipif(_ext.LOAD_ERROR is not None, reason="the fused model's CPU runners are the C++ extension")
def test_fused_side_accounts_for_the_forward():
    """At 32 px the fused side's profile puts the convs and pools of both pathways in their rows; what no layer
    stands for (views, casts, the head) stays a small part."""
    args = argparse.Namespace(threads=1, dtype="fp32", batch=1, size=32)
    profile = tool.fused_side(args)()
    times = profile["times"]
    for row in ("slow stem", "fast stem", "slow 1x1x1", "slow 1x3x3", "slow 3x1x1", "fast lateral", "slow pool",
                "fast pool"):
        assert times.get(row, 0.0) > 0.0, row
    assert times.get("other other", 0.0) < 0.25 * profile["total_ms"]
    assert abs(sum(times.values()) - profile["total_ms"]) < 1e-6 * profile["total_ms"] + 1e-9
