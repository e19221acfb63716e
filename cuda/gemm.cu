// GEMM on the GPU: Y[M, N] = X[M, K] * W[N, K]^T (+ bias), f32 accumulation.
//  - gemv: the bandwidth-bound path for M = 1..16 (decode, small verify batches) over bf16 / f16
//    weights or int8 weights with one f32 scale per 32 columns; larger M runs in groups of 16.
//    A row's sums do not depend on M (the batch invariance the GPU model relies on).
//  - gemm_cublas: tensor cores through the runtime-loaded libcublas (cublasGemmEx).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>
#include <utility>
#include <vector>

#include "cuda/attention_device.h"
#include "cuda/cublas_loader.h"

namespace sd::cuda {

namespace {

constexpr int kGemvWarps = 4;
constexpr int kGemvThreads = kGemvWarps * 32;
constexpr int kGemvRowsPerWarp = 4;  // one weight load of each row per step; X loads shared by 4 rows
constexpr int kGemvRowsPerBlock = kGemvWarps * kGemvRowsPerWarp;
constexpr int kGemvMaxM = 16;  // rows per pass over the weights (one instantiation per count)
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(kFull, x, o);
  return x;
}

// Weights through the read-only path, not kept in L1 (each is read once).
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// The warp's partial sums of its rows -> Y[m, n0 + r] (+ bias), lane 0 writing.
template <int M>
__device__ __forceinline__ void store_rows(const float (&acc)[M][kGemvRowsPerWarp], int lane, int n0, int N,
                                           const float* __restrict__ bias, float* __restrict__ Y) {
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r) {
      const float s = warp_sum(acc[m][r]);
      if (lane == 0 && n0 + r < N) Y[static_cast<int64_t>(m) * N + n0 + r] = s + (bias ? bias[n0 + r] : 0.f);
    }
}

// 8 packed 16-bit floats (one 32-bit word holds elements 2i, 2i+1) to f32.
__device__ __forceinline__ void unpack8(const uint4& w, float* f, __nv_bfloat16*) {
  const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void unpack8(const uint4& w, float* f, __half*) {
  const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&u[i]));
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// Y[m, n] for m < M (a compile-time group of up to 16 tokens), one warp per 4 rows n; lane l
// reads 16 bytes (8 weights) of each row per step, 256 columns per warp step. K % 8 == 0.
template <class WT, int M>
__global__ void __launch_bounds__(kGemvThreads) gemv16_kernel(const float* __restrict__ X, const WT* __restrict__ W,
                                                              const float* __restrict__ bias, float* __restrict__ Y,
                                                              int N, int K) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n0 = (blockIdx.x * kGemvWarps + warp) * kGemvRowsPerWarp;
  if (n0 >= N) return;  // whole warp leaves: no block-level sync below
  float acc[M][kGemvRowsPerWarp] = {};
  for (int k = lane * 8; k < K; k += 32 * 8) {
    uint4 w[kGemvRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r)
      w[r] = n0 + r < N ? load_stream(W + static_cast<int64_t>(n0 + r) * K + k) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float4 x0 = __ldg(reinterpret_cast<const float4*>(X + static_cast<int64_t>(m) * K + k));
      const float4 x1 = __ldg(reinterpret_cast<const float4*>(X + static_cast<int64_t>(m) * K + k + 4));
#pragma unroll
      for (int r = 0; r < kGemvRowsPerWarp; ++r) {
        float f[8];
        unpack8(w[r], f, static_cast<WT*>(nullptr));
        float a = acc[m][r];
        a = fmaf(x0.x, f[0], a);
        a = fmaf(x0.y, f[1], a);
        a = fmaf(x0.z, f[2], a);
        a = fmaf(x0.w, f[3], a);
        a = fmaf(x1.x, f[4], a);
        a = fmaf(x1.y, f[5], a);
        a = fmaf(x1.z, f[6], a);
        a = fmaf(x1.w, f[7], a);
        acc[m][r] = a;
      }
    }
  }
  store_rows<M>(acc, lane, n0, N, bias, Y);
}

