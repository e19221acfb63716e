// Paged attention on the GPU: decode and tree verification (bit-packed custom mask), split-KV
// with a merge kernel. See cuda/attention_ops.h for the layout and the schedule.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>

#include "cuda/attention_device.h"

namespace sd::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = kAttnMaxRows / kWarps;  // 4: warp w owns rows w, w + 4, w + 8, w + 12
constexpr int kBK = kAttnKeyTile;                    // 32 keys per tile: lane j scores key j
constexpr int kStages = 2;
constexpr unsigned kFull = 0xffffffffu;
static_assert(kThreads % kBK == 0, "threads per key must be whole");

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <class T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// N consecutive elements, aligned to their size (one vector load / store for 4, 8, 16 bytes).
template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;  // 0: nothing is read, the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(kFull, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(kFull, x, o);
  return x;
}

struct KernelParams {
  const void* q;
  void* out;
  const void* k;
  const void* v;
  const int32_t* kv_indptr;
  const int32_t* kv_indices;
  const uint8_t* mask;             // packed bits, null = causal
  const int64_t* mask_byte_indptr;  // bytes
  const AttnWorkItem* items;
  const int32_t* part_base;
  float* part_o;
  float* part_lse;
  int32_t page_size, num_kv_heads, num_qo_heads, group, heads_per_block, head_blocks;
  float scale_log2;  // sm_scale * log2(e): scores are kept in base 2
};

template <class T, int D>
struct TileShape {
  static constexpr int kEpc = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
  static constexpr int kLd = D + kEpc;                            // padded row: conflict-free 16-byte reads
  static constexpr int kChunksPerRow = D / kEpc;
  static constexpr int kThreadsPerKey = kThreads / kBK;
  static constexpr int kChunksPerThread = kChunksPerRow / kThreadsPerKey;
  static constexpr int kDpl = D / 32;  // output dims per lane
  static constexpr size_t kQBytes = static_cast<size_t>(kAttnMaxRows) * D * sizeof(float);
  static constexpr size_t kTileElems = static_cast<size_t>(kBK) * kLd;
  static constexpr size_t kSmemBytes = kQBytes + 2 * kStages * kTileElems * sizeof(T);
  static_assert(kChunksPerRow % kThreadsPerKey == 0, "a K/V row splits evenly over its threads");
  static_assert(D % 32 == 0, "head_dim is a multiple of 32");
};

// Issues the cp.async copies of keys [key0, key0 + kBK) (zero-filled at and past key_end) of
// kv head `kh` into one stage of the K and V tiles.
template <class T, int D>
__device__ __forceinline__ void load_kv_tile(T* ks, T* vs, const T* K, const T* V, const int32_t* pages,
                                             int page_size, int num_kv_heads, int kh, int key0, int key_end,
                                             int tid) {
  using S = TileShape<T, D>;
  const int jj = tid / S::kThreadsPerKey, part = tid % S::kThreadsPerKey;
  const int j = key0 + jj;
  const bool valid = j < key_end;
  int64_t row = 0;
  if (valid) row = (static_cast<int64_t>(pages[j / page_size]) * page_size + j % page_size) * num_kv_heads + kh;
  const T* krow = K + row * D;
  const T* vrow = V + row * D;
  T* kd = ks + jj * S::kLd;
  T* vd = vs + jj * S::kLd;
#pragma unroll
  for (int c = 0; c < S::kChunksPerThread; ++c) {
    const int e = (part + c * S::kThreadsPerKey) * S::kEpc;
    cp_async16(kd + e, krow + e, valid);
    cp_async16(vd + e, vrow + e, valid);
  }
}

