// Standalone translation unit: instantiates the pack_pathways kernel and launcher for every input dtype
// (uint8, float, bfloat16, half) x output dtype (float, bfloat16, half) so nvcc checks the device code
// without torch (tools/compile_cuda_kernels.sh).
#include "cuda/pack_pathways_kernel.cuh"

namespace slowfast_kernels {
namespace pack {

#define SFK_PACK(IN, OUT)                                                                                   \
  template __global__ void pack_pathways_kernel<IN, OUT>(const IN*, const int64_t*, const int64_t*, OUT*, \
                                                         OUT*, Params);                                    \
  template cudaError_t launch_pack_pathways<IN, OUT>(const IN*, const int64_t*, const int64_t*, OUT*, OUT*, \
                                                     Params, int64_t, cudaStream_t);
#define SFK_PACK_ALL_OUT(IN) \
  SFK_PACK(IN, float)        \
  SFK_PACK(IN, __nv_bfloat16) \
  SFK_PACK(IN, __half)

SFK_PACK_ALL_OUT(uint8_t)
SFK_PACK_ALL_OUT(float)
SFK_PACK_ALL_OUT(__nv_bfloat16)
SFK_PACK_ALL_OUT(__half)

}  // namespace pack
}  // namespace slowfast_kernels