// int8 weights [N, K] with f32 scales [N, K / 32]: lane l reads 16 bytes (16 weights, inside
// one 32-column block: one scale) of each row per step, 512 columns per warp step. K % 32 == 0.
template <int M>
__global__ void __launch_bounds__(kGemvThreads) gemv_q8_kernel(const float* __restrict__ X,
                                                               const int8_t* __restrict__ W,
                                                               const float* __restrict__ scales,
                                                               const float* __restrict__ bias, float* __restrict__ Y,
                                                               int N, int K) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n0 = (blockIdx.x * kGemvWarps + warp) * kGemvRowsPerWarp;
  if (n0 >= N) return;
  const int blocks_per_row = K / 32;
  float acc[M][kGemvRowsPerWarp] = {};
  for (int k = lane * 16; k < K; k += 32 * 16) {
    uint4 w[kGemvRowsPerWarp];
    float sc[kGemvRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r) {
      const bool ok = n0 + r < N;
      w[r] = ok ? load_stream(W + static_cast<int64_t>(n0 + r) * K + k) : make_uint4(0, 0, 0, 0);
      sc[r] = ok ? __ldg(scales + static_cast<int64_t>(n0 + r) * blocks_per_row + k / 32) : 0.f;
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float4* xp = reinterpret_cast<const float4*>(X + static_cast<int64_t>(m) * K + k);
      const float4 xv[4] = {__ldg(xp), __ldg(xp + 1), __ldg(xp + 2), __ldg(xp + 3)};
#pragma unroll
      for (int r = 0; r < kGemvRowsPerWarp; ++r) {
        const uint32_t u[4] = {w[r].x, w[r].y, w[r].z, w[r].w};
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // word i: columns k + 4i .. k + 4i + 3
          d = fmaf(xv[i].x, static_cast<float>(static_cast<int8_t>(u[i] & 0xff)), d);
          d = fmaf(xv[i].y, static_cast<float>(static_cast<int8_t>((u[i] >> 8) & 0xff)), d);
          d = fmaf(xv[i].z, static_cast<float>(static_cast<int8_t>((u[i] >> 16) & 0xff)), d);
          d = fmaf(xv[i].w, static_cast<float>(static_cast<int8_t>(u[i] >> 24)), d);
        }
        acc[m][r] = fmaf(sc[r], d, acc[m][r]);
      }
    }
  }
  store_rows<M>(acc, lane, n0, N, bias, Y);
}

// int4 weights (kQ4 layout): lane l reads 16 bytes (one 32-column block: one scale and min) of
// each row per step, 1024 columns per warp step; sum_j x_j (s q_j + m) = s sum_j x_j q_j +
// m sum_j x_j, the x sum shared by the warp's rows. K % 32 == 0.
template <int M>
__global__ void __launch_bounds__(kGemvThreads) gemv_q4_kernel(const float* __restrict__ X,
                                                               const uint8_t* __restrict__ W,
                                                               const float2* __restrict__ scale_min,
                                                               const float* __restrict__ bias, float* __restrict__ Y,
                                                               int N, int K) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n0 = (blockIdx.x * kGemvWarps + warp) * kGemvRowsPerWarp;
  if (n0 >= N) return;
  const int blocks_per_row = K / 32;
  float acc[M][kGemvRowsPerWarp] = {};
  for (int blk = lane; blk < blocks_per_row; blk += 32) {
    const int k = blk * 32;
    uint4 w[kGemvRowsPerWarp];
    float2 sm[kGemvRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r) {
      const bool ok = n0 + r < N;
      w[r] = ok ? load_stream(W + static_cast<int64_t>(n0 + r) * (K / 2) + k / 2) : make_uint4(0, 0, 0, 0);
      sm[r] = ok ? __ldg(scale_min + static_cast<int64_t>(n0 + r) * blocks_per_row + blk) : make_float2(0.f, 0.f);
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float4* x = reinterpret_cast<const float4*>(X + static_cast<int64_t>(m) * K + k);
      float d[kGemvRowsPerWarp], xs = 0.f;
#pragma unroll
      for (int r = 0; r < kGemvRowsPerWarp; ++r) d[r] = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) {  // word i: bytes 4i .. 4i + 3, columns 4i.. (low) and 16 + 4i.. (high)
        const float4 lo = __ldg(x + i), hi = __ldg(x + 4 + i);
        xs += ((lo.x + lo.y) + (lo.z + lo.w)) + ((hi.x + hi.y) + (hi.z + hi.w));
#pragma unroll
        for (int r = 0; r < kGemvRowsPerWarp; ++r) {
          const uint32_t u = i == 0 ? w[r].x : i == 1 ? w[r].y : i == 2 ? w[r].z : w[r].w;
          float a = d[r];
          a = fmaf(lo.x, static_cast<float>(u & 0xfu), a);
          a = fmaf(hi.x, static_cast<float>((u >> 4) & 0xfu), a);
          a = fmaf(lo.y, static_cast<float>((u >> 8) & 0xfu), a);
          a = fmaf(hi.y, static_cast<float>((u >> 12) & 0xfu), a);
          a = fmaf(lo.z, static_cast<float>((u >> 16) & 0xfu), a);
          a = fmaf(hi.z, static_cast<float>((u >> 20) & 0xfu), a);
          a = fmaf(lo.w, static_cast<float>((u >> 24) & 0xfu), a);
          a = fmaf(hi.w, static_cast<float>(u >> 28), a);
          d[r] = a;
        }
      }
#pragma unroll
      for (int r = 0; r < kGemvRowsPerWarp; ++r) acc[m][r] = fmaf(sm[r].x, d[r], fmaf(sm[r].y, xs, acc[m][r]));
    }
  }
  store_rows<M>(acc, lane, n0, N, bias, Y);
}

