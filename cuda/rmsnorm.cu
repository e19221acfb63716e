// RMSNorm on the GPU, same semantics as sd::ops::rmsnorm: y = x / sqrt(mean(x^2) + eps) * w,
// one block per row, the sum of squares in f32 (a fixed reduction tree, like the CPU's f32 dot).
#include <cuda_runtime.h>

#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

namespace sd::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(const float* x, const float* w, float eps, int64_t D, float* y) {
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
    s = lane < static_cast<int>((blockDim.x + 31) / 32) ? partial[lane] : 0.f;
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) partial[0] = rsqrtf(s / static_cast<float>(D) + eps);
  }
  __syncthreads();
  const float inv = partial[0];
  // x and y may alias: every read of row `row` happened before the barrier above.
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) yr[i] = (xr[i] * inv) * w[i];
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

Status rmsnorm(const float* x, const float* w, float eps, int64_t M, int64_t D, float* y, cudaStream_t stream) {
  if (M < 0 || D <= 0) return InvalidArgument("rmsnorm: expected M >= 0 and D > 0");
  if (M == 0) return Status::Ok();
  if (M > 0x7fffffff) return InvalidArgument("rmsnorm: more than 2^31 - 1 rows");
  rmsnorm_kernel<<<static_cast<unsigned>(M), kThreads, 0, stream>>>(x, w, eps, D, y);
  return check_launch("rmsnorm_kernel");
}

Status rmsnorm_host(const float* x, const float* w, float eps, int64_t M, int64_t D, float* y) {
  const size_t n = static_cast<size_t>(M * D);
  DeviceBuffer<float> dx, dw, dy;
  SD_RETURN_IF_ERROR(dx.upload(x, n));
  SD_RETURN_IF_ERROR(dw.upload(w, static_cast<size_t>(D)));
  SD_RETURN_IF_ERROR(dy.alloc(n));
  SD_RETURN_IF_ERROR(rmsnorm(dx.get(), dw.get(), eps, M, D, dy.get(), nullptr));
  SD_RETURN_IF_ERROR(sync(nullptr, "rmsnorm"));
  return dy.download(y, n);
}

}  // namespace sd::cuda
