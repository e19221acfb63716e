// CUDA paged attention (decode and tree verification) and GEMM / GEMV: device entry points and
// the host test wrappers the _cuda module binds. Host C++ WITHOUT CUDA headers (the _cuda
// module's .cpp files are compiled by g++ without the CUDA include path); the device entry
// points are in cuda/attention_device.h.
//
// Paged attention, same semantics as sd::ops::paged_attention (cpp/ops/ops.h):
//   q, out: [total_q, num_qo_heads, head_dim]; K/V cache NHD: [page][slot][kv_head][head_dim];
//   CSR page table qo_indptr / kv_indptr / kv_indices / kv_last_page_len; no mask = causal
//   (query i of a request sits at kv position kv_len - qo_len + i); GQA: qo head h reads kv
//   head h / (num_qo_heads / num_kv_heads). Softmax scale sm_scale; accumulation in f32.
//   K/V dtype: f32, f16 or bf16 (one kernel template per dtype, no conversion copies).
//   q/out dtype ("io dtype"): f32, or the same dtype as K/V.
//   head_dim: 64 or 128 (others: Unsupported).
//   Tree masks on the device are BIT-PACKED (cuda/mask_bits.h): request b's qo_len x kv_len
//   row-major bits start at BYTE packed_mask[mask_byte_indptr[b]], entry i is bit i % 8 of byte
//   i / 8 (FlashInfer segment_packbits(..., bitorder="little")). mask_byte_indptr is in BYTES.
//   The host wrappers take the CPU op's bool mask (entries, indptr in ENTRIES) and pack it.
//
// How the kernel works: a work item is (request, tile of up to 16 / G query tokens, chunk of
// the request's KV) x (kv head, block of up to 16 of its G query heads): 128 threads, each warp
// owns up to 4 of the tile's (token, head) rows. K/V tiles of 32 keys are streamed into shared
// memory with cp.async (double-buffered); lane j scores key j for the warp's rows, the online
// softmax (base 2) runs per row over warp shuffles, and lane l accumulates head_dim / 32
// output dims. When the batch has too few work items to fill the GPU (decode at small batch,
// long contexts) each request's KV is split into chunks; chunks write a partial (normalized
// output, log2-sum-exp) per row and a merge kernel combines them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace sd::cuda {

// ---------------------------------------------------------------------------------------------
// Paged attention: plan on the host (the page table's host copy), run on the device.

constexpr int kAttnMaxRows = 16;  // (token, head) rows per work item
constexpr int kAttnKeyTile = 32;  // keys per shared-memory tile

// One work item (12 int32, 48 bytes). chunk >= 0: this item covers one of several KV chunks of
// its tokens and writes partials at slot part_base[token] + chunk; chunk == -1: it writes out.
struct AttnWorkItem {
  int32_t request;
  int32_t tok0;      // first query token (global row of q/out)
  int32_t q_count;   // query tokens in the tile
  int32_t q_local0;  // index of tok0 inside its request
  int32_t kv_start;  // keys [kv_start, kv_end) of the request
  int32_t kv_end;
  int32_t kv_len;    // the request's KV length
  int32_t diag;      // kv_len - qo_len (causal: query i sees keys <= diag + i)
  int32_t chunk;
  int32_t pad[3];
};
static_assert(sizeof(AttnWorkItem) == 48, "AttnWorkItem is 12 int32");

struct AttentionPlan {
  int32_t batch = 0, total_q = 0, num_qo_heads = 0, num_kv_heads = 0, head_dim = 0;
  bool causal = true;
  int32_t heads_per_block = 0;  // qo heads of one kv head handled by one block
  int32_t head_blocks = 0;      // blocks per kv head (ceil(G / heads_per_block))
  int32_t tile_q = 0;           // query tokens per tile (kAttnMaxRows / heads_per_block)
  int32_t kv_chunk = 0;         // keys per split chunk (a large value when nothing is split)
  std::vector<AttnWorkItem> items;
  std::vector<int32_t> part_base;  // per query token: first partial slot, or -1 (not split)
  std::vector<int32_t> merge;      // 3 per split token: token, first slot, number of chunks
  int64_t num_slots = 0;           // partial slots; each holds num_qo_heads x head_dim floats
  int64_t blocks() const { return static_cast<int64_t>(items.size()) * num_kv_heads * head_blocks; }
};

// A plan padded for a CUDA graph, whose launches keep their grid sizes between replays: at least
// `items` work items (the extra ones empty: q_count 0), `merges` merge entries (token -1) and
// `slots` partial slots. The padded plan computes exactly what the plan did.
void pad_attention_plan(AttentionPlan* plan, int64_t items, int64_t merges, int64_t slots);

// Builds the schedule from HOST copies of the page table (which must be valid: see
// validate_paged_attention). kv_chunk > 0 forces that chunk size (rounded up to a multiple of
// kAttnKeyTile); 0 picks one so that ~4 blocks per SM are in flight. num_sms: the GPU's SMs.
Status plan_paged_attention(const int32_t* qo_indptr, const int32_t* kv_indptr,
                            const int32_t* kv_last_page_len, int32_t batch, int32_t page_size,
                            int32_t num_qo_heads, int32_t num_kv_heads, int32_t head_dim, bool causal,
                            int32_t kv_chunk, int32_t num_sms, AttentionPlan* plan);