__global__ void add_bias_kernel(float* Y, const float* bias, int64_t M, int64_t N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < M * N) Y[i] += bias[i % N];
}

template <int M>
Status launch_gemv_m(DType t, const float* X, const void* W, const float* scales, int N, int K, const float* bias,
                     float* Y, cudaStream_t s) {
  const unsigned grid = static_cast<unsigned>((N + kGemvRowsPerBlock - 1) / kGemvRowsPerBlock);
  switch (t) {
    case DType::kBF16:
      gemv16_kernel<__nv_bfloat16, M><<<grid, kGemvThreads, 0, s>>>(X, static_cast<const __nv_bfloat16*>(W), bias, Y, N, K);
      break;
    case DType::kF16:
      gemv16_kernel<__half, M><<<grid, kGemvThreads, 0, s>>>(X, static_cast<const __half*>(W), bias, Y, N, K);
      break;
    case DType::kQ8:
      gemv_q8_kernel<M><<<grid, kGemvThreads, 0, s>>>(X, static_cast<const int8_t*>(W), scales, bias, Y, N, K);
      break;
    case DType::kQ4:
      gemv_q4_kernel<M><<<grid, kGemvThreads, 0, s>>>(X, static_cast<const uint8_t*>(W),
                                                      reinterpret_cast<const float2*>(scales), bias, Y, N, K);
      break;
    default:
      return InvalidArgument("gemv: weight dtype must be bfloat16, float16, int8 or int4");
  }
  return check_launch("gemv kernel");
}

// launch_gemv_m<mm>: the instantiation for the run-time row count mm in 1 .. kGemvMaxM.
template <int... Ms>
Status launch_gemv_rows(int mm, DType t, const float* X, const void* W, const float* scales, int N, int K,
                        const float* bias, float* Y, cudaStream_t s, std::integer_sequence<int, Ms...>) {
  Status st = InvalidArgument("gemv: rows per pass out of range");
  ((Ms > 0 && mm == Ms ? (st = launch_gemv_m<(Ms > 0 ? Ms : 1)>(t, X, W, scales, N, K, bias, Y, s), true) : false) ||
   ...);
  return st;
}

// The dtypes the GEMV takes and their K constraint (whole 16-byte loads, whole 32-column blocks).
Status check_weight_layout(DType t, int64_t K, const char* op) {
  if (t != DType::kBF16 && t != DType::kF16 && !is_quantized(t))
    return InvalidArgument(std::string(op) + ": weight dtype must be bfloat16, float16, int8 or int4, got " +
                           dtype_name(t));
  if (is_quantized(t) ? K % 32 != 0 : K % 8 != 0)
    return InvalidArgument(std::string(op) + ": in_features (K = " + std::to_string(K) + ") must be a multiple of " +
                           (is_quantized(t) ? "32 for int8 / int4 weights" : "8"));
  return Status::Ok();
}

}  // namespace

