// Sampling on the GPU, one block per row, the same processed distribution and the same draw as
// the CPU sampler (sampling/sampler.cpp): temperature -> top-k -> top-p -> min-p, then the
// inverse CDF at philox_uniform(seed, counter, 0); greedy rows take the first argmax.
//
// The top-k / top-p cut is a prefix of the order "probability descending, lower id first"
// (std::partial_sort / std::sort with by_prob on the CPU). Each element gets a distinct 64-bit
// order key (float bits of its unnormalized probability << 32 | ~id), and the cut is a key
// threshold found by an MSB-first radix select (8 passes of 8 bits over the row at most, a
// 256-bin shared histogram per pass, early exit once the boundary bin is resolved):
//   top-k: the k-th largest key;  top-p: the largest key whose prefix mass reaches
//   top_p * (mass of the top-k set), masses in 62-bit fixed point (exact integer sums, so the
//   decision is deterministic and matches the CPU's double sums except within ~V * 2^-45 of
//   the boundary). Complexity per row: O(V) for max / exp / normalize / draw, plus O(V) per
//   select pass (<= 8 per select; usually 4: ties are rare).
// Probability values: expf of __fmul_rn(logit, 1/T) - max (no FMA contraction, so the top
// token is exactly 1 before normalization like the CPU's, which min-p relies on). CUDA's expf
// is within 2 ulp of the CPU's, so rows agree to ~1e-7 relative and sampled tokens agree except
// when u lands that close to a cumulative boundary.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/block_utils.cuh"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"
#include "sampling/philox.h"

namespace sd::cuda {

namespace {

using detail::ArgmaxShared;
using detail::DrawShared;
using detail::MaxOp;
using detail::SumOp;

constexpr int kThreads = 512;

__device__ __forceinline__ uint64_t order_key(float p, int64_t i) {
  // p >= 0, so its bits order like its value; ~i puts the lower id first among equal values.
  return (static_cast<uint64_t>(__float_as_uint(p)) << 32) | static_cast<uint64_t>(0xffffffffu - static_cast<uint32_t>(i));
}

// 2^s with V * 2^s < 2^62: the fixed-point scale of probabilities <= 1 (sums cannot overflow).
__device__ __forceinline__ double fixed_scale(int64_t V) {
  const int bits = 64 - __clzll(static_cast<long long>(V));
  return ldexp(1.0, 62 - bits);
}
__device__ __forceinline__ unsigned long long fixed(float p, double scale) {
  return __double2ull_rz(static_cast<double>(p) * scale);
}

struct SelectShared {
  unsigned int cnt[256];
  unsigned long long mass[256];
  unsigned long long prefix, above_cnt, above_mass, key, count, weight;
  int done;
};

struct Selected {
  uint64_t key;    // keep the elements with order_key >= key
  uint64_t count;  // how many
  uint64_t mass;   // their fixed-point mass
};

// The largest element key K with W({key >= K}) >= target, where W counts elements (by_mass
// false) or sums their fixed-point mass; K = 0 (keep all) when the whole row weighs less.
// Called by all threads; p must be visible to the block (synchronized) and is only read.
__device__ Selected radix_select(const float* p, int64_t V, bool by_mass, double target, double scale, SelectShared* sh) {
  uint64_t prefix = 0, above_cnt = 0, above_mass = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      sh->cnt[b] = 0u;
      sh->mass[b] = 0ull;
    }
    __syncthreads();
    const uint64_t hi_mask = shift == 56 ? 0ull : (~0ull << (shift + 8));
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      const float v = p[i];
      const uint64_t key = order_key(v, i);
      if ((key & hi_mask) != prefix) continue;
      const unsigned d = static_cast<unsigned>((key >> shift) & 0xffu);
      atomicAdd(&sh->cnt[d], 1u);
      atomicAdd(&sh->mass[d], fixed(v, scale));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t acc_c = above_cnt, acc_m = above_mass;
      int chosen = -1;
      for (int b = 255; b >= 0; --b) {
        const uint64_t w = by_mass ? acc_m + sh->mass[b] : acc_c + sh->cnt[b];
        if (static_cast<double>(w) >= target) {
          chosen = b;
          break;
        }
        acc_c += sh->cnt[b];
        acc_m += sh->mass[b];
      }
      if (chosen < 0) {  // only on the first pass: the row weighs less than target
        sh->done = 1;
        sh->key = 0;
        sh->count = acc_c;
        sh->weight = acc_m;
      } else {
        const uint64_t c = sh->cnt[chosen];
        const uint64_t pre = prefix | (static_cast<uint64_t>(chosen) << shift);
        // Resolved when the bin is one key (last pass, or a single element) or, counting,
        // when the whole bin is needed: then every key with this prefix is kept.
        const bool done = shift == 0 || c == 1 || (!by_mass && static_cast<double>(acc_c + c) == target);
        sh->done = done ? 1 : 0;
        sh->prefix = pre;
        sh->above_cnt = acc_c;
        sh->above_mass = acc_m;
        sh->key = pre;
        sh->count = acc_c + c;
        sh->weight = acc_m + sh->mass[chosen];
      }
    }
    __syncthreads();
    if (sh->done) return Selected{sh->key, sh->count, sh->weight};
    prefix = sh->prefix;
    above_cnt = sh->above_cnt;
    above_mass = sh->above_mass;
  }
  return Selected{0, 0, 0};  // unreachable: the last pass always resolves
}

