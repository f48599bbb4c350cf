#pragma once
// Stub for the glue syntax check (tools/compile_cuda_kernels.sh): only the types torch's CUDA headers name.
typedef enum { CUSOLVER_STATUS_SUCCESS = 0 } cusolverStatus_t;
