// The CUDA type each ATen scalar type's kernels are instantiated with (the torch-free .cuh kernels take
// __nv_bfloat16 / __half, ATen hands out c10::BFloat16 / c10::Half with the same bits).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace slowfast_kernels {

template <typename T>
struct CudaScalar { using type = T; };
template <>
struct CudaScalar<c10::BFloat16> { using type = __nv_bfloat16; };
template <>
struct CudaScalar<c10::Half> { using type = __half; };

static_assert(sizeof(c10::BFloat16) == sizeof(__nv_bfloat16) && sizeof(c10::Half) == sizeof(__half),
              "ATen and CUDA half types must share their layout");

}  // namespace slowfast_kernels