Status gemv(DType w_dtype, const float* X, int64_t M, const void* W, const float* w_scales, int64_t N, int64_t K,
            const float* bias, float* Y, cudaStream_t stream) {
  SD_RETURN_IF_ERROR(check_weight_layout(w_dtype, K, "gemv"));
  if (M < 0 || N < 0 || K < 0 || N > INT32_MAX || K > INT32_MAX)
    return InvalidArgument("gemv: bad sizes");
  if (is_quantized(w_dtype) && !w_scales) return InvalidArgument("gemv: int8 / int4 weights need scales");
  if (N == 0) return Status::Ok();
  if (K == 0) {  // an empty sum: Y = bias (or 0)
    for (int64_t m = 0; m < M; ++m) {
      float* y = Y + m * N;
      SD_RETURN_IF_ERROR(check(cudaMemsetAsync(y, 0, static_cast<size_t>(N) * sizeof(float), stream), "cudaMemsetAsync"));
    }
    if (bias && M > 0) {
      add_bias_kernel<<<static_cast<unsigned>((M * N + 255) / 256), 256, 0, stream>>>(Y, bias, M, N);
      return check_launch("add_bias_kernel");
    }
    return Status::Ok();
  }
  const int n = static_cast<int>(N), k = static_cast<int>(K);
  for (int64_t m0 = 0; m0 < M; m0 += kGemvMaxM) {
    const int mm = static_cast<int>(M - m0 < kGemvMaxM ? M - m0 : kGemvMaxM);
    const float* x = X + m0 * K;
    float* y = Y + m0 * N;
    SD_RETURN_IF_ERROR(launch_gemv_rows(mm, w_dtype, x, W, w_scales, n, k, bias, y, stream,
                                        std::make_integer_sequence<int, kGemvMaxM + 1>{}));
  }
  return Status::Ok();
}

Status gemm_cublas(DType dtype, const void* X, int64_t M, const void* W, int64_t N, int64_t K, const float* bias,
                   float* Y, cudaStream_t stream) {
  if (dtype != DType::kBF16 && dtype != DType::kF16)
    return InvalidArgument(std::string("gemm_cublas: dtype must be bfloat16 or float16, got ") + dtype_name(dtype));
  if (M < 0 || N < 0 || K < 0 || M > INT32_MAX || N > INT32_MAX || K > INT32_MAX)
    return InvalidArgument("gemm_cublas: bad sizes");
  if (M == 0 || N == 0) return Status::Ok();
  const int t = dtype == DType::kBF16 ? kCudaR16BF : kCudaR16F;
  // Row-major Y[M, N] is column-major Y^T [N, M] (ld N) = W X^T: A = W seen column-major as
  // [K, N] (ld K), transposed; B = X seen column-major as [K, M] (ld K), not transposed.
  SD_RETURN_IF_ERROR(cublas_gemm_ex(stream, kCublasOpT, kCublasOpN, static_cast<int>(N), static_cast<int>(M),
                                    static_cast<int>(K), 1.f, W, t, static_cast<int>(K), X, t, static_cast<int>(K),
                                    0.f, Y, kCudaR32F, static_cast<int>(N), kCublasCompute32F, kCublasGemmDefault));
  if (bias) {
    add_bias_kernel<<<static_cast<unsigned>((M * N + 255) / 256), 256, 0, stream>>>(Y, bias, M, N);
    return check_launch("add_bias_kernel");
  }
  return Status::Ok();
}

Status parse_gemm_backend(const std::string& name, GemmBackend* out) {
  if (name == "auto") return *out = GemmBackend::kAuto, Status::Ok();
  if (name == "gemv") return *out = GemmBackend::kGemv, Status::Ok();
  if (name == "cublas") return *out = GemmBackend::kCublas, Status::Ok();
  return InvalidArgument("backend must be one of auto, gemv, cublas; got '" + name + "'");
}

void quantize_q8_rows(const float* W, int64_t N, int64_t K, int8_t* q, float* scales) {
  const int64_t blocks = K / kQ8Block;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < blocks; ++b)
      scales[n * blocks + b] = quantize_q8_block(W + n * K + b * kQ8Block, q + n * K + b * kQ8Block);
}

void quantize_q4_rows(const float* W, int64_t N, int64_t K, uint8_t* q, float* scale_min) {
  const int64_t blocks = K / kQ8Block;
  uint8_t u[kQ8Block];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < blocks; ++b) {
      uint16_t scale, min;
      quantize_q4_block(W + n * K + b * kQ8Block, u, &scale, &min);
      uint8_t* out = q + (n * K + b * kQ8Block) / 2;
      for (int j = 0; j < kQ8Block / 2; ++j) out[j] = static_cast<uint8_t>(u[j] | (u[j + kQ8Block / 2] << 4));
      scale_min[2 * (n * blocks + b)] = f16_to_f32(scale);
      scale_min[2 * (n * blocks + b) + 1] = f16_to_f32(min);
    }
}

