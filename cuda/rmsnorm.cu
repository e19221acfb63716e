// RMSNorm on the GPU: the first CUDA op, same signature and semantics as sd::ops::rmsnorm.
// It proves the CUDA build path; the full CUDA backend plugs into ops/dispatch.cpp.
#include <cuda_runtime.h>

#include "cuda/cuda_ops.h"

namespace sd::cuda {

namespace {

__global__ void rmsnorm_kernel(const float* x, const float* w, float eps, int64_t D, float* y) {
  const int64_t row = blockIdx.x;
  const float* xr = x + row * D;
  float* yr = y + row * D;
  __shared__ float partial[32];
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += xr[i] * xr[i];
  for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < (blockDim.x + 31) / 32 ? partial[lane] : 0.f;
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) partial[0] = rsqrtf(s / static_cast<float>(D) + eps);
  }
  __syncthreads();
  const float inv = partial[0];
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) yr[i] = (xr[i] * inv) * w[i];
}

Status check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return Status(StatusCode::kInternal, std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

Status rmsnorm_host(const float* x, const float* w, float eps, int64_t M, int64_t D, float* y) {
  float *dx = nullptr, *dw = nullptr, *dy = nullptr;
  const size_t xb = static_cast<size_t>(M * D) * sizeof(float), wb = static_cast<size_t>(D) * sizeof(float);
  Status st = check(cudaMalloc(&dx, xb), "cudaMalloc");
  if (st.ok()) st = check(cudaMalloc(&dw, wb), "cudaMalloc");
  if (st.ok()) st = check(cudaMalloc(&dy, xb), "cudaMalloc");
  if (st.ok()) st = check(cudaMemcpy(dx, x, xb, cudaMemcpyHostToDevice), "cudaMemcpy");
  if (st.ok()) st = check(cudaMemcpy(dw, w, wb, cudaMemcpyHostToDevice), "cudaMemcpy");
  if (st.ok() && M > 0) {
    rmsnorm_kernel<<<static_cast<unsigned>(M), 256>>>(dx, dw, eps, D, dy);
    st = check(cudaGetLastError(), "rmsnorm launch");
  }
  if (st.ok()) st = check(cudaMemcpy(y, dy, xb, cudaMemcpyDeviceToHost), "cudaMemcpy");
  cudaFree(dx);
  cudaFree(dw);
  cudaFree(dy);
  return st;
}

}  // namespace sd::cuda
