// Host entry points of the CUDA kernels. Host C++ (g++: the pybind11 module) and nvcc both
// include it, so it needs no CUDA header: cudaStream_t is forward-declared exactly as
// driver_types.h declares it.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "core/status.h"

struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;

namespace sd::cuda {

int device_count();

// =============================================================================================
// Element-wise ops, KV writes, sampling and speculative sampling (cuda/elementwise.cu,
// rmsnorm.cu, kv_ops.cu, sampling.cu, spec_sampling.cu).
//
// Device entry points: every pointer is DEVICE memory, the work is queued on `stream` and the
// Status reports launch errors only (asynchronous faults surface at the next synchronization).
// Semantics mirror the CPU ops (ops/ops.h, sampling/sampler.h, spec/verifier.h) exactly.
// The `*_host` wrappers copy host arrays in, run the entry point on the default stream,
// synchronize and copy results back (tests and benchmarks only).
// =============================================================================================

// ---- element-wise (f32 activations) ----------------------------------------------------------

// y[m, :] = x[m, :] / sqrt(mean(x[m, :]^2) + eps) * w      (x, y: [M, D], may alias)
Status rmsnorm(const float* x, const float* w, float eps, int64_t M, int64_t D, float* y,
               cudaStream_t stream);
// Rotate-half RoPE in place: T rows of n_heads heads of head_dim (even), row stride `stride`
// floats; token t rotates pair (i, i + head_dim/2) by positions[t] * inv_freq[i].
Status rope(float* x, const int32_t* positions, int64_t T, int64_t n_heads, int64_t head_dim,
            int64_t stride, const float* inv_freq, cudaStream_t stream);
// out[m, i] = silu(gate_up[m, i]) * gate_up[m, I + i]     (gate_up: [M, 2I], out: [M, I])
Status silu_mul(const float* gate_up, int64_t M, int64_t I, float* out, cudaStream_t stream);
// x[i] += y[i] for i < n (the residual adds).
Status add_inplace(float* x, const float* y, int64_t n, cudaStream_t stream);
// out[i] = x[i] rounded to nearest even in `dtype` (kBF16 or kF16, as uint16 bit patterns):
// activations for the tensor-core GEMM.
Status to_half(DType dtype, const float* x, int64_t n, uint16_t* out, cudaStream_t stream);
// out[t, :] = table[ids[t], :] as f32; table row-major [rows, cols] of dtype f32, bf16 or f16
// (bf16/f16 as their uint16 bit patterns). Ids live on the device, so they are checked there:
// a row whose id is outside [0, rows) is written as zeros and, when bad_pos != nullptr (one
// device int32 the caller set to -1), one such position t is stored in *bad_pos.
Status embedding(DType dtype, const void* table, int64_t rows, int64_t cols, const int32_t* ids,
                 int64_t T, float* out, int32_t* bad_pos, cudaStream_t stream);

// ---- paged KV cache -------------------------------------------------------------------------

// One layer's paged storage, FlashInfer's NHD layout [page][slot][kv_head][head_dim] (the CPU
// KVCache's layout). A flat slot index is page * page_size + slot.
struct KVLayout {
  int32_t num_pages = 0;
  int32_t page_size = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int64_t slots() const { return static_cast<int64_t>(num_pages) * page_size; }
  int64_t row_elems() const { return static_cast<int64_t>(num_kv_heads) * head_dim; }
  int64_t layer_elems() const { return slots() * row_elems(); }
};

// Writes T new rows k_new/v_new ([T, num_kv_heads, head_dim], f32) into flat slots
// slot_mapping[t] of k_cache/v_cache (storage dtype f32, bf16 or f16; rounded to nearest even).
// slot_mapping[t] < 0 skips the row (vLLM's padding); a slot >= layout.slots() is skipped and,
// when bad_pos != nullptr (device int32 set to -1 by the caller), its position t is stored.
Status kv_append(DType kv_dtype, void* k_cache, void* v_cache, const KVLayout& layout,
                 const float* k_new, const float* v_new, const int64_t* slot_mapping, int64_t T,
                 int32_t* bad_pos, cudaStream_t stream);

// The accepted-path compaction (KVCache::copy_token for every layer): for i = 0 .. n-1 IN
// ORDER, slot dst[i] <- slot src[i] in K and V of each of num_layers layers stored back to back
// (layer l at element offset l * layout.layer_elems()). Sequential per element column, so any
// chain of overlapping copies behaves like the CPU loop. Slots must be in [0, layout.slots()).
Status kv_copy_slots(DType kv_dtype, void* k_cache, void* v_cache, int32_t num_layers,
                     const KVLayout& layout, const int64_t* src, const int64_t* dst, int64_t n,
                     cudaStream_t stream);

// ---- sampling ---------------------------------------------------------------------------------

// One row's sampling parameters (sd::SamplingConfig + the Philox counter of the draw).
// Same layout on host and device. temperature 0: greedy.
struct SamplingRow {
  float temperature = 1.0f;
  int32_t top_k = 0;     // 0 or >= vocab: off
  float top_p = 1.0f;    // in (0, 1]; 1: off
  float min_p = 0.0f;    // in [0, 1]; 0: off
  uint64_t seed = 0;
  uint64_t counter = 0;  // the draw uses philox_uniform(seed, counter, 0)
};

// tokens[b] = argmax(logits[b, :]) (the lowest index among equal maxima), logits [B, V].
Status argmax(const float* logits, int64_t B, int64_t V, int32_t* tokens, cudaStream_t stream);

// probs[b, :] = sd::processed_probs(logits[b, :], rows[b]) and, when tokens != nullptr,
// tokens[b] = sd::sample_token's draw from it (inverse CDF at philox_uniform(seed, counter, 0);
// greedy rows: the argmax). One block per row; probs is also the working buffer ([B, V]).
Status sample(const float* logits, int64_t B, int64_t V, const SamplingRow* rows, float* probs,
              int32_t* tokens, cudaStream_t stream);

// ---- speculative sampling (lossless rejection sampling, spec/verifier.h) -------------------

// Chains: request b drafted tokens draft_tokens[b, 0..k) with draft distributions
// draft_probs[b, j, :] (nullptr: deterministic drafts, verified as one-hot q). target_probs
// [B, k + 1, V] are the target's processed distributions (row j judges draft j, row k gives the
// bonus). Exactly sd::verify_sampling on the chain with seed seeds[b] and position
// positions[b]: out_tokens[b, :] ([B, k + 1]) holds the accepted drafts then the recovered or
// bonus token, padded with -1; num_accepted[b] counts the accepted drafts. workspace: [B, V].
Status verify_chain(const float* target_probs, const int32_t* draft_tokens, const float* draft_probs,
                    int64_t B, int32_t k, int64_t V, const uint64_t* seeds, const uint64_t* positions,
                    int32_t* out_tokens, int32_t* num_accepted, float* workspace, cudaStream_t stream);

// Trees, batched as CSR: request b owns nodes node_indptr[b] .. node_indptr[b + 1] (n_b nodes,
// parent-first, parents local: -1 for a child of the root, else an earlier local node) and target
// rows node_indptr[b] + b .. node_indptr[b + 1] + b (its root row, then one row per node);
// draft_probs (nullptr: one-hot) has one row per node. Exactly sd::verify_sampling per request.
// Outputs: accepted[b, :] ([B, max_accept]) the accepted local node indexes, root first,
// padded with -1 (max_accept >= the deepest tree's depth); num_accepted[b]; next_token[b]
// (recovered or bonus); bonus[b] (1 when the path ended at a leaf). workspace: [B, V].
Status verify_tree(const int32_t* node_indptr, int64_t B, const int32_t* tokens, const int32_t* parents,
                   const float* target_probs, const float* draft_probs, int64_t V, const uint64_t* seeds,
                   const uint64_t* positions, int32_t max_accept, int32_t* accepted, int32_t* num_accepted,
                   int32_t* next_token, uint8_t* bonus, float* workspace, cudaStream_t stream);

// ---- host wrappers (upload, run, synchronize, download) -----------------------------------

// Copies x [M, D] and w [D] to the device, runs RMSNorm, copies y back.
Status rmsnorm_host(const float* x, const float* w, float eps, int64_t M, int64_t D, float* y);
// x: [T, n_heads, head_dim] contiguous, rotated in place (host memory).
Status rope_host(float* x, const int32_t* positions, int64_t T, int64_t n_heads, int64_t head_dim,
                 const float* inv_freq);
Status silu_mul_host(const float* gate_up, int64_t M, int64_t I, float* out);
// table: f32 [rows, cols] on the host, converted to `dtype` before the upload. An id out of
// range (found by the device check) is InvalidArgument.
Status embedding_host(DType dtype, const float* table, int64_t rows, int64_t cols, const int32_t* ids,
                      int64_t T, float* out);
// Caches as f32 on the host (converted to kv_dtype on the device side and back): k_cache /
// v_cache [num_pages, page_size, num_kv_heads, head_dim], updated in place.
Status kv_append_host(DType kv_dtype, float* k_cache, float* v_cache, const KVLayout& layout,
                      const float* k_new, const float* v_new, const int64_t* slot_mapping, int64_t T);
// Caches [num_layers, num_pages, page_size, num_kv_heads, head_dim] f32 on the host, in place.
Status kv_copy_slots_host(DType kv_dtype, float* k_cache, float* v_cache, int32_t num_layers,
                          const KVLayout& layout, const int64_t* src, const int64_t* dst, int64_t n);
Status argmax_host(const float* logits, int64_t B, int64_t V, int32_t* tokens);
// probs may be nullptr (not downloaded), tokens may be nullptr (no draw).
Status sample_host(const float* logits, int64_t B, int64_t V, const SamplingRow* rows, float* probs,
                   int32_t* tokens);
Status verify_chain_host(const float* target_probs, const int32_t* draft_tokens, const float* draft_probs,
                         int64_t B, int32_t k, int64_t V, const uint64_t* seeds, const uint64_t* positions,
                         int32_t* out_tokens, int32_t* num_accepted);
Status verify_tree_host(const int32_t* node_indptr, int64_t B, const int32_t* tokens, const int32_t* parents,
                        const float* target_probs, const float* draft_probs, int64_t V, const uint64_t* seeds,
                        const uint64_t* positions, int32_t max_accept, int32_t* accepted, int32_t* num_accepted,
                        int32_t* next_token, uint8_t* bonus);

}  // namespace sd::cuda
