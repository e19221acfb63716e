// The paged-attention plumbing every decoder layer shares (the target's layers, an EAGLE head's
// one layer): a batch's page table in FlashInfer's CSR form, writing each new token's K and V
// into its pages, and attending over them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "kv/kv_window.h"

namespace sd {

class BatchPages {
 public:
  // Checks that each sequence's pages hold its new tokens (qo_indptr, request after request) and
  // that a custom mask (mask_indptr non-empty) has qo_len x kv_len entries per request; builds
  // the page table, of the sparse `window` when active. `who` prefixes error messages.
  Status build(const std::vector<const SeqPages*>& seqs, const std::vector<int32_t>& qo_indptr,
               const std::vector<int64_t>& mask_indptr, const KVWindow& window, const std::string& who);
  // Fused q|k|v rows ([T, (nq + 2 nkv) D]): queries to q ([T, nq D]), keys and values into
  // layer l's slots of the new tokens.
  void scatter_qkv(const float* qkv, int64_t nq, int64_t nkv, int64_t D, int32_t l, KVCache& kv, float* q) const;
  // ops::paged_attention over layer l with this table (mask empty: causal).
  Status attend(const float* q, const KVCache& kv, int32_t l, const std::vector<uint8_t>& mask,
                const std::vector<int64_t>& mask_indptr, int32_t nq, float* out) const;

  // The table itself (a device model uploads it) and the new tokens' flat slots, in batch order.
  const std::vector<int32_t>& kv_indptr() const { return kv_indptr_; }
  const std::vector<int32_t>& kv_indices() const { return kv_indices_; }
  const std::vector<int32_t>& kv_last_page_len() const { return kv_last_page_len_; }
  void new_token_slots(std::vector<int64_t>* slots) const;

 private:
  const std::vector<const SeqPages*>* seqs_ = nullptr;
  const std::vector<int32_t>* qo_indptr_ = nullptr;
  std::vector<int32_t> kv_indptr_, kv_indices_, kv_last_page_len_;
};

}  // namespace sd