void quantize_device_rows(DType dtype, const float* W, int64_t N, int64_t K, std::vector<uint8_t>* q,
                          std::vector<float>* scales) {
  const bool q4 = dtype == DType::kQ4;
  q->resize(static_cast<size_t>(q4 ? N * K / 2 : N * K));
  scales->resize(static_cast<size_t>((q4 ? 2 : 1) * N * (K / kQ8Block)));
  if (q4) quantize_q4_rows(W, N, K, q->data(), scales->data());
  else quantize_q8_rows(W, N, K, reinterpret_cast<int8_t*>(q->data()), scales->data());
}

Status gemm_host(const float* X, int64_t M, const float* W, int64_t N, int64_t K, const float* bias, DType w_dtype,
                 GemmBackend backend, int iters, float* Y, GemmTiming* timing) {
  if (M < 0 || N < 0 || K < 0) return InvalidArgument("gemm: sizes must be >= 0");
  SD_RETURN_IF_ERROR(check_weight_layout(w_dtype, K, "gemm (CUDA)"));
  bool use_cublas = false;
  if (backend == GemmBackend::kCublas) {
    if (is_quantized(w_dtype)) return InvalidArgument("gemm (CUDA): the cublas backend takes bfloat16 or float16 weights");
    SD_RETURN_IF_ERROR(cublas_load(nullptr));
    use_cublas = true;
  } else if (backend == GemmBackend::kAuto) {
    use_cublas = M > kGemvMaxM && !is_quantized(w_dtype) && cublas_load(nullptr).ok();
  }
  if (timing) timing->backend = use_cublas ? "cublas" : "gemv";

  const size_t wn = static_cast<size_t>(N) * K, xn = static_cast<size_t>(M) * K, yn = static_cast<size_t>(M) * N;
  DeviceBuffer<unsigned char> dw, dx;
  DeviceBuffer<float> dscales, dbias, dy;
  if (is_quantized(w_dtype)) {
    std::vector<uint8_t> q;
    std::vector<float> sc;
    quantize_device_rows(w_dtype, W, N, K, &q, &sc);
    SD_RETURN_IF_ERROR(dw.upload(q));
    SD_RETURN_IF_ERROR(dscales.upload(sc));
  } else {
    std::vector<uint16_t> h(wn);
    for (size_t i = 0; i < wn; ++i) h[i] = w_dtype == DType::kBF16 ? f32_to_bf16(W[i]) : f32_to_f16(W[i]);
    SD_RETURN_IF_ERROR(dw.upload(reinterpret_cast<const unsigned char*>(h.data()), wn * 2));
  }
  if (use_cublas) {
    std::vector<uint16_t> h(xn);
    for (size_t i = 0; i < xn; ++i) h[i] = w_dtype == DType::kBF16 ? f32_to_bf16(X[i]) : f32_to_f16(X[i]);
    SD_RETURN_IF_ERROR(dx.upload(reinterpret_cast<const unsigned char*>(h.data()), xn * 2));
  } else {
    SD_RETURN_IF_ERROR(dx.upload(reinterpret_cast<const unsigned char*>(X), xn * sizeof(float)));
  }
  if (bias) SD_RETURN_IF_ERROR(dbias.upload(bias, static_cast<size_t>(N)));
  SD_RETURN_IF_ERROR(dy.alloc_zeroed(yn));
  if (yn == 0) return Status::Ok();

  auto run = [&]() -> Status {
    if (use_cublas)
      return gemm_cublas(w_dtype, dx.get(), M, dw.get(), N, K, bias ? dbias.get() : nullptr, dy.get(), nullptr);
    return gemv(w_dtype, reinterpret_cast<const float*>(dx.get()), M, dw.get(), dscales.get(), N, K,
                bias ? dbias.get() : nullptr, dy.get(), nullptr);
  };
  SD_RETURN_IF_ERROR(run());
  SD_RETURN_IF_ERROR(sync(nullptr, "gemm (CUDA)"));
  SD_RETURN_IF_ERROR(dy.download(Y, yn));
  if (iters > 0 && timing) {
    for (int i = 0; i < 3; ++i) SD_RETURN_IF_ERROR(run());
    SD_RETURN_IF_ERROR(time_iterations(iters, run, &timing->ms));
  }
  return Status::Ok();
}

}  // namespace sd::cuda
