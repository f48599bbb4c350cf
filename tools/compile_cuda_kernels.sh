#!/usr/bin/env bash
# Compiles the torch-free CUDA device code (csrc/cuda/*.cuh, through the translation units in
# csrc/cuda/standalone/) with nvcc alone for sm_90, so a broken kernel is caught on machines whose
# torch has no CUDA build. Then, when torch's headers are importable, compiles the torch glue
# (csrc/cuda/*.cu) against them for sm_90 too: the CPU wheel lacks the cuBLAS/cuSPARSE/cuSOLVER
# headers that ATen's CUDA headers include, so tools/cuda_glue_stubs/ declares the few types they name.
# That checks syntax and types of the glue; linking and running need a CUDA machine.
# Exit 0 with a message when nvcc is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [ -z "$NVCC" ]; then
  echo "compile_cuda_kernels: nvcc not found, CUDA device code not compiled"
  exit 0
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
shopt -s nullglob
units=(csrc/cuda/standalone/*.cu)
if [ ${#units[@]} -eq 0 ]; then
  echo "compile_cuda_kernels: no standalone CUDA translation units"
  exit 0
fi
for unit in "${units[@]}"; do
  echo "nvcc sm_90: $unit"
  "$NVCC" -std=c++17 -O3 -arch=sm_90 -Icsrc -c "$unit" -o "$out/$(basename "$unit").o"
done
echo "compile_cuda_kernels: ${#units[@]} translation unit(s) compiled for sm_90"

torch_include=$(python -c 'import torch.utils.cpp_extension as e; print(" ".join(e.include_paths()))' 2>/dev/null || true)
if [ -z "$torch_include" ]; then
  echo "compile_cuda_kernels: torch not importable, glue (csrc/cuda/*.cu) not compiled"
  exit 0
fi
glue=(csrc/cuda/*.cu)
for unit in "${glue[@]}"; do
  echo "nvcc sm_90 (torch glue): $unit"
  # shellcheck disable=SC2086
  "$NVCC" -std=c++20 -O0 -arch=sm_90 --expt-relaxed-constexpr $(printf -- '-I%s ' $torch_include) \
    -Itools/cuda_glue_stubs -Icsrc -c "$unit" -o "$out/$(basename "$unit").glue.o"
done
echo "compile_cuda_kernels: ${#glue[@]} glue file(s) compiled against torch's headers for sm_90 (not linked)"
