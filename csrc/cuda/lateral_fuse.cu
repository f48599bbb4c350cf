// CUDA lateral_fuse: checks, launches and the TORCH_LIBRARY_IMPL(CUDA) registration. The device code is
// in lateral_fuse_kernel.cuh; the validation and allocation rules are the CPU file's, shared so both
// devices reject and shape the same way.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "cuda_scalar.h"
#include "lateral_fuse_kernel.cuh"

namespace slowfast_kernels {

// Defined in csrc/cpu/lateral_fuse.cpp.
void lateral_fuse_validate(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode, int64_t alpha,
                           const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                           c10::string_view fusion, c10::string_view activation, c10::DeviceType device_type);
void lateral_fuse_validate_out(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode, int64_t alpha,
                               const c10::optional<at::Tensor>& weight, c10::string_view fusion,
                               const at::Tensor& out);
at::Tensor lateral_fuse_empty(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode, int64_t alpha,
                              const c10::optional<at::Tensor>& weight, c10::string_view fusion);
bool lateral_slow_in_place(const at::Tensor& slow, const at::Tensor& out);

namespace {

lateral::Strides5 strides5(const at::Tensor& t) {
  lateral::Strides5 s;
  for (int d = 0; d < 5; ++d) s.s[d] = t.dim() > d ? t.stride(d) : 0;
  return s;
}

template <typename scalar_t>
void launch_copy(const at::Tensor& fast, const at::Tensor& dst, int map, int64_t alpha, bool acc,
                 cudaStream_t stream) {
  using T = typename CudaScalar<scalar_t>::type;
  const int64_t total = dst.numel();
  if (total == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, int64_t(1) << 20);
  const bool channels_inner = dst.size(1) > 1 && dst.stride(1) == 1;
  const auto* src = reinterpret_cast<const T*>(fast.const_data_ptr<scalar_t>());
  auto* out = reinterpret_cast<T*>(dst.mutable_data_ptr<scalar_t>());
  auto kernel = acc ? lateral::lateral_copy_kernel<T, true> : lateral::lateral_copy_kernel<T, false>;
  kernel<<<blocks, threads, 0, stream>>>(src, out, total, dst.size(1), dst.size(2), dst.size(3), dst.size(4), alpha,
                                         map, channels_inner, strides5(fast), strides5(dst));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, bool HAS_BIAS>
auto conv_kernel(bool relu, bool acc) {
  if (relu) return acc ? lateral::lateral_conv_kernel<T, HAS_BIAS, true, true>
                       : lateral::lateral_conv_kernel<T, HAS_BIAS, true, false>;
  return acc ? lateral::lateral_conv_kernel<T, HAS_BIAS, false, true>
             : lateral::lateral_conv_kernel<T, HAS_BIAS, false, false>;
}

template <typename scalar_t>
void launch_conv(const at::Tensor& fast, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                 const at::Tensor& dst, int64_t alpha, bool relu, bool acc, cudaStream_t stream) {
  using T = typename CudaScalar<scalar_t>::type;
  const int64_t N = dst.size(0), CO = dst.size(1), Tn = dst.size(2), H = dst.size(3), W = dst.size(4);
  const int64_t P = N * Tn * H * W, K = weight.size(2);
  if (P == 0 || CO == 0) return;
  const dim3 grid((P + lateral::kConvBM - 1) / lateral::kConvBM, (CO + lateral::kConvBN - 1) / lateral::kConvBN);
  const auto* x = reinterpret_cast<const T*>(fast.const_data_ptr<scalar_t>());
  const auto* w = reinterpret_cast<const T*>(weight.const_data_ptr<scalar_t>());
  const T* b = bias.has_value() ? reinterpret_cast<const T*>(bias->const_data_ptr<scalar_t>()) : nullptr;
  auto* out = reinterpret_cast<T*>(dst.mutable_data_ptr<scalar_t>());
  auto kernel = bias.has_value() ? conv_kernel<T, true>(relu, acc) : conv_kernel<T, false>(relu, acc);
  kernel<<<grid, lateral::kConvThreads, 0, stream>>>(x, w, b, out, P, CO, fast.size(1), K, Tn, fast.size(2), H, W,
                                                      alpha, K / 2, strides5(fast), strides5(weight), strides5(dst));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void lateral_fuse_out_cuda(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode, int64_t alpha,
                           const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                           c10::string_view fusion, c10::string_view activation, const at::Tensor& out) {
  lateral_fuse_validate(slow, fast, mode, alpha, weight, bias, fusion, activation, c10::DeviceType::CUDA);
  lateral_fuse_validate_out(slow, fast, mode, alpha, weight, fusion, out);
  const c10::cuda::CUDAGuard guard(fast.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool concat = fusion == "concat";
  const int64_t Cs = slow.size(1);
  if (!lateral_slow_in_place(slow, out)) (concat ? out.narrow(1, 0, Cs) : out).copy_(slow);
  const at::Tensor dst = concat ? out.narrow(1, Cs, out.size(1) - Cs) : out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, fast.scalar_type(), "lateral_fuse_cuda", [&] {
    if (mode == "time_strided_conv") {
      launch_conv<scalar_t>(fast, *weight, bias, dst, alpha, activation == "relu", !concat, stream);
    } else {
      launch_copy<scalar_t>(fast, dst, mode == "time_to_channel" ? lateral::kTimeToChannel
                                                                 : lateral::kTimeStridedSampling,
                            alpha, !concat, stream);
    }
  });
}

at::Tensor lateral_fuse_cuda(const at::Tensor& slow, const at::Tensor& fast, c10::string_view mode, int64_t alpha,
                             const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                             c10::string_view fusion, c10::string_view activation) {
  lateral_fuse_validate(slow, fast, mode, alpha, weight, bias, fusion, activation, c10::DeviceType::CUDA);
  at::Tensor out = lateral_fuse_empty(slow, fast, mode, alpha, weight, fusion);
  lateral_fuse_out_cuda(slow, fast, mode, alpha, weight, bias, fusion, activation, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CUDA, m) {
  m.impl("lateral_fuse", &lateral_fuse_cuda);
  m.impl("lateral_fuse_out", &lateral_fuse_out_cuda);
}

}  // namespace slowfast_kernels
