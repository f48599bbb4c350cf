#pragma once
// Stub for the glue syntax check (tools/compile_cuda_kernels.sh): only the types torch's CUDA headers name.
typedef struct cublasContext* cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_SUPPORTED = 1 } cublasStatus_t;
