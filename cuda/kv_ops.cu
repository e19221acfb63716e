// Writes into the paged KV cache on the GPU (FlashInfer's NHD layout [page][slot][kv_head][head_dim],
// storage f32, bf16 or f16): kv_append scatters new K/V rows to flat slots (vLLM's
// reshape_and_cache with a slot mapping), kv_copy_slots is the accepted-path compaction
// (KVCache::copy_token over every layer, copies applied in order).
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

struct F32 {
  using Storage = float;
  static __device__ __forceinline__ float store(float v) { return v; }
};
struct BF16 {
  using Storage = uint16_t;
  static __device__ __forceinline__ uint16_t store(float v) { return f32_to_bf16(v); }
};
struct F16 {
  using Storage = uint16_t;
  static __device__ __forceinline__ uint16_t store(float v) { return f32_to_f16(v); }
};

// Element e = (t, j) of the new rows, j < row = num_kv_heads * head_dim: coalesced over j.
template <class Fmt>
__global__ void __launch_bounds__(kThreads) kv_append_kernel(typename Fmt::Storage* k_cache, typename Fmt::Storage* v_cache,
                                                             int64_t slots, int64_t row, const float* k_new,
                                                             const float* v_new, const int64_t* slot_mapping, int64_t T,
                                                             int32_t* bad_pos) {
  const int64_t n = T * row;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / row, j = e % row;
    const int64_t slot = slot_mapping[t];
    if (slot < 0) continue;  // padding
    if (slot >= slots) {
      if (bad_pos != nullptr && j == 0) atomicCAS(bad_pos, -1, static_cast<int32_t>(t));
      continue;
    }
    k_cache[slot * row + j] = Fmt::store(k_new[e]);
    v_cache[slot * row + j] = Fmt::store(v_new[e]);
  }
}

// Thread (column j, layer blockIdx.y, K or V by blockIdx.z) applies every copy i = 0 .. n-1 in
// order to its column: no other thread touches that column, so ordering needs no barrier.
template <class S>
__global__ void __launch_bounds__(kThreads) kv_copy_kernel(S* k_cache, S* v_cache, int64_t layer_elems, int64_t slots,
                                                           int64_t row, const int64_t* src, const int64_t* dst, int64_t n) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= row) return;
  S* base = (blockIdx.z == 0 ? k_cache : v_cache) + static_cast<int64_t>(blockIdx.y) * layer_elems;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = src[i], d = dst[i];
    if (s == d || s < 0 || d < 0 || s >= slots || d >= slots) continue;  // out of range: precondition
    base[d * row + j] = base[s * row + j];
  }
}

bool layout_ok(const KVLayout& L) {
  return L.num_pages > 0 && L.page_size > 0 && L.num_kv_heads > 0 && L.head_dim > 0;
}

// A host f32 array as device storage of dtype dt (rounded like the CPU conversions).
Status upload_as(DType dt, const float* host, size_t n, DeviceBuffer<uint8_t>* buf) {
  if (dt == DType::kF32) return buf->upload(reinterpret_cast<const uint8_t*>(host), n * sizeof(float));
  std::vector<uint16_t> bits(n);
  for (size_t i = 0; i < n; ++i) bits[i] = dt == DType::kBF16 ? f32_to_bf16(host[i]) : f32_to_f16(host[i]);
  return buf->upload(reinterpret_cast<const uint8_t*>(bits.data()), n * sizeof(uint16_t));
}

Status download_as(DType dt, const DeviceBuffer<uint8_t>& buf, size_t n, float* host) {
  if (dt == DType::kF32) return buf.download(reinterpret_cast<uint8_t*>(host), n * sizeof(float));
  std::vector<uint16_t> bits(n);
  SD_RETURN_IF_ERROR(buf.download(reinterpret_cast<uint8_t*>(bits.data()), n * sizeof(uint16_t)));
  for (size_t i = 0; i < n; ++i) host[i] = dt == DType::kBF16 ? bf16_to_f32(bits[i]) : f16_to_f32(bits[i]);
  return Status::Ok();
}