template <class T, class QT, int D>
__global__ void __launch_bounds__(kThreads) paged_attention_kernel(const KernelParams p) {
  using S = TileShape<T, D>;
  constexpr int kEpc = S::kEpc, kLd = S::kLd, kDpl = S::kDpl;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* q_s = reinterpret_cast<float*>(smem_raw);
  T* k_s = reinterpret_cast<T*>(smem_raw + S::kQBytes);
  T* v_s = k_s + kStages * S::kTileElems;

  const AttnWorkItem it = p.items[blockIdx.x];
  if (it.q_count <= 0) return;  // padding (a plan sized for a CUDA graph: pad_attention_plan)
  const int kh = blockIdx.y / p.head_blocks, hb = blockIdx.y % p.head_blocks;
  const int head0 = kh * p.group + hb * p.heads_per_block;
  const int nheads = min(p.heads_per_block, p.group - hb * p.heads_per_block);
  const int rows = it.q_count * nheads;  // row r: token tok0 + r / nheads, qo head head0 + r % nheads
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  const T* K = static_cast<const T*>(p.k);
  const T* V = static_cast<const T*>(p.v);
  const int32_t* pages = p.kv_indices + p.kv_indptr[it.request];
  const int ntiles = (it.kv_end - it.kv_start + kBK - 1) / kBK;

  // Stage 0 in flight while q is staged (f32, pre-scaled into base 2).
  load_kv_tile<T, D>(k_s, v_s, K, V, pages, p.page_size, p.num_kv_heads, kh, it.kv_start, it.kv_end, tid);
  cp_async_commit();
  const QT* Q = static_cast<const QT*>(p.q);
  for (int e = tid; e < rows * D; e += kThreads) {
    const int r = e / D, d = e % D;
    const int64_t tok = it.tok0 + r / nheads, h = head0 + r % nheads;
    q_s[e] = to_f(Q[(tok * p.num_qo_heads + h) * D + d]) * p.scale_log2;
  }

  const uint8_t* mask = p.mask ? p.mask + p.mask_byte_indptr[it.request] : nullptr;
  // Rows of this warp: warp + kWarps * i for i < nrw (warp-uniform).
  const int nrw = rows > warp ? (rows - warp + kWarps - 1) / kWarps : 0;
  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kDpl];
  int qloc[kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
    qloc[i] = it.q_local0 + (warp + kWarps * i) / nheads;
#pragma unroll
    for (int k = 0; k < kDpl; ++k) acc[i][k] = 0.f;
  }

  for (int t = 0; t < ntiles; ++t) {
    const int stage = t & 1;
    if (t + 1 < ntiles)
      load_kv_tile<T, D>(k_s + (stage ^ 1) * S::kTileElems, v_s + (stage ^ 1) * S::kTileElems, K, V, pages,
                         p.page_size, p.num_kv_heads, kh, it.kv_start + (t + 1) * kBK, it.kv_end, tid);
    cp_async_commit();  // possibly an empty group: keeps the wait count uniform
    cp_async_wait<1>();  // this thread's copies of tile t have landed
    __syncthreads();     // ... and everyone's (and q_s, on the first tile)

    if (nrw > 0) {
      const T* kt = k_s + stage * S::kTileElems;
      const T* vt = v_s + stage * S::kTileElems;
      const int key0 = it.kv_start + t * kBK;
      const int j = key0 + lane;

      // Scores: lane j, the warp's rows.
      float s[kRowsPerWarp];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) s[i] = 0.f;
#pragma unroll
      for (int c = 0; c < D / kEpc; ++c) {
        const Vec<T, kEpc> kv = *reinterpret_cast<const Vec<T, kEpc>*>(kt + lane * kLd + c * kEpc);
        float kf[kEpc];
#pragma unroll
        for (int e = 0; e < kEpc; ++e) kf[e] = to_f(kv.v[e]);
#pragma unroll
        for (int i = 0; i < kRowsPerWarp; ++i) {
          if (i < nrw) {
            const float* qr = q_s + (warp + kWarps * i) * D + c * kEpc;
#pragma unroll
            for (int e = 0; e < kEpc; e += 4) {
              const float4 qv = *reinterpret_cast<const float4*>(qr + e);
              s[i] = fmaf(qv.x, kf[e], s[i]);
              s[i] = fmaf(qv.y, kf[e + 1], s[i]);
              s[i] = fmaf(qv.z, kf[e + 2], s[i]);
              s[i] = fmaf(qv.w, kf[e + 3], s[i]);
            }
          }
        }
      }

      // Mask, online softmax (base 2). s[i] becomes the probability of key j for row i.
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        if (i < nrw) {
          bool vis = j < it.kv_end;
          if (vis) {
            if (mask) {
              const int64_t bit = static_cast<int64_t>(qloc[i]) * it.kv_len + j;
              vis = (mask[bit >> 3] >> (bit & 7)) & 1;
            } else {
              vis = j <= it.diag + qloc[i];
            }
          }
          const float si = vis ? s[i] : -INFINITY;
          const float mnew = fmaxf(m[i], warp_max(si));
          float alpha = 1.f, pi = 0.f;
          if (mnew != -INFINITY) {  // else nothing visible yet: keep m = -inf, l = 0
            alpha = exp2f(m[i] - mnew);  // m = -inf -> 0
            pi = exp2f(si - mnew);       // si = -inf -> 0
          }
          l[i] = l[i] * alpha + pi;  // per-lane partial sums; reduced once at the end
          m[i] = mnew;
#pragma unroll
          for (int k = 0; k < kDpl; ++k) acc[i][k] *= alpha;
          s[i] = pi;
        }
      }

      // acc[i][:] += sum_j p[i][j] * V[j][lane * kDpl ...]
      const int keys = min(kBK, it.kv_end - key0);  // warp-uniform
      for (int jj = 0; jj < keys; ++jj) {
        const Vec<T, kDpl> vv = *reinterpret_cast<const Vec<T, kDpl>*>(vt + jj * kLd + lane * kDpl);
        float vf[kDpl];
#pragma unroll
        for (int k = 0; k < kDpl; ++k) vf[k] = to_f(vv.v[k]);
#pragma unroll
        for (int i = 0; i < kRowsPerWarp; ++i) {
          if (i < nrw) {
            const float pj = __shfl_sync(kFull, s[i], jj);
#pragma unroll
            for (int k = 0; k < kDpl; ++k) acc[i][k] = fmaf(pj, vf[k], acc[i][k]);
          }
        }
      }
    }
    __syncthreads();  // the next iteration's copies overwrite this stage
  }
  cp_async_wait<0>();  // nothing is pending (the last group is empty), but leave none behind

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    if (i < nrw) {
      const int r = warp + kWarps * i;
      const float lsum = warp_sum(l[i]);
      const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
      const int64_t tok = it.tok0 + r / nheads, h = head0 + r % nheads;
      if (it.chunk < 0) {
        QT* o = static_cast<QT*>(p.out) + (tok * p.num_qo_heads + h) * D + lane * kDpl;
        Vec<QT, kDpl> ov;
#pragma unroll
        for (int k = 0; k < kDpl; ++k) ov.v[k] = from_f<QT>(acc[i][k] * inv);
        *reinterpret_cast<Vec<QT, kDpl>*>(o) = ov;
      } else {
        const int64_t slot = static_cast<int64_t>(p.part_base[tok]) + it.chunk;
        float* o = p.part_o + (slot * p.num_qo_heads + h) * D + lane * kDpl;
#pragma unroll
        for (int k = 0; k < kDpl; ++k) o[k] = acc[i][k] * inv;
        if (lane == 0) p.part_lse[slot * p.num_qo_heads + h] = lsum > 0.f ? m[i] + log2f(lsum) : -INFINITY;
      }
    }
  }
}

