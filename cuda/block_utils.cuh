// Device helpers shared by the sampling kernels (sampling.cu, spec_sampling.cu): deterministic
// block reductions, the row argmax, and the inverse-CDF draw of sd::sample_from_probs.
// Every helper is called by ALL threads of a block (it synchronizes), with blockDim.x a multiple
// of 32 and at most 1024. Reductions use a fixed order (per-thread strided sums, a fixed
// shuffle tree, warps in index order), so a given input gives the same bits on every run.
#pragma once
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

namespace sd::cuda::detail {

constexpr unsigned kFullMask = 0xffffffffu;

struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

template <class T, class Op>
__device__ __forceinline__ T warp_allreduce(T v, Op op) {
  for (int off = 16; off > 0; off /= 2) v = op(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// The reduction of every thread's v, returned to every thread. smem: 32 T of shared memory.
template <class T, class Op>
__device__ T block_allreduce(T v, Op op, T identity, T* smem) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_allreduce(v, op);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  T r = identity;
  for (int w = 0; w < nwarps; ++w) r = op(r, smem[w]);
  return r;
}

// Inclusive prefix sum over the lanes of a warp.
template <class T>
__device__ __forceinline__ T warp_inclusive_scan(T x) {
  const int lane = threadIdx.x % 32;
  for (int off = 1; off < 32; off *= 2) {
    const T y = __shfl_up_sync(kFullMask, x, off);
    if (lane >= off) x += y;
  }
  return x;
}

// (value, index) pairs: larger value first, the lower index among equal values.
struct ArgBest {
  float v;
  int64_t i;
};
__device__ __forceinline__ ArgBest better(ArgBest a, ArgBest b) {
  return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
}

struct ArgmaxShared {
  float v[32];
  int64_t i[32];
};

// sd::argmax of x[0, V): the first index of the maximum (NaNs are not ordered: unspecified).
__device__ inline int64_t block_argmax(const float* x, int64_t V, ArgmaxShared* sh) {
  ArgBest best{-INFINITY, LLONG_MAX};
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) best = better(best, ArgBest{x[i], i});
  for (int off = 16; off > 0; off /= 2) {
    ArgBest o{__shfl_xor_sync(kFullMask, best.v, off), __shfl_xor_sync(kFullMask, best.i, off)};
    best = better(best, o);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) {
    sh->v[warp] = best.v;
    sh->i[warp] = best.i;
  }
  __syncthreads();
  ArgBest r{-INFINITY, LLONG_MAX};
  for (int w = 0; w < nwarps; ++w) r = better(r, ArgBest{sh->v[w], sh->i[w]});
  return r.i == LLONG_MAX ? 0 : r.i;  // V == 0 cannot happen; all -inf gives 0 like the CPU
}

struct DrawShared {
  double total[32];
  int64_t last[32];
  unsigned long long found;
};

// sd::sample_from_probs(p, V, u): the first i with p[i] > 0 and u < sum_{j <= i, p[j] > 0} p[j]
// (sums in double), else the last nonzero index (0 when none). Each warp owns a contiguous
// segment of the row: pass 1 sums the segments (coalesced), pass 2 walks each segment in tiles
// of 32 with a warp scan from its segment's base until the first hit. O(V / blockDim) per thread.
// The sums associate differently from the CPU's sequential loop (relative differences ~1e-16):
// the drawn token differs only when u falls within that distance of a cumulative boundary.
__device__ inline int64_t block_draw(const float* p, int64_t V, float u, DrawShared* sh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  const int64_t seg = (V + nwarps - 1) / nwarps;
  const int64_t b0 = static_cast<int64_t>(warp) * seg;
  const int64_t b1 = b0 + seg < V ? b0 + seg : V;
  double s = 0.0;
  int64_t last = -1;
  for (int64_t i = b0 + lane; i < b1; i += 32) {
    const float v = p[i];
    if (v > 0.0f) {
      s += static_cast<double>(v);
      last = i;
    }
  }
  s = warp_allreduce(s, SumOp{});
  last = warp_allreduce(last, MaxOp{});
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) {
    sh->total[warp] = s;
    sh->last[warp] = last;
  }
  if (threadIdx.x == 0) sh->found = ULLONG_MAX;
  __syncthreads();
  double carry = 0.0;
  int64_t last_nonzero = -1;
  for (int w = 0; w < nwarps; ++w) {
    if (w < warp) carry += sh->total[w];
    last_nonzero = sh->last[w] > last_nonzero ? sh->last[w] : last_nonzero;
  }
  const double ud = static_cast<double>(u);
  for (int64_t start = b0; start < b1; start += 32) {  // warp-uniform loop
    const int64_t i = start + lane;
    const float v = i < b1 ? p[i] : 0.0f;
    const double c = warp_inclusive_scan(v > 0.0f ? static_cast<double>(v) : 0.0);
    const bool hit = i < b1 && v > 0.0f && ud < carry + c;
    const unsigned m = __ballot_sync(kFullMask, hit);
    if (m != 0u) {
      if (lane == __ffs(static_cast<int>(m)) - 1) atomicMin(&sh->found, static_cast<unsigned long long>(i));
      break;
    }
    carry += __shfl_sync(kFullMask, c, 31);
  }
  __syncthreads();
  const unsigned long long f = sh->found;
  if (f != ULLONG_MAX) return static_cast<int64_t>(f);
  return last_nonzero >= 0 ? last_nonzero : 0;
}

}  // namespace sd::cuda::detail