Status kv_dtype_ok(DType dt, const char* op) {
  if (dt == DType::kF32 || dt == DType::kBF16 || dt == DType::kF16) return Status::Ok();
  return Unsupported(std::string(op) + ": KV storage dtype " + dtype_name(dt) + " (expected float32, bfloat16 or float16)");
}

}  // namespace

Status kv_append(DType kv_dtype, void* k_cache, void* v_cache, const KVLayout& layout, const float* k_new,
                 const float* v_new, const int64_t* slot_mapping, int64_t T, int32_t* bad_pos, cudaStream_t stream) {
  SD_RETURN_IF_ERROR(kv_dtype_ok(kv_dtype, "kv_append"));
  if (!layout_ok(layout) || T < 0) return InvalidArgument("kv_append: expected a non-empty KV layout and T >= 0");
  if (T > 0x7fffffff) return InvalidArgument("kv_append: more than 2^31 - 1 rows");
  const int64_t row = layout.row_elems(), slots = layout.slots();
  if (T == 0) return Status::Ok();
  const unsigned grid = grid_blocks(T * row, kThreads);
  if (kv_dtype == DType::kF32)
    kv_append_kernel<F32><<<grid, kThreads, 0, stream>>>(static_cast<float*>(k_cache), static_cast<float*>(v_cache), slots,
                                                         row, k_new, v_new, slot_mapping, T, bad_pos);
  else if (kv_dtype == DType::kBF16)
    kv_append_kernel<BF16><<<grid, kThreads, 0, stream>>>(static_cast<uint16_t*>(k_cache), static_cast<uint16_t*>(v_cache),
                                                          slots, row, k_new, v_new, slot_mapping, T, bad_pos);
  else
    kv_append_kernel<F16><<<grid, kThreads, 0, stream>>>(static_cast<uint16_t*>(k_cache), static_cast<uint16_t*>(v_cache),
                                                         slots, row, k_new, v_new, slot_mapping, T, bad_pos);
  return check_launch("kv_append_kernel");
}

Status kv_copy_slots(DType kv_dtype, void* k_cache, void* v_cache, int32_t num_layers, const KVLayout& layout,
                     const int64_t* src, const int64_t* dst, int64_t n, cudaStream_t stream) {
  SD_RETURN_IF_ERROR(kv_dtype_ok(kv_dtype, "kv_copy_slots"));
  if (!layout_ok(layout) || n < 0 || num_layers <= 0 || num_layers > 65535)
    return InvalidArgument("kv_copy_slots: expected a non-empty KV layout, 1..65535 layers and n >= 0");
  if (n == 0) return Status::Ok();
  const int64_t row = layout.row_elems();
  const dim3 grid(static_cast<unsigned>((row + kThreads - 1) / kThreads), static_cast<unsigned>(num_layers), 2);
  if (kv_dtype == DType::kF32)
    kv_copy_kernel<float><<<grid, kThreads, 0, stream>>>(static_cast<float*>(k_cache), static_cast<float*>(v_cache),
                                                         layout.layer_elems(), layout.slots(), row, src, dst, n);
  else
    kv_copy_kernel<uint16_t><<<grid, kThreads, 0, stream>>>(static_cast<uint16_t*>(k_cache),
                                                            static_cast<uint16_t*>(v_cache), layout.layer_elems(),
                                                            layout.slots(), row, src, dst, n);
  return check_launch("kv_copy_kernel");
}

// ---- host wrappers ---------------------------------------------------------------------------