// out[token, head, :] = sum_c w_c O_c / sum_c w_c with w_c = 2^(lse_c - max lse): one block
// per (split token, qo head), one thread per dim.
template <class QT>
__global__ void merge_partials_kernel(const int32_t* merge, const float* part_o, const float* part_lse,
                                      int num_qo_heads, int head_dim, QT* out) {
  const int e = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const int64_t tok = merge[3 * e], base = merge[3 * e + 1];
  if (tok < 0) return;  // padding
  const int n = merge[3 * e + 2];
  float mx = -INFINITY;
  for (int c = 0; c < n; ++c) mx = fmaxf(mx, part_lse[(base + c) * num_qo_heads + h]);
  float wsum = 0.f, o = 0.f;
  if (mx != -INFINITY) {
    for (int c = 0; c < n; ++c) {
      const float w = exp2f(part_lse[(base + c) * num_qo_heads + h] - mx);
      wsum += w;
      o = fmaf(w, part_o[((base + c) * num_qo_heads + h) * head_dim + d], o);
    }
  }
  out[(tok * num_qo_heads + h) * head_dim + d] = from_f<QT>(wsum > 0.f ? o / wsum : 0.f);
}

template <class T, class QT, int D>
Status launch(const AttentionPlan& plan, const AttentionWorkspace& ws, const PagedKVDevice& kv,
              const PagedAttentionIO& io, cudaStream_t stream) {
  using S = TileShape<T, D>;
  auto kernel = paged_attention_kernel<T, QT, D>;
  // Thread-safe once per instantiation (f32 K/V at head_dim 128 needs > 48 KiB).
  static const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       static_cast<int>(S::kSmemBytes));
  SD_RETURN_IF_ERROR(check(attr, "paged_attention: cudaFuncSetAttribute"));
  KernelParams p;
  p.q = io.q;
  p.out = io.out;
  p.k = kv.k;
  p.v = kv.v;
  p.kv_indptr = io.kv_indptr;
  p.kv_indices = io.kv_indices;
  p.mask = io.packed_mask;
  p.mask_byte_indptr = io.mask_byte_indptr;
  p.items = ws.items;
  p.part_base = ws.part_base;
  p.part_o = ws.part_o.get();
  p.part_lse = ws.part_lse.get();
  p.page_size = kv.page_size;
  p.num_kv_heads = kv.num_kv_heads;
  p.num_qo_heads = plan.num_qo_heads;
  p.group = plan.num_qo_heads / plan.num_kv_heads;
  p.heads_per_block = plan.heads_per_block;
  p.head_blocks = plan.head_blocks;
  p.scale_log2 = io.sm_scale * 1.4426950408889634f;
  const dim3 grid(static_cast<unsigned>(plan.items.size()),
                  static_cast<unsigned>(plan.num_kv_heads * plan.head_blocks));
  kernel<<<grid, kThreads, S::kSmemBytes, stream>>>(p);
  SD_RETURN_IF_ERROR(check_launch("paged_attention_kernel"));
  if (!plan.merge.empty()) {
    const dim3 mgrid(static_cast<unsigned>(plan.merge.size() / 3), static_cast<unsigned>(plan.num_qo_heads));
    merge_partials_kernel<QT><<<mgrid, D, 0, stream>>>(ws.merge, ws.part_o.get(), ws.part_lse.get(),
                                                        plan.num_qo_heads, D, static_cast<QT*>(io.out));
    SD_RETURN_IF_ERROR(check_launch("merge_partials_kernel"));
  }
  return Status::Ok();
}

