// libcublas loaded at RUN time (dlopen): the build needs no cuBLAS headers or libraries, and a
// machine without libcublas still imports the module (the cuBLAS path then returns a Status).
// Plain C++ (no CUDA headers): streams and handles are passed as void*.
//
// Search order: the directories given to set_cublas_search_dirs (e.g. a pip wheel's
// site-packages/nvidia/cublas/lib or site-packages/nvidia/cu13/lib), then those in the
// environment variable SPECDEC_CUBLAS_DIR (':'-separated), then the loader's default path;
// in each, libcublas.so.13, libcublas.so.12, libcublas.so (libcublasLt of the same name is
// loaded first from the same directory, RTLD_GLOBAL, so libcublas finds it).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace sd::cuda {

// Replaces the extra directories searched first. Takes effect only before the library is loaded.
void set_cublas_search_dirs(const std::vector<std::string>& dirs);

// Loads libcublas (once; later calls return the first outcome) and reports its path.
Status cublas_load(std::string* path);

// The handful of cuBLAS enum values used here, as in cublas_api.h / library_types.h:
//   cublasOperation_t:   CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
//   cudaDataType_t:      CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14
//   cublasComputeType_t: CUBLAS_COMPUTE_32F = 68
//   cublasGemmAlgo_t:    CUBLAS_GEMM_DEFAULT = -1
//   cublasStatus_t:      CUBLAS_STATUS_SUCCESS = 0
constexpr int kCublasOpN = 0;
constexpr int kCublasOpT = 1;
constexpr int kCudaR32F = 0;
constexpr int kCudaR16F = 2;
constexpr int kCudaR16BF = 14;
constexpr int kCublasCompute32F = 68;
constexpr int kCublasGemmDefault = -1;

// cublasGemmEx (column-major, as cuBLAS) with float alpha/beta on the calling thread's
// handle for the current device, bound to `stream` (a cudaStream_t). Loads the library on the
// first call.
Status cublas_gemm_ex(void* stream, int transa, int transb, int m, int n, int k, float alpha, const void* A,
                      int a_type, int lda, const void* B, int b_type, int ldb, float beta, void* C, int c_type,
                      int ldc, int compute_type, int algo);

}  // namespace sd::cuda