Status kv_append_host(DType kv_dtype, float* k_cache, float* v_cache, const KVLayout& layout, const float* k_new,
                      const float* v_new, const int64_t* slot_mapping, int64_t T) {
  SD_RETURN_IF_ERROR(kv_dtype_ok(kv_dtype, "kv_append"));
  if (!layout_ok(layout)) return InvalidArgument("kv_append: empty KV layout");
  const size_t cache_n = static_cast<size_t>(layout.layer_elems()), new_n = static_cast<size_t>(T * layout.row_elems());
  DeviceBuffer<uint8_t> dk, dv;
  DeviceBuffer<float> dkn, dvn;
  DeviceBuffer<int64_t> dslots;
  DeviceBuffer<int32_t> dbad;
  const int32_t minus_one = -1;
  SD_RETURN_IF_ERROR(upload_as(kv_dtype, k_cache, cache_n, &dk));
  SD_RETURN_IF_ERROR(upload_as(kv_dtype, v_cache, cache_n, &dv));
  SD_RETURN_IF_ERROR(dkn.upload(k_new, new_n));
  SD_RETURN_IF_ERROR(dvn.upload(v_new, new_n));
  SD_RETURN_IF_ERROR(dslots.upload(slot_mapping, static_cast<size_t>(T)));
  SD_RETURN_IF_ERROR(dbad.upload(&minus_one, 1));
  SD_RETURN_IF_ERROR(kv_append(kv_dtype, dk.get(), dv.get(), layout, dkn.get(), dvn.get(), dslots.get(), T, dbad.get(),
                               nullptr));
  SD_RETURN_IF_ERROR(sync(nullptr, "kv_append"));
  int32_t bad = -1;
  SD_RETURN_IF_ERROR(dbad.download(&bad, 1));
  if (bad >= 0)
    return InvalidArgument("slot_mapping: slot " + std::to_string(slot_mapping[bad]) + " at row " + std::to_string(bad) +
                           " is out of range [0, " + std::to_string(layout.slots()) + ")");
  SD_RETURN_IF_ERROR(download_as(kv_dtype, dk, cache_n, k_cache));
  return download_as(kv_dtype, dv, cache_n, v_cache);
}

Status kv_copy_slots_host(DType kv_dtype, float* k_cache, float* v_cache, int32_t num_layers, const KVLayout& layout,
                          const int64_t* src, const int64_t* dst, int64_t n) {
  SD_RETURN_IF_ERROR(kv_dtype_ok(kv_dtype, "kv_copy_slots"));
  if (!layout_ok(layout) || num_layers <= 0) return InvalidArgument("kv_copy_slots: empty KV layout");
  for (int64_t i = 0; i < n; ++i)
    if (src[i] < 0 || src[i] >= layout.slots() || dst[i] < 0 || dst[i] >= layout.slots())
      return InvalidArgument("kv_copy_slots: copy " + std::to_string(i) + " (" + std::to_string(src[i]) + " -> " +
                             std::to_string(dst[i]) + ") is out of range [0, " + std::to_string(layout.slots()) + ")");
  const size_t cache_n = static_cast<size_t>(num_layers) * static_cast<size_t>(layout.layer_elems());
  DeviceBuffer<uint8_t> dk, dv;
  DeviceBuffer<int64_t> dsrc, ddst;
  SD_RETURN_IF_ERROR(upload_as(kv_dtype, k_cache, cache_n, &dk));
  SD_RETURN_IF_ERROR(upload_as(kv_dtype, v_cache, cache_n, &dv));
  SD_RETURN_IF_ERROR(dsrc.upload(src, static_cast<size_t>(n)));
  SD_RETURN_IF_ERROR(ddst.upload(dst, static_cast<size_t>(n)));
  SD_RETURN_IF_ERROR(kv_copy_slots(kv_dtype, dk.get(), dv.get(), num_layers, layout, dsrc.get(), ddst.get(), n, nullptr));
  SD_RETURN_IF_ERROR(sync(nullptr, "kv_copy_slots"));
  SD_RETURN_IF_ERROR(download_as(kv_dtype, dk, cache_n, k_cache));
  return download_as(kv_dtype, dv, cache_n, v_cache);
}

}  // namespace sd::cuda