struct SampleShared {
  union {
    SelectShared sel;
    DrawShared draw;
    ArgmaxShared arg;
  } u;
  float fmax[32];
  double dsum[32];
  unsigned long long usum[32];
};

__global__ void __launch_bounds__(kThreads) argmax_kernel(const float* logits, int64_t V, int32_t* tokens) {
  __shared__ ArgmaxShared sh;
  const int64_t best = detail::block_argmax(logits + static_cast<int64_t>(blockIdx.x) * V, V, &sh);
  if (threadIdx.x == 0) tokens[blockIdx.x] = static_cast<int32_t>(best);
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, int64_t V, const SamplingRow* rows,
                                                          float* probs, int32_t* tokens) {
  __shared__ SampleShared sh;
  const int64_t b = blockIdx.x;
  const float* x = logits + b * V;
  float* p = probs + b * V;
  const SamplingRow r = rows[b];

  if (r.temperature == 0.0f) {  // greedy: one-hot on the first argmax
    const int64_t best = detail::block_argmax(x, V, &sh.u.arg);
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) p[i] = i == best ? 1.0f : 0.0f;
    if (tokens != nullptr && threadIdx.x == 0) tokens[b] = static_cast<int32_t>(best);
    return;
  }

  // Softmax numerators exp(l / T - max), the max exactly 1.
  const float inv_t = 1.0f / r.temperature;
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, __fmul_rn(x[i], inv_t));
  mx = detail::block_allreduce(mx, MaxOp{}, -INFINITY, sh.fmax);
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) p[i] = expf(__fmul_rn(x[i], inv_t) - mx);
  __syncthreads();

  // Top-k then top-p: a threshold on the order key.
  const bool use_top_k = r.top_k > 0 && r.top_k < V;
  const bool use_top_p = r.top_p < 1.0f;
  uint64_t threshold = 0;
  if (use_top_k || use_top_p) {
    const double scale = fixed_scale(V);
    unsigned long long total;
    if (use_top_k) {
      const Selected s = radix_select(p, V, false, static_cast<double>(r.top_k), scale, &sh.u.sel);
      threshold = s.key;
      total = s.mass;
    } else {
      unsigned long long t = 0;
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x) t += fixed(p[i], scale);
      total = detail::block_allreduce(t, SumOp{}, 0ull, sh.usum);
    }
    if (use_top_p) {
      const Selected s = radix_select(p, V, true, static_cast<double>(r.top_p) * static_cast<double>(total), scale, &sh.u.sel);
      threshold = s.key > threshold ? s.key : threshold;
    }
  }

  // Cut, min-p (on the unnormalized values: the max is 1), normalize with a double sum.
  const float min_p = r.min_p;
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    float v = p[i];
    const bool keep = order_key(v, i) >= threshold && !(min_p > 0.0f && v < min_p);
    v = keep ? v : 0.0f;
    p[i] = v;
    sum += static_cast<double>(v);
  }
  sum = detail::block_allreduce(sum, SumOp{}, 0.0, sh.dsum);
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) p[i] *= inv;

  if (tokens != nullptr) {
    __syncthreads();  // the normalized row, written by every thread, is read by every warp
    const float u = philox_uniform(r.seed, r.counter, 0);
    const int64_t tok = detail::block_draw(p, V, u, &sh.u.draw);
    if (threadIdx.x == 0) tokens[b] = static_cast<int32_t>(tok);
  }
}

