// Input validation for the C++ launchers. Every message names the argument and says what was
// expected and what was given; kernels behind these checks assume valid input.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

#define SFK_CHECK(cond, ...) TORCH_CHECK(cond, "slowfast_kernels: ", __VA_ARGS__)

namespace slowfast_kernels {

inline void check_rank(const at::Tensor& t, int64_t rank, const char* name) {
  SFK_CHECK(t.dim() == rank, name, ": expected a ", rank, "-d tensor, got shape ", t.sizes());
}

inline void check_device(const at::Tensor& t, c10::DeviceType type, const char* name) {
  SFK_CHECK(t.device().type() == type, name, ": expected a ", c10::DeviceTypeName(type),
            " tensor, got one on ", t.device());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b) {
  SFK_CHECK(a.scalar_type() == b.scalar_type(), name_a, " and ", name_b, ": dtypes differ (",
            a.scalar_type(), " vs ", b.scalar_type(), ")");
}

}  // namespace slowfast_kernels
