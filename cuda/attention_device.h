// Device entry points of the CUDA attention and GEMM kernels (pointers in device memory, work
// enqueued on a stream, no sync). Needs the CUDA headers: include from .cu files. The layouts,
// semantics and the plan are described in cuda/attention_ops.h.
#pragma once
#include <cuda_runtime.h>

#include "cuda/attention_ops.h"
#include "cuda/cuda_check.h"

namespace sd::cuda {

// The plan's tables on the device and the split-KV scratch. upload() copies the tables into
// buffers owned here; a caller that stages them itself (one transfer with its other tables:
// cuda/staged_tables.h) hands over its device copies with use().
struct AttentionWorkspace {
  const AttnWorkItem* items = nullptr;
  const int32_t* part_base = nullptr;
  const int32_t* merge = nullptr;  // 3 per entry
  size_t num_items = 0, num_merge = 0;  // what the tables hold (>= the plan's)
  DeviceBuffer<float> part_o, part_lse;
  // Copies the plan in on `stream` (buffers only grow: their addresses stay while they suffice).
  Status upload(const AttentionPlan& plan, cudaStream_t stream);
  // The plan's tables already on the device at these addresses; sizes the partial outputs for
  // its slots (they only grow).
  Status use(const AttentionPlan& plan, const AttnWorkItem* plan_items, const int32_t* plan_part_base,
             const int32_t* plan_merge);

 private:
  DeviceBuffer<AttnWorkItem> own_items_;
  DeviceBuffer<int32_t> own_part_base_, own_merge_;
};

struct PagedKVDevice {
  const void* k = nullptr;  // [num_pages, page_size, num_kv_heads, head_dim] of `dtype`
  const void* v = nullptr;
  DType dtype = DType::kF32;  // kF32, kF16 or kBF16
  int32_t num_pages = 0, page_size = 0, num_kv_heads = 0, head_dim = 0;
};

struct PagedAttentionIO {
  const void* q = nullptr;  // [total_q, num_qo_heads, head_dim] of io_dtype
  void* out = nullptr;      // same shape and dtype
  DType io_dtype = DType::kF32;  // kF32, or the K/V dtype
  const int32_t* kv_indptr = nullptr;   // device, batch + 1
  const int32_t* kv_indices = nullptr;  // device
  const uint8_t* packed_mask = nullptr;       // device; null = causal (the plan must agree)
  const int64_t* mask_byte_indptr = nullptr;  // device, batch + 1, BYTE offsets
  float sm_scale = 1.f;
};

// Enqueues the attention (and the merge, when the plan splits) on `stream`. Does not sync.
Status paged_attention(const AttentionPlan& plan, const AttentionWorkspace& ws, const PagedKVDevice& kv,
                       const PagedAttentionIO& io, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// GEMM: Y[M, N] = X[M, K] * W[N, K]^T (+ bias[N]), device layouts in cuda/attention_ops.h.

// GEMV path (decode / small verify batches; any M, best at M <= 16): X f32 [M, K] (row stride
// K), one warp per 4 output rows, 128-bit weight loads. w_scales only for kQ8.
Status gemv(DType w_dtype, const float* X, int64_t M, const void* W, const float* w_scales, int64_t N,
            int64_t K, const float* bias, float* Y, cudaStream_t stream);

// cuBLAS path (tensor cores, via the runtime-loaded libcublas): X [M, K] in the weights' dtype
// (kBF16 or kF16), W [N, K], Y f32 [M, N]; cublasGemmEx with CUBLAS_COMPUTE_32F.
Status gemm_cublas(DType dtype, const void* X, int64_t M, const void* W, int64_t N, int64_t K,
                   const float* bias, float* Y, cudaStream_t stream);

}  // namespace sd::cuda
