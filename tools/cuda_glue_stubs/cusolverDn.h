#pragma once
// Stub for the glue syntax check (tools/compile_cuda_kernels.sh): only the types torch's CUDA headers name.
#include "cusolver_common.h"
typedef struct cusolverDnContext* cusolverDnHandle_t;
