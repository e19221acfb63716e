#include "model/batch_pages.h"

#include <algorithm>
#include <cmath>

namespace sd {

Status BatchPages::build(const std::vector<const SeqPages*>& seqs, const std::vector<int32_t>& qo_indptr,
                         const std::vector<int64_t>& mask_indptr, const KVWindow& window, const std::string& who) {
  const int32_t B = static_cast<int32_t>(seqs.size());
  const bool masked = !mask_indptr.empty();
  if (masked && static_cast<int32_t>(mask_indptr.size()) != B + 1)
    return InvalidArgument(who + ": mask_indptr must have batch + 1 entries");
  if (masked && window.active()) return InvalidArgument(who + ": a sparse KV window takes no custom mask");
  seqs_ = &seqs;
  qo_indptr_ = &qo_indptr;
  kv_indptr_.assign(1, 0);
  kv_indices_.clear();
  kv_last_page_len_.clear();
  for (int32_t b = 0; b < B; ++b) {
    const SeqPages& s = *seqs[static_cast<size_t>(b)];
    const int32_t qo_len = qo_indptr[b + 1] - qo_indptr[b];
    if (qo_len < 0 || qo_len > s.num_tokens())
      return InvalidArgument(who + ": a sequence's pages do not hold its new tokens (append first)");
    if (window.active() && qo_len > window.window_tokens)
      return InvalidArgument(who + ": the KV window must hold every new token");
    append_window_pages(s, window, &kv_indices_);
    kv_indptr_.push_back(static_cast<int32_t>(kv_indices_.size()));
    kv_last_page_len_.push_back(s.last_page_len());
    if (masked && mask_indptr[b + 1] - mask_indptr[b] != static_cast<int64_t>(qo_len) * s.num_tokens())
      return InvalidArgument(who + ": custom mask of request " + std::to_string(b) + " must have qo_len x kv_len entries");
  }
  return Status::Ok();
}

void BatchPages::scatter_qkv(const float* qkv, int64_t nq, int64_t nkv, int64_t D, int32_t l, KVCache& kv,
                             float* q) const {
  const int64_t qkv_w = (nq + 2 * nkv) * D;
  const std::vector<int32_t>& qo = *qo_indptr_;
  for (size_t b = 0; b < seqs_->size(); ++b) {
    const SeqPages& s = *(*seqs_)[b];
    const int32_t t0 = qo[b], qo_len = qo[b + 1] - t0;
    const int64_t first_slot = s.num_tokens() - qo_len;
    for (int32_t i = 0; i < qo_len; ++i) {
      const float* row = qkv + static_cast<int64_t>(t0 + i) * qkv_w;
      std::copy(row, row + nq * D, q + static_cast<int64_t>(t0 + i) * nq * D);
      std::copy(row + nq * D, row + (nq + nkv) * D, kv.k_slot(l, s, first_slot + i));
      std::copy(row + (nq + nkv) * D, row + qkv_w, kv.v_slot(l, s, first_slot + i));
    }
  }
}

void BatchPages::new_token_slots(std::vector<int64_t>* slots) const {
  const std::vector<int32_t>& qo = *qo_indptr_;
  slots->clear();
  for (size_t b = 0; b < seqs_->size(); ++b) {
    const SeqPages& s = *(*seqs_)[b];
    const int32_t qo_len = qo[b + 1] - qo[b];
    for (int64_t t = s.num_tokens() - qo_len; t < s.num_tokens(); ++t) slots->push_back(s.flat_slot(t));
  }
}

Status BatchPages::attend(const float* q, const KVCache& kv, int32_t l, const std::vector<uint8_t>& mask,
                          const std::vector<int64_t>& mask_indptr, int32_t nq, float* out) const {
  const bool masked = !mask.empty();
  const float sm_scale = 1.0f / std::sqrt(static_cast<float>(kv.config().head_dim));
  return ops::paged_attention(q, qo_indptr_->data(), static_cast<int32_t>(seqs_->size()), kv.layer(l),
                              kv_indptr_.data(), kv_indices_.data(), kv_last_page_len_.data(),
                              masked ? mask.data() : nullptr, masked ? mask_indptr.data() : nullptr, nq, sm_scale,
                              out);
}

}  // namespace sd
