// Element-wise ops of the decoder layer on the GPU, same semantics as the CPU ops (ops/ops.h):
// rotate-half RoPE in place, SiLU(gate) * up, the residual add, f32 -> bf16 / f16 rounding, and
// the embedding gather from an f32, bf16 or f16 table (fp32 out). Grid-stride loops; consecutive threads touch consecutive elements.
#include <cuda_runtime.h>

#include <string>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"

namespace sd::cuda {

namespace {

constexpr int kThreads = 256;

// Element (t, h, i < half) rotates the pair (i, i + half) of head h of token t.
__global__ void __launch_bounds__(kThreads) rope_kernel(float* x, const int32_t* positions, int64_t T, int64_t n_heads,
                                                        int64_t half, int64_t stride, const float* inv_freq) {
  const int64_t n = T * n_heads * half;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % half, th = e / half, h = th % n_heads, t = th / n_heads;
    const float angle = static_cast<float>(positions[t]) * inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    float* v = x + t * stride + h * 2 * half;
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
  }
}

__global__ void __launch_bounds__(kThreads) silu_mul_kernel(const float* gate_up, int64_t M, int64_t I, float* out) {
  const int64_t n = M * I;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = e / I, i = e % I;
    const float g = gate_up[m * 2 * I + i], u = gate_up[m * 2 * I + I + i];
    out[e] = g / (1.0f + expf(-g)) * u;
  }
}

__global__ void __launch_bounds__(kThreads) add_inplace_kernel(float* x, const float* y, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[e] += y[e];
}

template <bool kBF16>
__global__ void __launch_bounds__(kThreads) to_half_kernel(const float* x, int64_t n, uint16_t* out) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[e] = kBF16 ? f32_to_bf16(x[e]) : f32_to_f16(x[e]);
}

struct BF16Tag {};
struct F16Tag {};
template <class Tag>
__device__ __forceinline__ float bits16_to_f32(uint16_t h) {
  if constexpr (std::is_same_v<Tag, BF16Tag>) return bf16_to_f32(h);
  else return f16_to_f32(h);
}

// Storage type S (float or uint16_t), Tag picks the 16-bit format.
template <class S, class Tag>
__device__ __forceinline__ float load_as_f32(const S* p) {
  if constexpr (std::is_same_v<S, float>) return *p;
  else return bits16_to_f32<Tag>(*p);
}

template <class S, class Tag>
__global__ void __launch_bounds__(kThreads) embedding_kernel(const S* table, int64_t rows, int64_t cols, const int32_t* ids,
                                                             int64_t T, float* out, int32_t* bad_pos) {
  const int64_t n = T * cols;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / cols, c = e % cols;
    const int64_t id = ids[t];
    if (id < 0 || id >= rows) {
      out[e] = 0.0f;
      if (bad_pos != nullptr && c == 0) atomicCAS(bad_pos, -1, static_cast<int32_t>(t));
      continue;
    }
    out[e] = load_as_f32<S, Tag>(table + id * cols + c);
  }
}

}  // namespace

Status rope(float* x, const int32_t* positions, int64_t T, int64_t n_heads, int64_t head_dim, int64_t stride,
            const float* inv_freq, cudaStream_t stream) {
  if (T < 0 || n_heads < 0 || head_dim <= 0 || head_dim % 2 != 0 || stride < n_heads * head_dim)
    return InvalidArgument("rope: expected T, n_heads >= 0, an even head_dim > 0 and stride >= n_heads * head_dim");
  const int64_t n = T * n_heads * (head_dim / 2);
  if (n == 0) return Status::Ok();
  rope_kernel<<<grid_blocks(n, kThreads), kThreads, 0, stream>>>(x, positions, T, n_heads, head_dim / 2, stride, inv_freq);
  return check_launch("rope_kernel");
}

Status silu_mul(const float* gate_up, int64_t M, int64_t I, float* out, cudaStream_t stream) {
  if (M < 0 || I < 0) return InvalidArgument("silu_mul: expected M, I >= 0");
  if (M * I == 0) return Status::Ok();
  silu_mul_kernel<<<grid_blocks(M * I, kThreads), kThreads, 0, stream>>>(gate_up, M, I, out);
  return check_launch("silu_mul_kernel");
}

Status add_inplace(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n < 0) return InvalidArgument("add_inplace: expected n >= 0");
  if (n == 0) return Status::Ok();
  add_inplace_kernel<<<grid_blocks(n, kThreads), kThreads, 0, stream>>>(x, y, n);
  return check_launch("add_inplace_kernel");
}

Status to_half(DType dtype, const float* x, int64_t n, uint16_t* out, cudaStream_t stream) {
  if (n < 0) return InvalidArgument("to_half: expected n >= 0");
  if (dtype != DType::kBF16 && dtype != DType::kF16)
    return InvalidArgument(std::string("to_half: dtype must be bfloat16 or float16, got ") + dtype_name(dtype));
  if (n == 0) return Status::Ok();
  if (dtype == DType::kBF16) to_half_kernel<true><<<grid_blocks(n, kThreads), kThreads, 0, stream>>>(x, n, out);
  else to_half_kernel<false><<<grid_blocks(n, kThreads), kThreads, 0, stream>>>(x, n, out);
  return check_launch("to_half_kernel");
}

