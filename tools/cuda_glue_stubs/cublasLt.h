#pragma once
// Stub for the glue syntax check (tools/compile_cuda_kernels.sh): only the types torch's CUDA headers name.
#include "cublas_v2.h"
typedef struct cublasLtContext* cublasLtHandle_t;