// ---------------------------------------------------------------------------------------------
// Host wrappers (tests, benchmarks): host arrays in, host arrays out.

struct HostAttentionInputs {
  const float* q = nullptr;  // [total_q, num_qo_heads, head_dim] f32
  int64_t total_q = 0;
  int32_t num_qo_heads = 0;
  const float* k_cache = nullptr;  // [num_pages, page_size, num_kv_heads, head_dim] f32
  const float* v_cache = nullptr;
  int32_t num_pages = 0, page_size = 0, num_kv_heads = 0, head_dim = 0;
  const int32_t* qo_indptr = nullptr;  // batch + 1
  const int32_t* kv_indptr = nullptr;  // batch + 1
  const int32_t* kv_indices = nullptr;
  int64_t num_kv_indices = 0;
  const int32_t* kv_last_page_len = nullptr;  // batch
  int32_t batch = 0;
  // The CPU op's bool mask: one uint8 per entry, mask_indptr in ENTRIES (null: causal).
  const uint8_t* custom_mask = nullptr;
  int64_t mask_len = 0;
  const int64_t* mask_indptr = nullptr;
  float sm_scale = 1.f;
  DType kv_dtype = DType::kF32;  // the caches are rounded to this dtype on the host
  bool io_in_kv_dtype = false;   // q/out on the device in the K/V dtype (else f32)
  int32_t kv_chunk = 0;          // 0: automatic split
  int32_t pad_plan = 0;          // empty work items / merge entries / slots appended (pad_attention_plan)
};

// Every check sd::ops::paged_attention makes (same messages), plus head_dim / dtype support.
// Fills kv_len (per request) when given.
Status validate_paged_attention(const HostAttentionInputs& in, std::vector<int32_t>* kv_len);

// Uploads, runs, syncs, downloads out [total_q, num_qo_heads, head_dim] f32.
Status paged_attention_host(const HostAttentionInputs& in, float* out);

struct AttentionTiming {
  double ms = 0;  // per call (attention + merge), CUDA events over `iters` back-to-back calls
  int64_t blocks = 0, items = 0, kv_chunk = 0, split_tokens = 0;
};
// Uploads once, runs 3 warm-up calls then `iters` timed ones on the device-resident data.
Status time_paged_attention_host(const HostAttentionInputs& in, int iters, AttentionTiming* timing);

// ---------------------------------------------------------------------------------------------
// GEMM: Y[M, N] = X[M, K] * W[N, K]^T (+ bias[N]), Y f32, f32 accumulation.
//
// Device weight layouts (row-major [N, K], K contiguous):
//   kBF16 / kF16: 2 bytes per weight; K % 8 == 0 (16-byte rows).
//   kQ8: int8 weights [N, K] plus f32 scales [N, K / 32] (w = scale * q, one scale per 32
//        consecutive columns of a row: quantize_q8_block, like the CPU's Q8_0); K % 32 == 0.
//   kQ4: 4-bit weights, 16 bytes per 32 consecutive columns of a row ([N, K / 2] bytes; byte j
//        of a block holds column j in its low nibble and column j + 16 in its high one, GGUF
//        Q4_1's order) plus (scale, min) f32 pairs [N, K / 32, 2] (w = scale * q + min:
//        quantize_q4_block, the CPU's int4 quantizer); K % 32 == 0.

enum class GemmBackend { kAuto = 0, kGemv = 1, kCublas = 2 };
// kAuto: GEMV when M <= 16 or the weights are int8 / int4, else cuBLAS (GEMV when cuBLAS is not found).
Status parse_gemm_backend(const std::string& name, GemmBackend* out);

// Quantizes W f32 [N, K] (K % 32 == 0) to the device kQ8 layout (q [N, K], scales [N, K/32]).
void quantize_q8_rows(const float* W, int64_t N, int64_t K, int8_t* q, float* scales);
// ... to the device kQ4 layout (q [N, K / 2] packed bytes, scale_min [N, K / 32, 2]).
void quantize_q4_rows(const float* W, int64_t N, int64_t K, uint8_t* q, float* scale_min);
// W f32 [N, K] in the quantized device layout of `dtype` (kQ8 or kQ4): *q its weight bytes, *scales
// its scales (kQ4: scale and min pairs), both resized here.
void quantize_device_rows(DType dtype, const float* W, int64_t N, int64_t K, std::vector<uint8_t>* q,
                          std::vector<float>* scales);

struct GemmTiming {
  double ms = 0;
  std::string backend;  // "gemv" or "cublas"
};
// X f32 [M, K], W f32 [N, K] converted on the host to w_dtype (bf16 / f16 rounding, or kQ8 /
// kQ4 quantization); for the cuBLAS path X is rounded to w_dtype too. Y f32 [M, N].
// iters > 0: also times `iters` calls on the device-resident data (timing may be null).
Status gemm_host(const float* X, int64_t M, const float* W, int64_t N, int64_t K, const float* bias,
                 DType w_dtype, GemmBackend backend, int iters, float* Y, GemmTiming* timing);

}  // namespace sd::cuda
