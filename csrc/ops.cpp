// The schema of every native slowfast_kernels op, defined once. Device implementations register
// themselves with TORCH_LIBRARY_IMPL in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fake (meta)
// implementations and autograd live in slowfast_kernels/ops/<op>.py.
#include <torch/library.h>

TORCH_LIBRARY(slowfast_kernels, m) {
  // Fast -> Slow lateral connection written into channel slices of one [N, Cs + Cl, T, H, W] buffer.
  // mode: time_to_channel | time_strided_sampling | time_strided_conv; fusion: concat | sum.
  m.def(
      "lateral_fuse(Tensor slow, Tensor fast, str mode, int alpha, Tensor? weight, Tensor? bias, "
      "str fusion, str activation) -> Tensor");
}