template <class T, class QT>
Status launch_dim(const AttentionPlan& plan, const AttentionWorkspace& ws, const PagedKVDevice& kv,
                  const PagedAttentionIO& io, cudaStream_t stream) {
  switch (kv.head_dim) {
    case 64: return launch<T, QT, 64>(plan, ws, kv, io, stream);
    case 128: return launch<T, QT, 128>(plan, ws, kv, io, stream);
    default: break;
  }
  return Unsupported("paged_attention (CUDA): head_dim " + std::to_string(kv.head_dim) +
                     " is not supported (64, 128)");
}

template <class T>
Status launch_io(const AttentionPlan& plan, const AttentionWorkspace& ws, const PagedKVDevice& kv,
                 const PagedAttentionIO& io, cudaStream_t stream) {
  if (io.io_dtype == DType::kF32) return launch_dim<T, float>(plan, ws, kv, io, stream);
  if (io.io_dtype == kv.dtype) return launch_dim<T, T>(plan, ws, kv, io, stream);
  return InvalidArgument(std::string("paged_attention (CUDA): q/out dtype must be float32 or the K/V dtype (") +
                         dtype_name(kv.dtype) + "), got " + dtype_name(io.io_dtype));
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

}  // namespace

Status plan_paged_attention(const int32_t* qo_indptr, const int32_t* kv_indptr,
                            const int32_t* kv_last_page_len, int32_t batch, int32_t page_size,
                            int32_t num_qo_heads, int32_t num_kv_heads, int32_t head_dim, bool causal,
                            int32_t kv_chunk, int32_t num_sms, AttentionPlan* plan) {
  if (num_kv_heads <= 0 || num_qo_heads <= 0 || num_qo_heads % num_kv_heads != 0 || page_size <= 0)
    return InvalidArgument("plan_paged_attention: need heads > 0, num_qo_heads a multiple of num_kv_heads, page_size > 0");
  AttentionPlan& P = *plan;
  P = AttentionPlan();
  P.batch = batch;
  P.total_q = batch > 0 ? qo_indptr[batch] : 0;
  P.num_qo_heads = num_qo_heads;
  P.num_kv_heads = num_kv_heads;
  P.head_dim = head_dim;
  P.causal = causal;
  const int32_t group = num_qo_heads / num_kv_heads;
  P.heads_per_block = std::min(group, kAttnMaxRows);
  P.head_blocks = (group + P.heads_per_block - 1) / P.heads_per_block;
  P.tile_q = kAttnMaxRows / P.heads_per_block;

  // Tiles of up to tile_q query tokens; under the causal mask a tile needs only the keys its
  // last query sees.
  AttnWorkItem tile{};
  tile.chunk = -1;
  std::vector<AttnWorkItem> tiles;
  int64_t total_keys = 0;
  for (int32_t b = 0; b < batch; ++b) {
    const int32_t qo_len = qo_indptr[b + 1] - qo_indptr[b];
    const int32_t pages = kv_indptr[b + 1] - kv_indptr[b];
    if (qo_len <= 0 || pages <= 0) continue;
    const int32_t kv_len = (pages - 1) * page_size + kv_last_page_len[b];
    for (int32_t qs = 0; qs < qo_len; qs += P.tile_q) {
      tile.request = b;
      tile.tok0 = qo_indptr[b] + qs;
      tile.q_count = std::min(P.tile_q, qo_len - qs);
      tile.q_local0 = qs;
      tile.kv_len = kv_len;
      tile.diag = kv_len - qo_len;
      tile.kv_start = 0;
      tile.kv_end = causal ? std::min(kv_len, kv_len - qo_len + qs + tile.q_count) : kv_len;
      if (tile.kv_end <= 0)
        return InvalidArgument("plan_paged_attention: request " + std::to_string(b) + " has more queries than KV tokens");
      total_keys += tile.kv_end;
      tiles.push_back(tile);
    }
  }

  const int64_t blocks_per_tile = static_cast<int64_t>(num_kv_heads) * P.head_blocks;
  const int64_t target_blocks = static_cast<int64_t>(std::max(num_sms, 1)) * 4;
  int64_t chunk;
  if (kv_chunk > 0) {
    chunk = round_up(kv_chunk, kAttnKeyTile);
  } else if (static_cast<int64_t>(tiles.size()) * blocks_per_tile >= target_blocks) {
    chunk = INT32_MAX;  // enough work items already: no split
  } else {
    const int64_t want = (total_keys * blocks_per_tile + target_blocks - 1) / target_blocks;
    chunk = std::max<int64_t>(4 * kAttnKeyTile, round_up(want, kAttnKeyTile));
  }
  P.kv_chunk = static_cast<int32_t>(std::min<int64_t>(chunk, INT32_MAX));

  P.part_base.assign(static_cast<size_t>(std::max(P.total_q, 0)), -1);
  for (const AttnWorkItem& t : tiles) {
    const int64_t n = (t.kv_end + chunk - 1) / chunk;
    for (int64_t c = 0; c < n; ++c) {
      AttnWorkItem w = t;
      w.kv_start = static_cast<int32_t>(c * chunk);
      w.kv_end = static_cast<int32_t>(std::min<int64_t>(t.kv_end, (c + 1) * chunk));
      w.chunk = n > 1 ? static_cast<int32_t>(c) : -1;
      P.items.push_back(w);
    }
    if (n > 1) {
      for (int32_t i = 0; i < t.q_count; ++i) {
        P.part_base[t.tok0 + i] = static_cast<int32_t>(P.num_slots);
        P.merge.push_back(t.tok0 + i);
        P.merge.push_back(static_cast<int32_t>(P.num_slots));
        P.merge.push_back(static_cast<int32_t>(n));
        P.num_slots += n;
      }
    }
  }
  if (P.items.size() > static_cast<size_t>(INT32_MAX) || P.num_slots > INT32_MAX ||
      P.merge.size() / 3 > static_cast<size_t>(INT32_MAX))
    return InvalidArgument("plan_paged_attention: too many work items");
  if (static_cast<int64_t>(num_kv_heads) * P.head_blocks > 65535)
    return InvalidArgument("plan_paged_attention: too many kv heads x head blocks for one grid (65535)");
  if (num_qo_heads > 65535) return InvalidArgument("plan_paged_attention: more than 65535 qo heads");
  return Status::Ok();
}

