"""The CPU this process runs on, as the plan's CPU shape rules see it: vendor, model name, ISA flags.

The rules of plan.make_runner (which kernel runs a layer) were measured per machine; a rule fitted on one
CPU must not apply unchanged to another ISA (an AMD EPYC with AVX-512 and an Intel Xeon with AMX picked
different winners for the Fast stem). ``current()`` reads /proc/cpuinfo once (vendor_id, model name,
flags; elsewhere: platform and torch's capability) and ``tier`` names the ISA class the rules key on:
"amx" (amx_tile), "avx512" (avx512f), "avx2", or "default".

Tests fake a CPU with ``override(CpuIsa(...))``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import platform
from typing import FrozenSet, Iterator, Optional

import torch

# The flags the rules and the benchmark records care about (the full list is in CpuIsa.flags).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_bf16", "amx_int8", "avx_vnni")


@dataclasses.dataclass(frozen=True)
class CpuIsa:
    vendor: str                 # /proc/cpuinfo vendor_id: "AuthenticAMD", "GenuineIntel", ...
    model: str                  # "model name"
    flags: FrozenSet[str]       # /proc/cpuinfo flags
    capability: str = ""        # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", ...
    family: str = ""            # /proc/cpuinfo "cpu family" and "model": the microarchitecture where the model
    model_number: str = ""      # name does not tell it ("AMD EPYC": 25 is Zen 4, 26 Zen 5; Intel 6 / 207 ...)

    @property
    def tier(self) -> str:
        """The ISA class the plan's CPU rules key on: amx | avx512 | avx2 | default."""
        if "amx_tile" in self.flags:
            return "amx"
        if "avx512f" in self.flags:
            return "avx512"
        if "avx2" in self.flags:
            return "avx2"
        return "default"

    @property
    def native_bf16(self) -> bool:
        """The CPU computes bfloat16 natively (AVX512_BF16 or AMX-BF16): oneDNN's bf16 convs run fast."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    def record(self) -> dict:
        """For benchmark JSON: model, vendor, tier, torch's capability, the ISA flags present."""
        return {"cpu_model": self.model, "cpu_vendor": self.vendor, "cpu_family": self.family,
                "cpu_model_number": self.model_number, "cpu_isa_tier": self.tier,
                "cpu_capability": self.capability, "cpu_flags": [f for f in ISA_FLAGS if f in self.flags]}


def _torch_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # an old torch without the query
        return ""


@functools.lru_cache(maxsize=1)
def _detect() -> CpuIsa:
    vendor, model, flags, family, number = "", "", frozenset(), "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value
                elif key == "model name" and not model:
                    model = value
                elif key == "cpu family" and not family:
                    family = value
                elif key == "model" and not number:
                    number = value
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if vendor and model and flags:
                    break
    except OSError:
        pass
    capability = _torch_capability()
    if not flags:  # no /proc/cpuinfo (macOS, Windows): what torch's dispatcher found
        flags = frozenset({"AVX2": {"avx2"}, "AVX512": {"avx2", "avx512f"}}.get(capability, set()))
    return CpuIsa(vendor or "unknown", model or platform.processor() or platform.machine(), flags, capability,
                  family, number)


_override: Optional[CpuIsa] = None


def current() -> CpuIsa:
    """This machine's CPU (or the one ``override`` fakes)."""
    return _override if _override is not None else _detect()


@torch.compiler.assume_constant_result
def tier() -> str:
    """current().tier, a constant for torch.compile (reading /proc/cpuinfo is not traceable)."""
    return current().tier


@contextlib.contextmanager
def override(isa: CpuIsa) -> Iterator[CpuIsa]:
    """Within: the plan's CPU rules see ``isa`` instead of this machine's CPU (tests of the rules)."""
    global _override
    saved, _override = _override, isa
    try:
        yield isa
    finally:
        _override = saved
