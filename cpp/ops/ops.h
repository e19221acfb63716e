// The op set the model runs on. This header is the one dispatch point: each op picks the
// implementation for the machine it runs on (AVX-512 VNNI, AVX2+FMA+F16C or portable C++; CUDA
// behind the same signatures). Kernels take raw pointers and sizes; the ones that can be given
// impossible input return a Status, the rest have their preconditions checked by callers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "ops/matrix.h"

namespace sd::ops {

// The CPU kernel sets this machine can run, best last: "portable", then "avx2", "avx512".
std::vector<std::string> available_cpu_isas();
// Name of the CPU kernel set in use (the best available unless set_cpu_isa chose another).
const char* cpu_isa();
// Use kernel set `name` (one of available_cpu_isas(), or "best"); tests compare every path.
// Stores the previous name in *previous when given.
Status set_cpu_isa(const std::string& name, std::string* previous);

// Y[m, n] = sum_k X[m, k] * W[n, k] + bias[n]   for m < M, n < W.rows, k < W.cols.
// X: f32 with row stride ldx; Y: f32 with row stride ldy; bias may be null.
void matmul(const Matrix& W, const float* X, int64_t M, int64_t ldx, float* Y, int64_t ldy,
            const float* bias);

// y[m, :] = x[m, :] / sqrt(mean(x[m, :]^2) + eps) * w     (x, y: [M, D], may alias)
void rmsnorm(const float* x, const float* w, float eps, int64_t M, int64_t D, float* y);

// Rotate-half RoPE (Hugging Face layout) in place on T rows of `n_heads` heads of head_dim,
// row stride `stride` floats; token t uses angle positions[t] * inv_freq[i], i < head_dim / 2.
void rope(float* x, const int32_t* positions, int64_t T, int64_t n_heads, int64_t head_dim,
          int64_t stride, const float* inv_freq);

// out[m, i] = silu(gate_up[m, i]) * gate_up[m, I + i]     (gate_up: [M, 2I], out: [M, I])
void silu_mul(const float* gate_up, int64_t M, int64_t I, float* out);

// out[t, :] = table[ids[t], :] as f32. Ids must be checked by the caller (< table.rows).
void embedding(const Matrix& table, const int32_t* ids, int64_t T, float* out);

// Paged KV storage of one layer, FlashInfer's NHD layout: [page][slot][kv_head][head_dim].
struct PagedKV {
  const float* k = nullptr;
  const float* v = nullptr;
  int32_t num_pages = 0;
  int32_t page_size = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
};

// Attention of ragged queries against paged KV (the page table in FlashInfer's CSR form).
//   q:   [qo_indptr[B], num_qo_heads, head_dim];   out: same shape.
//   request b owns queries qo_indptr[b] .. qo_indptr[b+1] and pages
//   kv_indices[kv_indptr[b] .. kv_indptr[b+1]), the last of them holding kv_last_page_len[b]
//   tokens; its kv_len counts the queries' own tokens (appended before the call).
//   custom_mask == nullptr: causal, query i sits at kv position kv_len - qo_len + i.
//   custom_mask != nullptr: for request b, qo_len x kv_len bools, row-major, starting at
//   custom_mask[mask_indptr[b]] (so mask_indptr[b + 1] - mask_indptr[b] == qo_len * kv_len);
//   nonzero = may attend. A row with nothing visible is an error.
// Grouped-query attention: qo head h reads kv head h / (num_qo_heads / num_kv_heads).
Status paged_attention(const float* q, const int32_t* qo_indptr, int32_t batch, const PagedKV& kv,
                       const int32_t* kv_indptr, const int32_t* kv_indices,
                       const int32_t* kv_last_page_len, const uint8_t* custom_mask,
                       const int64_t* mask_indptr, int32_t num_qo_heads, float sm_scale,
                       float* out);

}  // namespace sd::ops
