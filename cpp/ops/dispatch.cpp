// The one dispatch point: picks the kernel set for this CPU once (cpuid), validates what a
// caller could get wrong, and forwards. A CUDA backend plugs in here behind the same signatures.
#include <string>
#include <vector>

#include "ops/cpu/kernel_table.h"
#include "ops/ops.h"

namespace sd::ops {

namespace {

struct CpuIsa {
  const char* name;
  const cpu::KernelTable& (*table)();
  bool (*supported)();
};

bool always() { return true; }
#if defined(SPECDEC_HAVE_AVX2)
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#endif
#if defined(SPECDEC_HAVE_AVX512)
bool cpu_has_avx512() {
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#endif

// Worst to best.
const std::vector<CpuIsa>& isas() {
  static const std::vector<CpuIsa> all = [] {
    std::vector<CpuIsa> v{{"portable", &cpu::portable_kernels, &always}};
#if defined(SPECDEC_HAVE_AVX2)
    v.push_back({"avx2", &cpu::avx2_kernels, &cpu_has_avx2});
#endif
#if defined(SPECDEC_HAVE_AVX512)
    v.push_back({"avx512", &cpu::avx512_kernels, &cpu_has_avx512});
#endif
#if defined(SPECDEC_HAVE_AMX)
    v.push_back({"amx", &cpu::amx_kernels, &cpu::amx_usable});
#endif
    std::vector<CpuIsa> ok;
    for (const CpuIsa& i : v)
      if (i.supported()) ok.push_back(i);
    return ok;
  }();
  return all;
}

const CpuIsa* g_selected = nullptr;  // null: the best

const CpuIsa& selected() { return g_selected ? *g_selected : isas().back(); }
const cpu::KernelTable& kernels() { return selected().table(); }

}  // namespace

std::vector<std::string> available_cpu_isas() {
  std::vector<std::string> names;
  for (const CpuIsa& i : isas()) names.push_back(i.name);
  return names;
}

const char* cpu_isa() { return selected().name; }

Status set_cpu_isa(const std::string& name, std::string* previous) {
  const CpuIsa* pick = nullptr;
  if (name == "best") pick = &isas().back();
  for (const CpuIsa& i : isas())
    if (name == i.name) pick = &i;
  if (!pick) {
    std::string names;
    for (const CpuIsa& i : isas()) names += std::string(names.empty() ? "" : ", ") + i.name;
    return InvalidArgument("CPU kernel set '" + name + "' is not available here; available: " + names + ", best");
  }
  if (previous) *previous = cpu_isa();
  g_selected = pick;
  return Status::Ok();
}

void matmul(const Matrix& W, const float* X, int64_t M, int64_t ldx, float* Y, int64_t ldy,
            const float* bias) {
  if (M > 0 && W.rows > 0) kernels().matmul(W, X, M, ldx, Y, ldy, bias);
}

void rmsnorm(const float* x, const float* w, float eps, int64_t M, int64_t D, float* y) {
  kernels().rmsnorm(x, w, eps, M, D, y);
}

void rope(float* x, const int32_t* positions, int64_t T, int64_t n_heads, int64_t head_dim,
          int64_t stride, const float* inv_freq) {
  kernels().rope(x, positions, T, n_heads, head_dim, stride, inv_freq);
}

void silu_mul(const float* gate_up, int64_t M, int64_t I, float* out) {
  kernels().silu_mul(gate_up, M, I, out);
}

void embedding(const Matrix& table, const int32_t* ids, int64_t T, float* out) {
  kernels().embedding(table, ids, T, out);
}

Status paged_attention(const float* q, const int32_t* qo_indptr, int32_t batch, const PagedKV& kv,
                       const int32_t* kv_indptr, const int32_t* kv_indices,
                       const int32_t* kv_last_page_len, const uint8_t* custom_mask,
                       const int64_t* mask_indptr, int32_t num_qo_heads, float sm_scale,
                       float* out) {
  if (batch < 0) return InvalidArgument("paged_attention: batch must be >= 0");
  if (kv.page_size <= 0 || kv.num_kv_heads <= 0 || kv.head_dim <= 0 || num_qo_heads <= 0 ||
      num_qo_heads % kv.num_kv_heads != 0)
    return InvalidArgument("paged_attention: need page_size, heads, head_dim > 0 and num_qo_heads (" +
                           std::to_string(num_qo_heads) + ") a multiple of num_kv_heads (" +
                           std::to_string(kv.num_kv_heads) + ")");
  if (custom_mask && !mask_indptr)
    return InvalidArgument("paged_attention: custom_mask needs mask_indptr");
  if (batch == 0) return Status::Ok();
  if (qo_indptr[0] != 0 || kv_indptr[0] != 0)
    return InvalidArgument("paged_attention: qo_indptr and kv_indptr must start at 0");
  // All of qo_indptr/kv_indptr is checked before anything is read or written through them.
  for (int32_t b = 0; b < batch; ++b)
    if (qo_indptr[b + 1] < qo_indptr[b] || kv_indptr[b + 1] < kv_indptr[b])
      return InvalidArgument("paged_attention: qo_indptr/kv_indptr must be non-decreasing (request " +
                             std::to_string(b) + ")");
  std::vector<int32_t> kv_len(batch), query_request(qo_indptr[batch] > 0 ? qo_indptr[batch] : 0);
  for (int32_t b = 0; b < batch; ++b) {
    const int32_t qo_len = qo_indptr[b + 1] - qo_indptr[b];
    const int32_t pages = kv_indptr[b + 1] - kv_indptr[b];
    if (qo_len > 0 && pages == 0)
      return InvalidArgument("paged_attention: request " + std::to_string(b) + " has queries but no KV pages");
    if (pages > 0 && (kv_last_page_len[b] < 1 || kv_last_page_len[b] > kv.page_size))
      return InvalidArgument("paged_attention: kv_last_page_len[" + std::to_string(b) + "] = " +
                             std::to_string(kv_last_page_len[b]) + ", expected 1.." +
                             std::to_string(kv.page_size));
    for (int32_t p = kv_indptr[b]; p < kv_indptr[b + 1]; ++p)
      if (kv_indices[p] < 0 || kv_indices[p] >= kv.num_pages)
        return InvalidArgument("paged_attention: kv_indices[" + std::to_string(p) + "] = " +
                               std::to_string(kv_indices[p]) + " is not a page in [0, " +
                               std::to_string(kv.num_pages) + ")");
    kv_len[b] = pages > 0 ? (pages - 1) * kv.page_size + kv_last_page_len[b] : 0;
    if (!custom_mask && qo_len > kv_len[b])
      return InvalidArgument("paged_attention: request " + std::to_string(b) + " has " +
                             std::to_string(qo_len) + " queries but only " +
                             std::to_string(kv_len[b]) + " KV tokens (they must include the queries)");
    if (custom_mask) {
      if (mask_indptr[b + 1] - mask_indptr[b] != static_cast<int64_t>(qo_len) * kv_len[b])
        return InvalidArgument("paged_attention: mask_indptr gives request " + std::to_string(b) + " " +
                               std::to_string(mask_indptr[b + 1] - mask_indptr[b]) +
                               " custom_mask entries, expected qo_len * kv_len = " +
                               std::to_string(static_cast<int64_t>(qo_len) * kv_len[b]));
      const uint8_t* m = custom_mask + mask_indptr[b];
      for (int32_t i = 0; i < qo_len; ++i) {
        bool any = false;
        for (int32_t j = 0; j < kv_len[b] && !any; ++j) any = m[static_cast<int64_t>(i) * kv_len[b] + j] != 0;
        if (!any)
          return InvalidArgument("paged_attention: custom_mask row " + std::to_string(i) +
                                 " of request " + std::to_string(b) + " attends to nothing");
      }
    }
    for (int32_t t = qo_indptr[b]; t < qo_indptr[b + 1]; ++t) query_request[t] = b;
  }
  cpu::AttentionPlan plan{query_request.data(), kv_len.data(), qo_indptr[batch]};
  kernels().paged_attention(plan, q, qo_indptr, kv, kv_indptr, kv_indices, custom_mask,
                            mask_indptr, num_qo_heads, sm_scale, out);
  return Status::Ok();
}

}  // namespace sd::ops