Status check_rows(int64_t B, int64_t V, const char* op) {
  if (B < 0 || B > 0x7fffffff || V <= 0 || V > 0x7fffffff)
    return InvalidArgument(std::string(op) + ": expected 0 <= B < 2^31 rows and 0 < V < 2^31 columns");
  return Status::Ok();
}

}  // namespace

Status argmax(const float* logits, int64_t B, int64_t V, int32_t* tokens, cudaStream_t stream) {
  SD_RETURN_IF_ERROR(check_rows(B, V, "argmax"));
  if (B == 0) return Status::Ok();
  argmax_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(logits, V, tokens);
  return check_launch("argmax_kernel");
}

Status sample(const float* logits, int64_t B, int64_t V, const SamplingRow* rows, float* probs, int32_t* tokens,
              cudaStream_t stream) {
  SD_RETURN_IF_ERROR(check_rows(B, V, "sample"));
  if (B == 0) return Status::Ok();
  sample_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(logits, V, rows, probs, tokens);
  return check_launch("sample_kernel");
}

// ---- host wrappers ---------------------------------------------------------------------------

Status argmax_host(const float* logits, int64_t B, int64_t V, int32_t* tokens) {
  SD_RETURN_IF_ERROR(check_rows(B, V, "argmax"));
  DeviceBuffer<float> dl;
  DeviceBuffer<int32_t> dt;
  SD_RETURN_IF_ERROR(dl.upload(logits, static_cast<size_t>(B * V)));
  SD_RETURN_IF_ERROR(dt.alloc(static_cast<size_t>(B)));
  SD_RETURN_IF_ERROR(argmax(dl.get(), B, V, dt.get(), nullptr));
  SD_RETURN_IF_ERROR(sync(nullptr, "argmax"));
  return dt.download(tokens, static_cast<size_t>(B));
}

Status sample_host(const float* logits, int64_t B, int64_t V, const SamplingRow* rows, float* probs, int32_t* tokens) {
  SD_RETURN_IF_ERROR(check_rows(B, V, "sample"));
  DeviceBuffer<float> dl, dp;
  DeviceBuffer<SamplingRow> dr;
  DeviceBuffer<int32_t> dt;
  SD_RETURN_IF_ERROR(dl.upload(logits, static_cast<size_t>(B * V)));
  SD_RETURN_IF_ERROR(dr.upload(rows, static_cast<size_t>(B)));
  SD_RETURN_IF_ERROR(dp.alloc(static_cast<size_t>(B * V)));
  if (tokens != nullptr) SD_RETURN_IF_ERROR(dt.alloc(static_cast<size_t>(B)));
  SD_RETURN_IF_ERROR(sample(dl.get(), B, V, dr.get(), dp.get(), tokens != nullptr ? dt.get() : nullptr, nullptr));
  SD_RETURN_IF_ERROR(sync(nullptr, "sample"));
  if (probs != nullptr) SD_RETURN_IF_ERROR(dp.download(probs, static_cast<size_t>(B * V)));
  if (tokens != nullptr) SD_RETURN_IF_ERROR(dt.download(tokens, static_cast<size_t>(B)));
  return Status::Ok();
}

}  // namespace sd::cuda
