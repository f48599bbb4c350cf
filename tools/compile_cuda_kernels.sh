#!/usr/bin/env bash
# Compiles the torch-free CUDA device code (csrc/cuda/*.cuh, through the translation units in
# csrc/cuda/standalone/) with nvcc alone for sm_90, so a broken kernel is caught on machines whose
# torch has no CUDA headers. Exit 0 with a message when nvcc is absent.
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
