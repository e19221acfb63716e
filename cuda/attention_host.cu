// Host wrappers of the CUDA paged attention: validate the host page table (the same checks and
// messages as sd::ops::paged_attention), plan, upload, run, download; and a CUDA-event timer.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "cuda/attention_device.h"
#include "cuda/mask_bits.h"

namespace sd::cuda {

Status validate_paged_attention(const HostAttentionInputs& in, std::vector<int32_t>* kv_len_out) {
  const int32_t batch = in.batch;
  if (batch < 0) return InvalidArgument("paged_attention: batch must be >= 0");
  if (in.page_size <= 0 || in.num_kv_heads <= 0 || in.head_dim <= 0 || in.num_qo_heads <= 0 ||
      in.num_qo_heads % in.num_kv_heads != 0)
    return InvalidArgument("paged_attention: need page_size, heads, head_dim > 0 and num_qo_heads (" +
                           std::to_string(in.num_qo_heads) + ") a multiple of num_kv_heads (" +
                           std::to_string(in.num_kv_heads) + ")");
  if (in.custom_mask && !in.mask_indptr) return InvalidArgument("paged_attention: custom_mask needs mask_indptr");
  if (in.kv_dtype != DType::kF32 && in.kv_dtype != DType::kBF16 && in.kv_dtype != DType::kF16)
    return InvalidArgument(std::string("paged_attention (CUDA): kv_dtype must be float32, bfloat16 or float16, got ") +
                           dtype_name(in.kv_dtype));
  if (in.head_dim != 64 && in.head_dim != 128)
    return Unsupported("paged_attention (CUDA): head_dim " + std::to_string(in.head_dim) +
                       " is not supported (64, 128)");
  if (kv_len_out) kv_len_out->assign(static_cast<size_t>(batch), 0);
  if (batch == 0) return Status::Ok();
  if (in.qo_indptr[0] != 0 || in.kv_indptr[0] != 0)
    return InvalidArgument("paged_attention: qo_indptr and kv_indptr must start at 0");
  for (int32_t b = 0; b < batch; ++b)
    if (in.qo_indptr[b + 1] < in.qo_indptr[b] || in.kv_indptr[b + 1] < in.kv_indptr[b])
      return InvalidArgument("paged_attention: qo_indptr/kv_indptr must be non-decreasing (request " +
                             std::to_string(b) + ")");
  if (in.qo_indptr[batch] != in.total_q)
    return InvalidArgument("qo_indptr[-1] must equal the number of queries " + std::to_string(in.total_q));
  if (in.kv_indptr[batch] > in.num_kv_indices) return InvalidArgument("kv_indptr must index into kv_indices");
  if (in.custom_mask) {
    if (in.mask_indptr[0] < 0 || in.mask_indptr[batch] > in.mask_len)
      return InvalidArgument("mask_indptr must index into custom_mask");
    for (int32_t b = 0; b < batch; ++b)
      if (in.mask_indptr[b + 1] < in.mask_indptr[b])
        return InvalidArgument("paged_attention: mask_indptr must be non-decreasing (request " + std::to_string(b) + ")");
  }
  for (int32_t b = 0; b < batch; ++b) {
    const int32_t qo_len = in.qo_indptr[b + 1] - in.qo_indptr[b];
    const int32_t pages = in.kv_indptr[b + 1] - in.kv_indptr[b];
    if (qo_len > 0 && pages == 0)
      return InvalidArgument("paged_attention: request " + std::to_string(b) + " has queries but no KV pages");
    if (pages > 0 && (in.kv_last_page_len[b] < 1 || in.kv_last_page_len[b] > in.page_size))
      return InvalidArgument("paged_attention: kv_last_page_len[" + std::to_string(b) + "] = " +
                             std::to_string(in.kv_last_page_len[b]) + ", expected 1.." + std::to_string(in.page_size));
    for (int32_t p = in.kv_indptr[b]; p < in.kv_indptr[b + 1]; ++p)
      if (in.kv_indices[p] < 0 || in.kv_indices[p] >= in.num_pages)
        return InvalidArgument("paged_attention: kv_indices[" + std::to_string(p) + "] = " +
                               std::to_string(in.kv_indices[p]) + " is not a page in [0, " +
                               std::to_string(in.num_pages) + ")");
    const int64_t kv_len64 = pages > 0 ? static_cast<int64_t>(pages - 1) * in.page_size + in.kv_last_page_len[b] : 0;
    if (kv_len64 > INT32_MAX) return InvalidArgument("paged_attention: request " + std::to_string(b) + " has over 2^31 KV tokens");
    const int32_t kv_len = static_cast<int32_t>(kv_len64);
    if (kv_len_out) (*kv_len_out)[b] = kv_len;
    if (!in.custom_mask && qo_len > kv_len)
      return InvalidArgument("paged_attention: request " + std::to_string(b) + " has " + std::to_string(qo_len) +
                             " queries but only " + std::to_string(kv_len) +
                             " KV tokens (they must include the queries)");
    if (in.custom_mask) {
      if (in.mask_indptr[b + 1] - in.mask_indptr[b] != static_cast<int64_t>(qo_len) * kv_len)
        return InvalidArgument("paged_attention: mask_indptr gives request " + std::to_string(b) + " " +
                               std::to_string(in.mask_indptr[b + 1] - in.mask_indptr[b]) +
                               " custom_mask entries, expected qo_len * kv_len = " +
                               std::to_string(static_cast<int64_t>(qo_len) * kv_len));
      const uint8_t* m = in.custom_mask + in.mask_indptr[b];
      for (int32_t i = 0; i < qo_len; ++i) {
        bool any = false;
        for (int32_t j = 0; j < kv_len && !any; ++j) any = m[static_cast<int64_t>(i) * kv_len + j] != 0;
        if (!any)
          return InvalidArgument("paged_attention: custom_mask row " + std::to_string(i) + " of request " +
                                 std::to_string(b) + " attends to nothing");
      }
    }
  }
  return Status::Ok();
}

namespace {

// Host f32 -> device bytes of dtype t (f32 copied as is, bf16/f16 rounded to nearest even).
Status upload_as(DType t, const float* src, size_t n, DeviceBuffer<unsigned char>* dst) {
  if (t == DType::kF32) return dst->upload(reinterpret_cast<const unsigned char*>(src), n * sizeof(float));
  std::vector<uint16_t> h(n);
  if (t == DType::kBF16)
    for (size_t i = 0; i < n; ++i) h[i] = f32_to_bf16(src[i]);
  else
    for (size_t i = 0; i < n; ++i) h[i] = f32_to_f16(src[i]);
  return dst->upload(reinterpret_cast<const unsigned char*>(h.data()), n * sizeof(uint16_t));
}

Status download_as(DType t, const DeviceBuffer<unsigned char>& src, size_t n, float* dst) {
  if (t == DType::kF32) return src.download(reinterpret_cast<unsigned char*>(dst), n * sizeof(float));
  std::vector<uint16_t> h(n);
  SD_RETURN_IF_ERROR(src.download(reinterpret_cast<unsigned char*>(h.data()), n * sizeof(uint16_t)));
  for (size_t i = 0; i < n; ++i) dst[i] = t == DType::kBF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
  return Status::Ok();
}

// Everything on the device for one call.
struct DeviceAttention {
  AttentionPlan plan;
  AttentionWorkspace ws;
  DeviceBuffer<unsigned char> q, out, k, v;
  DeviceBuffer<int32_t> kv_indptr, kv_indices;
  DeviceBuffer<uint8_t> mask;
  DeviceBuffer<int64_t> mask_byte_indptr;
  PagedKVDevice kv;
  PagedAttentionIO io;
  DType io_dtype = DType::kF32;
  size_t out_elems = 0;