Status AttentionWorkspace::upload(const AttentionPlan& plan, cudaStream_t stream) {
  SD_RETURN_IF_ERROR(own_items_.write_async(plan.items, stream));
  SD_RETURN_IF_ERROR(own_part_base_.write_async(plan.part_base, stream));
  SD_RETURN_IF_ERROR(own_merge_.write_async(plan.merge, stream));
  return use(plan, own_items_.get(), own_part_base_.get(), own_merge_.get());
}

Status AttentionWorkspace::use(const AttentionPlan& plan, const AttnWorkItem* plan_items, const int32_t* plan_part_base,
                               const int32_t* plan_merge) {
  items = plan_items;
  part_base = plan_part_base;
  merge = plan_merge;
  num_items = plan.items.size();
  num_merge = plan.merge.size() / 3;
  const size_t slots = static_cast<size_t>(plan.num_slots) * plan.num_qo_heads;
  SD_RETURN_IF_ERROR(part_o.reserve(slots * plan.head_dim));
  return part_lse.reserve(slots);
}

void pad_attention_plan(AttentionPlan* plan, int64_t items, int64_t merges, int64_t slots) {
  AttnWorkItem none{};
  none.chunk = -1;  // q_count 0: the kernel's blocks return at once
  if (static_cast<int64_t>(plan->items.size()) < items) plan->items.resize(static_cast<size_t>(items), none);
  while (static_cast<int64_t>(plan->merge.size() / 3) < merges) plan->merge.insert(plan->merge.end(), {-1, 0, 0});
  plan->num_slots = std::max(plan->num_slots, slots);
}

