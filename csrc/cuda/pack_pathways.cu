// CUDA pack_pathways: checks, launch and the TORCH_LIBRARY_IMPL(CUDA) registration. The device code is
// in pack_pathways_kernel.cuh; validation and allocation are the CPU file's, so both devices accept,
// reject and shape the same way.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "cuda_scalar.h"
#include "pack_pathways_kernel.cuh"

namespace slowfast_kernels {

// Defined in csrc/cpu/pack_pathways.cpp.
void pack_pathways_validate(const at::Tensor& video, const at::Tensor& fast_index, const at::Tensor& slow_index,
                            c10::IntArrayRef resized, c10::IntArrayRef crop_box, c10::ArrayRef<double> mean,
                            c10::ArrayRef<double> std, const at::Tensor& slow, const at::Tensor& fast,
                            c10::DeviceType device);
std::tuple<at::Tensor, at::Tensor> pack_pathways_empty(const at::Tensor& video, const at::Tensor& fast_index,
                                                       const at::Tensor& slow_index, c10::IntArrayRef crop_box,
                                                       at::ScalarType dtype, bool channels_last);

namespace {

template <typename in_t, typename out_t>
void launch(const at::Tensor& video, const at::Tensor& fi, const at::Tensor& si, const at::Tensor& slow,
            const at::Tensor& fast, const pack::Params& p, cudaStream_t stream) {
  using In = typename CudaScalar<in_t>::type;
  using Out = typename CudaScalar<out_t>::type;
  const cudaError_t err = pack::launch_pack_pathways<In, Out>(
      reinterpret_cast<const In*>(video.const_data_ptr<in_t>()), fi.const_data_ptr<int64_t>(),
      si.const_data_ptr<int64_t>(), reinterpret_cast<Out*>(fast.mutable_data_ptr<out_t>()),
      reinterpret_cast<Out*>(slow.mutable_data_ptr<out_t>()), p, video.size(0), stream);
  SFK_CHECK(err == cudaSuccess, "pack_pathways CUDA launch failed: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename in_t>
void launch_out(const at::Tensor& video, const at::Tensor& fi, const at::Tensor& si, const at::Tensor& slow,
                const at::Tensor& fast, const pack::Params& p, cudaStream_t stream) {
  switch (fast.scalar_type()) {
    case at::kFloat: return launch<in_t, float>(video, fi, si, slow, fast, p, stream);
    case at::kBFloat16: return launch<in_t, at::BFloat16>(video, fi, si, slow, fast, p, stream);
    case at::kHalf: return launch<in_t, at::Half>(video, fi, si, slow, fast, p, stream);
    default: SFK_CHECK(false, "fast/slow: expected float32, bfloat16 or float16, got ", fast.scalar_type());
  }
}

void pack_pathways_into_cuda(const at::Tensor& video, const at::Tensor& fast_index, const at::Tensor& slow_index,
                             c10::IntArrayRef resized, c10::IntArrayRef crop_box, c10::ArrayRef<double> mean,
                             c10::ArrayRef<double> std, const at::Tensor& slow, const at::Tensor& fast) {
  pack_pathways_validate(video, fast_index, slow_index, resized, crop_box, mean, std, slow, fast,
                         c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(video.device());
  const at::Tensor fi = fast_index.contiguous(), si = slow_index.contiguous();
  pack::Params p{};
  p.T = fi.size(1), p.TS = si.size(1), p.H = video.size(2), p.W = video.size(3);
  p.y0 = crop_box[0], p.x0 = crop_box[1], p.ch = crop_box[2], p.cw = crop_box[3];
  p.scale_h = static_cast<float>(p.H) / static_cast<float>(resized[0]);
  p.scale_w = static_cast<float>(p.W) / static_cast<float>(resized[1]);
  p.resize = resized[0] != p.H || resized[1] != p.W;
  for (int d = 0; d < 5; ++d) p.sv[d] = video.stride(d), p.sf[d] = fast.stride(d), p.ss[d] = slow.stride(d);
  for (int c = 0; c < 3; ++c) p.mean[c] = static_cast<float>(mean[c]), p.stdev[c] = static_cast<float>(std[c]);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  switch (video.scalar_type()) {
    case at::kByte: return launch_out<uint8_t>(video, fi, si, slow, fast, p, stream);
    case at::kFloat: return launch_out<float>(video, fi, si, slow, fast, p, stream);
    case at::kBFloat16: return launch_out<at::BFloat16>(video, fi, si, slow, fast, p, stream);
    case at::kHalf: return launch_out<at::Half>(video, fi, si, slow, fast, p, stream);
    default: SFK_CHECK(false, "video: expected uint8, float32, float16 or bfloat16, got ", video.scalar_type());
  }
}

std::tuple<at::Tensor, at::Tensor> pack_pathways_cuda(const at::Tensor& video, const at::Tensor& fast_index,
                                                      const at::Tensor& slow_index, c10::IntArrayRef resized,
                                                      c10::IntArrayRef crop_box, c10::ArrayRef<double> mean,
                                                      c10::ArrayRef<double> std, at::ScalarType dtype,
                                                      bool channels_last) {
  auto [slow, fast] = pack_pathways_empty(video, fast_index, slow_index, crop_box, dtype, channels_last);
  pack_pathways_into_cuda(video, fast_index, slow_index, resized, crop_box, mean, std, slow, fast);
  return {slow, fast};
}

}  // namespace

TORCH_LIBRARY_IMPL(slowfast_kernels, CUDA, m) {
  m.impl("pack_pathways", &pack_pathways_cuda);
  m.impl("pack_pathways_into", &pack_pathways_into_cuda);
}

}  // namespace slowfast_kernels
