#pragma once
// Stub for the glue syntax check (tools/compile_cuda_kernels.sh): only the types torch's CUDA headers name.
typedef struct cusparseContext* cusparseHandle_t;
typedef enum { CUSPARSE_STATUS_SUCCESS = 0 } cusparseStatus_t;
inline const char* cusparseGetErrorString(cusparseStatus_t) { return ""; }
