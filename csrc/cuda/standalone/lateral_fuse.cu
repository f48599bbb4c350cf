// Standalone translation unit: instantiates every lateral_fuse kernel for float, bfloat16 and half so
// nvcc checks the device code without torch (tools/compile_cuda_kernels.sh).
#include "cuda/lateral_fuse_kernel.cuh"

namespace slowfast_kernels {
namespace lateral {

#define SFK_LATERAL_COPY(T, ACC)                                                                              \
  template __global__ void lateral_copy_kernel<T, ACC>(const T*, T*, int64_t, int64_t, int64_t, int64_t,       \
                                                       int64_t, int64_t, int, bool, Strides5, Strides5);
#define SFK_LATERAL_CONV(T, HAS_BIAS, RELU, ACC)                                                              \
  template __global__ void lateral_conv_kernel<T, HAS_BIAS, RELU, ACC>(                                       \
      const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
      int64_t, int64_t, Strides5, Strides5, Strides5);
#define SFK_LATERAL_ALL(T)                                                                                    \
  SFK_LATERAL_COPY(T, false)                                                                                  \
  SFK_LATERAL_COPY(T, true)                                                                                   \
  SFK_LATERAL_CONV(T, false, false, false)                                                                    \
  SFK_LATERAL_CONV(T, false, false, true)                                                                     \
  SFK_LATERAL_CONV(T, false, true, false)                                                                     \
  SFK_LATERAL_CONV(T, false, true, true)                                                                      \
  SFK_LATERAL_CONV(T, true, false, false)                                                                     \
  SFK_LATERAL_CONV(T, true, false, true)                                                                      \
  SFK_LATERAL_CONV(T, true, true, false)                                                                      \
  SFK_LATERAL_CONV(T, true, true, true)

SFK_LATERAL_ALL(float)
SFK_LATERAL_ALL(__nv_bfloat16)
SFK_LATERAL_ALL(__half)

}  // namespace lateral
}  // namespace slowfast_kernels
