"""Builds slowfast_kernels._C: csrc/ops.cpp + csrc/cpu/*.cpp always, csrc/cuda/*.cu when torch has CUDA
and nvcc is found. FORCE_CUDA=1 / SLOWFAST_KERNELS_SKIP_CUDA=1 override that choice; MAX_JOBS limits
parallel compile jobs (honoured by torch's BuildExtension with ninja). Metadata lives in pyproject.toml.

Install with `pip install --no-build-isolation -e .` (torch must already be installed: the extension is
built against the torch you run, the usual convention for PyTorch extensions).
"""
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def _build_cuda() -> bool:
    if os.environ.get("SLOWFAST_KERNELS_SKIP_CUDA", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _sources(pattern: str):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extensions():
    sources = ["csrc/python_module.cpp", "csrc/ops.cpp"] + _sources("csrc/cpu/*.cpp")
    cxx = ["-O3", "-fopenmp"]  # the C++ standard is the one torch asks for (C++17 in 2.11, C++20 in 2.13)
    if _build_cuda():
        nvcc = ["-O3", "--expt-relaxed-constexpr"]
        return [CUDAExtension(
            "slowfast_kernels._C", sources + _sources("csrc/cuda/*.cu"),
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
        )]
    return [CppExtension("slowfast_kernels._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