  Status setup(const HostAttentionInputs& in) {
    SD_RETURN_IF_ERROR(validate_paged_attention(in, nullptr));
    int dev = 0, sms = 0;
    SD_RETURN_IF_ERROR(check(cudaGetDevice(&dev), "cudaGetDevice"));
    SD_RETURN_IF_ERROR(check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute"));
    SD_RETURN_IF_ERROR(plan_paged_attention(in.qo_indptr, in.kv_indptr, in.kv_last_page_len, in.batch, in.page_size,
                                            in.num_qo_heads, in.num_kv_heads, in.head_dim, in.custom_mask == nullptr,
                                            in.kv_chunk, sms, &plan));
    if (in.pad_plan > 0)
      pad_attention_plan(&plan, static_cast<int64_t>(plan.items.size()) + in.pad_plan,
                         static_cast<int64_t>(plan.merge.size() / 3) + in.pad_plan, plan.num_slots + in.pad_plan);
    SD_RETURN_IF_ERROR(ws.upload(plan, nullptr));
    io_dtype = in.io_in_kv_dtype ? in.kv_dtype : DType::kF32;
    out_elems = static_cast<size_t>(in.total_q) * in.num_qo_heads * in.head_dim;
    const size_t cache_elems = static_cast<size_t>(in.num_pages) * in.page_size * in.num_kv_heads * in.head_dim;
    SD_RETURN_IF_ERROR(upload_as(io_dtype, in.q, out_elems, &q));
    SD_RETURN_IF_ERROR(out.alloc_zeroed(out_elems * static_cast<size_t>(dtype_size(io_dtype))));
    SD_RETURN_IF_ERROR(upload_as(in.kv_dtype, in.k_cache, cache_elems, &k));
    SD_RETURN_IF_ERROR(upload_as(in.kv_dtype, in.v_cache, cache_elems, &v));
    if (in.batch > 0) {
      SD_RETURN_IF_ERROR(kv_indptr.upload(in.kv_indptr, static_cast<size_t>(in.batch) + 1));
      SD_RETURN_IF_ERROR(kv_indices.upload(in.kv_indices, static_cast<size_t>(in.kv_indptr[in.batch])));
    }
    if (in.custom_mask && in.batch > 0) {
      std::vector<uint8_t> packed;
      std::vector<int64_t> packed_indptr;
      pack_mask_bits(in.custom_mask, in.mask_indptr, in.batch, &packed, &packed_indptr);
      if (packed.empty()) packed.push_back(0);  // a valid pointer even for an all-empty mask
      SD_RETURN_IF_ERROR(mask.upload(packed));
      SD_RETURN_IF_ERROR(mask_byte_indptr.upload(packed_indptr));
    }
    kv.k = k.get();
    kv.v = v.get();
    kv.dtype = in.kv_dtype;
    kv.num_pages = in.num_pages;
    kv.page_size = in.page_size;
    kv.num_kv_heads = in.num_kv_heads;
    kv.head_dim = in.head_dim;
    io.q = q.get();
    io.out = out.get();
    io.io_dtype = io_dtype;
    io.kv_indptr = kv_indptr.get();
    io.kv_indices = kv_indices.get();
    io.packed_mask = in.custom_mask ? mask.get() : nullptr;
    io.mask_byte_indptr = in.custom_mask ? mask_byte_indptr.get() : nullptr;
    io.sm_scale = in.sm_scale;
    return Status::Ok();
  }
  Status run(cudaStream_t s) { return paged_attention(plan, ws, kv, io, s); }
};

}  // namespace

Status paged_attention_host(const HostAttentionInputs& in, float* out) {
  DeviceAttention d;
  SD_RETURN_IF_ERROR(d.setup(in));
  if (d.out_elems == 0) return Status::Ok();
  SD_RETURN_IF_ERROR(d.run(nullptr));
  SD_RETURN_IF_ERROR(sync(nullptr, "paged_attention (CUDA)"));
  return download_as(d.io_dtype, d.out, d.out_elems, out);
}

Status time_paged_attention_host(const HostAttentionInputs& in, int iters, AttentionTiming* timing) {
  if (iters < 1) return InvalidArgument("time_paged_attention: iters must be >= 1");
  DeviceAttention d;
  SD_RETURN_IF_ERROR(d.setup(in));
  timing->blocks = d.plan.blocks();
  timing->items = static_cast<int64_t>(d.plan.items.size());
  timing->kv_chunk = d.plan.kv_chunk;
  timing->split_tokens = static_cast<int64_t>(d.plan.merge.size() / 3);
  timing->ms = 0;
  if (d.out_elems == 0) return Status::Ok();
  for (int i = 0; i < 3; ++i) SD_RETURN_IF_ERROR(d.run(nullptr));
  SD_RETURN_IF_ERROR(time_iterations(iters, [&] { return d.run(nullptr); }, &timing->ms));
  return sync(nullptr, "paged_attention (CUDA) timing");
}

}  // namespace sd::cuda
