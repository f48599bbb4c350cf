"""The plan's CPU rules keyed by the ISA found at run time (slowfast_kernels.cpu_isa), with the CPU faked;
bf16 on a CPU without native bf16; the OpenMP wait default; the CPU benchmark worker's skips."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slowfast_kernels as sk
from slowfast_kernels import cpu_isa
from slowfast_kernels.ops.conv3d_small_cin import small_cin_wins
from slowfast_kernels.ops.conv3d_winograd import winograd_wins
from slowfast_kernels.ops.conv3d_winograd_time import winograd_time_wins

AMD_AVX512 = cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC 9654", frozenset({"avx2", "avx512f", "avx512bw", "avx512_bf16"}))
INTEL_AMX = cpu_isa.CpuIsa("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+",
                           frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}))
AVX2 = cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC 7B13", frozenset({"avx2", "fma"}))
PLAIN = cpu_isa.CpuIsa("unknown", "x86_64", frozenset())
NATIVE = pytest.mark.skipif(sk._ext.LOAD_ERROR is not None, reason="needs the native extension")
FAST_STEM = ((8, 3, 5, 7, 7), (1, 2, 2), (2, 3, 3), (1, 1, 1))


def test_tier_and_native_bf16_from_the_flags():
    assert [c.tier for c in (INTEL_AMX, AMD_AVX512, AVX2, PLAIN)] == ["amx", "avx512", "avx2", "default"]
    assert INTEL_AMX.native_bf16 and AMD_AVX512.native_bf16 and not AVX2.native_bf16
    rec = INTEL_AMX.record()
    assert rec["cpu_model"] == INTEL_AMX.model and rec["cpu_isa_tier"] == "amx" and "amx_tile" in rec["cpu_flags"]
    zen5 = cpu_isa.CpuIsa("AuthenticAMD", "AMD EPYC", frozenset({"avx512f"}), "AVX512", "26", "2").record()
    assert (zen5["cpu_family"], zen5["cpu_model_number"]) == ("26", "2")


def test_this_machine_is_read():
    isa = cpu_isa.current()
    assert isa.model and isa.tier in ("amx", "avx512", "avx2", "default")
    if Path("/proc/cpuinfo").exists():
        assert isa.flags and isa.vendor != "unknown"
        if isa.vendor in ("AuthenticAMD", "GenuineIntel"):  # x86 lists "cpu family" and "model"
            assert isa.family.isdigit() and isa.model_number.isdigit()


def test_override_is_scoped():
    real = cpu_isa.current()
    with cpu_isa.override(INTEL_AMX):
        assert cpu_isa.current() is INTEL_AMX
    assert cpu_isa.current() == real


@NATIVE
def test_fast_stem_rule_by_isa():
    """The small-C_in kernel was fitted on an AMD EPYC with AVX-512; oneDNN runs the Fast stem on an AMX Xeon
    (measured faster there) and without AVX-512 (the kernel's portable loop was 19x slower)."""
    x = torch.randn(1, 3, 4, 16, 16)
    expected = {AMD_AVX512: True, INTEL_AMX: False, AVX2: False, PLAIN: False}
    for isa, wins in expected.items():
        with cpu_isa.override(isa):
            assert small_cin_wins(x, *FAST_STEM) is wins, isa.tier


@NATIVE
def test_winograd_rules_by_isa():
    w64, w256 = (64, 64, 1, 3, 3), (256, 256, 1, 3, 3)
    with cpu_isa.override(AMD_AVX512):
        assert winograd_wins((1, 64, 8, 56, 56), w64) and winograd_wins((1, 256, 8, 14, 14), w256)
        assert not winograd_wins((1, 512, 8, 7, 7), (512, 512, 1, 3, 3))  # its 36 MB filter: oneDNN faster
        assert not winograd_wins((1, 256, 8, 7, 7), (512, 256, 1, 3, 3))
    with cpu_isa.override(AVX2):
        assert not winograd_wins((1, 64, 8, 56, 56), w64) and winograd_wins((1, 256, 8, 14, 14), w256)
    with cpu_isa.override(PLAIN):
        assert not winograd_wins((1, 256, 8, 14, 14), w256)
    x = torch.randn(1, 1024, 8, 2, 2)
    for isa in (AMD_AVX512, INTEL_AMX, AVX2, PLAIN):
        with cpu_isa.override(isa):
            assert winograd_time_wins(x, (256, 1024, 3, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1))


def test_time_gemm_rule_by_isa():
    """The Slow pathway's wide temporal convs go to TimeGemmConv on AMX in bf16 only (fitted there)."""
    from slowfast_kernels.plan import time_gemm_wins

    geometry = ((1, 1, 1), (1, 0, 0), (1, 1, 1))
    x = torch.randn(1, 1024, 8, 14, 14).bfloat16().contiguous(memory_format=torch.channels_last_3d)
    for isa in (AMD_AVX512, INTEL_AMX, AVX2, PLAIN):
        with cpu_isa.override(isa):
            assert time_gemm_wins(x, (256, 1024, 3, 1, 1), *geometry) is (isa is INTEL_AMX), isa.tier
    with cpu_isa.override(INTEL_AMX):
        assert not time_gemm_wins(x.float(), (256, 1024, 3, 1, 1), *geometry)      # fp32: oneDNN's conv
        assert not time_gemm_wins(x, (256, 1024, 1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1))  # 1x1: oneDNN
        narrow = x[:, :256].contiguous(memory_format=torch.channels_last_3d)
        assert time_gemm_wins(narrow, (256, 256, 3, 1, 1), *geometry) is False      # C_in < 512: oneDNN
        small = x[..., :7, :7].contiguous(memory_format=torch.channels_last_3d)
        assert time_gemm_wins(small, (512, 1024, 3, 1, 1), *geometry) is False      # 392 rows: oneDNN
        assert time_gemm_wins(x, (512, 1024, 3, 1, 1), *geometry)                   # 1568 rows: the GEMMs
        assert not time_gemm_wins(x.contiguous(), (256, 1024, 3, 1, 1), *geometry)  # NCDHW: no view


@NATIVE
def test_plan_stem_runner_follows_the_isa():
    """The fused model's Fast stem layer (plan.FoldedConv) takes the runner its CPU's rule names."""
    from slowfast_kernels.plan import FoldedConv, OneDNNConv, SmallCinConv

    conv = torch.nn.Conv3d(3, 8, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False)
    bn = torch.nn.BatchNorm3d(8).eval()
    x = torch.randn(1, 3, 4, 16, 16).contiguous(memory_format=torch.channels_last_3d)
    for isa, kind in ((AMD_AVX512, SmallCinConv), (INTEL_AMX, OneDNNConv), (AVX2, OneDNNConv)):
        layer = FoldedConv(conv, bn, "relu", "cpu")
        with cpu_isa.override(isa):
            y = layer.run(x)
        with torch.no_grad():
            torch.testing.assert_close(y, torch.relu(bn(conv(x))), rtol=1e-4, atol=1e-4)
        assert [type(r) for r in layer._runners[None].values()] == [kind], isa.tier


def test_bf16_on_a_cpu_without_native_bf16_warns():
    import warnings

    import slowfast_reference as R
    from slowfast_kernels.fuse import _warn_slow_cpu_bf16

    with cpu_isa.override(AVX2), pytest.warns(UserWarning, match="without native bfloat16.*AMD EPYC 7B13.*float32"):
        sk.fuse(R.slowfast_r50_8x8().eval(), dtype=torch.bfloat16)
    with cpu_isa.override(INTEL_AMX), warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_slow_cpu_bf16()


def _python(code, **env):
    full = dict(os.environ)
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        full.pop(k, None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120,
                          check=True).stdout.split()


def test_passive_openmp_waits_when_imported_before_torch():
    """Set when the package is imported before torch; a wait policy in the environment is left alone (and
    after `import torch` nothing is set: OMP_WAIT_POLICY_SET is computed from sys.modules)."""
    probe = "import os; import slowfast_kernels as sk; print(sk.OMP_WAIT_POLICY_SET, os.environ.get('OMP_WAIT_POLICY'))"
    assert _python(probe) == ["True", "PASSIVE"]
    assert _python(probe, OMP_WAIT_POLICY="ACTIVE") == ["False", "ACTIVE"]


def test_benchmark_worker_skips_fused_bf16_without_native_bf16(tmp_path):
    worker = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_worker.py"
    if cpu_isa.current().native_bf16:
        pytest.skip("this CPU runs bf16 natively: fused_bf16 is not skipped here")
    torch.save([torch.zeros(1, 3, 2, 32, 32), torch.zeros(1, 3, 8, 32, 32)], tmp_path / "in.pt")
    out = subprocess.run([sys.executable, str(worker), "fused_bf16", "1", "", "", str(tmp_path / "in.pt"),
                          str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"skipped": "no native bfloat16 on this CPU' in out.stdout
