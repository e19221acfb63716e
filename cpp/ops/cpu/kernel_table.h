// The CPU kernels one instruction set provides; ops/dispatch.cpp picks a table at run time.
#pragma once
#include <cstdint>

#include "ops/ops.h"

namespace sd::cpu {

// What paged_attention needs once the page table is validated (ops/dispatch.cpp builds it).
struct AttentionPlan {
  const int32_t* query_request = nullptr;  // [total_q]: the request each query belongs to
  const int32_t* kv_len = nullptr;         // [batch]
  int32_t total_q = 0;
};

// Activations quantized for the int8 matmul, per row and block of 32 (Q8_0 x Q8_0), laid out
// like the weights and superblock-major: for superblock p of 64 columns, the M rows' records
// follow each other, so a tile finds all its tokens' data at fixed offsets from one pointer.
// A record holds the 8 steps of 8 bytes (4 of block 0, 4 of block 1: step s = columns
// 4s .. 4s + 3 of each), the 2 block scales, block_sum = scale x the sum of q (the int4
// weights' minimums multiply it) and lane_offset = -128 x the 2 blocks' sums of q, which cancels
// the + 128 the weights are stored with when a kernel multiplies the unsigned stored bytes
// directly (AVX-512 VNNI).
struct QuantizedRows {
  static constexpr int64_t kScale = 64, kBlockSum = 72, kLaneOffset = 80;  // byte offsets
  static constexpr int64_t kRecordBytes = 88;
  static_assert(kScale == kQ8Steps * 8, "the 8-byte steps (two blocks' 4 columns) come first");
  static_assert(kBlockSum == kScale + 8 && kLaneOffset == kBlockSum + 8 && kRecordBytes == kLaneOffset + 8,
                "then two floats of each per-block field");
  const uint8_t* data = nullptr;  // [P][rows] records
  int64_t rows = 0;

  const uint8_t* record(int64_t p, int64_t m) const { return data + (p * rows + m) * kRecordBytes; }
  static const int8_t* q(const uint8_t* rec) { return reinterpret_cast<const int8_t*>(rec); }
  static const float* scale(const uint8_t* rec) { return reinterpret_cast<const float*>(rec + kScale); }
  static const float* block_sum(const uint8_t* rec) { return reinterpret_cast<const float*>(rec + kBlockSum); }
  static const int32_t* lane_offset(const uint8_t* rec) {
    return reinterpret_cast<const int32_t*>(rec + kLaneOffset);
  }
};

struct KernelTable {
  void (*matmul)(const Matrix& W, const float* X, int64_t M, int64_t ldx, float* Y, int64_t ldy,
                 const float* bias);
  void (*rmsnorm)(const float* x, const float* w, float eps, int64_t M, int64_t D, float* y);
  void (*rope)(float* x, const int32_t* positions, int64_t T, int64_t n_heads, int64_t head_dim,
               int64_t stride, const float* inv_freq);
  void (*silu_mul)(const float* gate_up, int64_t M, int64_t I, float* out);
  void (*embedding)(const Matrix& table, const int32_t* ids, int64_t T, float* out);
  void (*paged_attention)(const AttentionPlan& plan, const float* q, const int32_t* qo_indptr,
                          const ops::PagedKV& kv, const int32_t* kv_indptr,
                          const int32_t* kv_indices, const uint8_t* custom_mask,
                          const int64_t* mask_indptr, int32_t num_qo_heads, float sm_scale,
                          float* out);
};

const KernelTable& portable_kernels();
#if defined(SPECDEC_HAVE_AVX2)
const KernelTable& avx2_kernels();
#endif
#if defined(SPECDEC_HAVE_AVX512)
const KernelTable& avx512_kernels();
#endif
#if defined(SPECDEC_HAVE_AMX)
const KernelTable& amx_kernels();  // the AVX-512 table with the quantized matmul on AMX tiles
bool amx_usable();                 // the CPU has AMX-INT8 and the OS grants this process its tiles
#endif

// Per-thread scratch floats (grown on demand, never shrunk); lives in a portable translation unit.
float* thread_scratch(int64_t n);

}  // namespace sd::cpu