Status paged_attention(const AttentionPlan& plan, const AttentionWorkspace& ws, const PagedKVDevice& kv,
                       const PagedAttentionIO& io, cudaStream_t stream) {
  if (plan.items.empty()) return Status::Ok();
  if (kv.head_dim != plan.head_dim || kv.num_kv_heads != plan.num_kv_heads)
    return InvalidArgument("paged_attention (CUDA): the plan was made for other head counts / head_dim");
  if (plan.causal != (io.packed_mask == nullptr))
    return InvalidArgument("paged_attention (CUDA): the plan's causal flag and the mask disagree");
  if (io.packed_mask && !io.mask_byte_indptr)
    return InvalidArgument("paged_attention (CUDA): packed_mask needs mask_byte_indptr");
  if (ws.num_items < plan.items.size() || ws.num_merge < plan.merge.size() / 3)
    return InvalidArgument("paged_attention (CUDA): the workspace was not uploaded from this plan");
  switch (kv.dtype) {
    case DType::kF32: return launch_io<float>(plan, ws, kv, io, stream);
    case DType::kBF16: return launch_io<__nv_bfloat16>(plan, ws, kv, io, stream);
    case DType::kF16: return launch_io<__half>(plan, ws, kv, io, stream);
    default: break;
  }
  return InvalidArgument(std::string("paged_attention (CUDA): K/V dtype must be float32, bfloat16 or float16, got ") +
                         dtype_name(kv.dtype));
}

}  // namespace sd::cuda