Status embedding(DType dtype, const void* table, int64_t rows, int64_t cols, const int32_t* ids, int64_t T, float* out,
                 int32_t* bad_pos, cudaStream_t stream) {
  if (rows < 0 || cols <= 0 || T < 0) return InvalidArgument("embedding: expected rows >= 0, cols > 0, T >= 0");
  if (T > 0x7fffffff) return InvalidArgument("embedding: more than 2^31 - 1 ids");
  if (T == 0) return Status::Ok();
  const unsigned grid = grid_blocks(T * cols, kThreads);
  switch (dtype) {
    case DType::kF32:
      embedding_kernel<float, BF16Tag><<<grid, kThreads, 0, stream>>>(static_cast<const float*>(table), rows, cols, ids,
                                                                      T, out, bad_pos);
      break;
    case DType::kBF16:
      embedding_kernel<uint16_t, BF16Tag><<<grid, kThreads, 0, stream>>>(static_cast<const uint16_t*>(table), rows, cols,
                                                                         ids, T, out, bad_pos);
      break;
    case DType::kF16:
      embedding_kernel<uint16_t, F16Tag><<<grid, kThreads, 0, stream>>>(static_cast<const uint16_t*>(table), rows, cols,
                                                                        ids, T, out, bad_pos);
      break;
    default:
      return Unsupported(std::string("embedding: table dtype ") + dtype_name(dtype) +
                         " (the CUDA gather takes float32, bfloat16 or float16)");
  }
  return check_launch("embedding_kernel");
}

// ---- host wrappers ---------------------------------------------------------------------------

Status rope_host(float* x, const int32_t* positions, int64_t T, int64_t n_heads, int64_t head_dim, const float* inv_freq) {
  const size_t n = static_cast<size_t>(T * n_heads * head_dim);
  DeviceBuffer<float> dx, dinv;
  DeviceBuffer<int32_t> dpos;
  SD_RETURN_IF_ERROR(dx.upload(x, n));
  SD_RETURN_IF_ERROR(dpos.upload(positions, static_cast<size_t>(T)));
  SD_RETURN_IF_ERROR(dinv.upload(inv_freq, static_cast<size_t>(head_dim / 2)));
  SD_RETURN_IF_ERROR(rope(dx.get(), dpos.get(), T, n_heads, head_dim, n_heads * head_dim, dinv.get(), nullptr));
  SD_RETURN_IF_ERROR(sync(nullptr, "rope"));
  return dx.download(x, n);
}

Status silu_mul_host(const float* gate_up, int64_t M, int64_t I, float* out) {
  DeviceBuffer<float> dg, dout;
  SD_RETURN_IF_ERROR(dg.upload(gate_up, static_cast<size_t>(M * 2 * I)));
  SD_RETURN_IF_ERROR(dout.alloc(static_cast<size_t>(M * I)));
  SD_RETURN_IF_ERROR(silu_mul(dg.get(), M, I, dout.get(), nullptr));
  SD_RETURN_IF_ERROR(sync(nullptr, "silu_mul"));
  return dout.download(out, static_cast<size_t>(M * I));
}

Status embedding_host(DType dtype, const float* table, int64_t rows, int64_t cols, const int32_t* ids, int64_t T,
                      float* out) {
  const size_t n = static_cast<size_t>(rows * cols);
  DeviceBuffer<float> t32;
  DeviceBuffer<uint16_t> t16;
  const void* dtable = nullptr;
  if (dtype == DType::kF32) {
    SD_RETURN_IF_ERROR(t32.upload(table, n));
    dtable = t32.get();
  } else if (dtype == DType::kBF16 || dtype == DType::kF16) {
    std::vector<uint16_t> bits(n);
    for (size_t i = 0; i < n; ++i) bits[i] = dtype == DType::kBF16 ? f32_to_bf16(table[i]) : f32_to_f16(table[i]);
    SD_RETURN_IF_ERROR(t16.upload(bits));
    dtable = t16.get();
  } else {
    return Unsupported(std::string("embedding: table dtype ") + dtype_name(dtype));
  }
  DeviceBuffer<int32_t> dids, dbad;
  DeviceBuffer<float> dout;
  const int32_t minus_one = -1;
  SD_RETURN_IF_ERROR(dids.upload(ids, static_cast<size_t>(T)));
  SD_RETURN_IF_ERROR(dbad.upload(&minus_one, 1));
  SD_RETURN_IF_ERROR(dout.alloc(static_cast<size_t>(T * cols)));
  SD_RETURN_IF_ERROR(embedding(dtype, dtable, rows, cols, dids.get(), T, dout.get(), dbad.get(), nullptr));
  SD_RETURN_IF_ERROR(sync(nullptr, "embedding"));
  int32_t bad = -1;
  SD_RETURN_IF_ERROR(dbad.download(&bad, 1));
  if (bad >= 0)
    return InvalidArgument("ids: token id " + std::to_string(ids[bad]) + " at position " + std::to_string(bad) +
                           " is out of range [0, " + std::to_string(rows) + ")");
  return dout.download(out, static_cast<size_t>(T * cols));
}

}  // namespace sd::cuda
