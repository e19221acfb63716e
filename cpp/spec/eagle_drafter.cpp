#include "spec/eagle_drafter.h"

#include <algorithm>

#include "sampling/sampler.h"

namespace sd {

EagleDrafter::EagleDrafter(std::unique_ptr<Eagle3Head> head, const LlamaModel* target, int32_t page_size,
                           int32_t num_blocks, const EagleOptions& o)
    : head_(std::move(head)),
      target_(target),
      kv_(head_->kv_config(page_size, num_blocks)),
      opts_(o),
      feature_width_(3 * static_cast<int64_t>(head_->config().target_hidden_size)) {}

int64_t EagleDrafter::weight_bytes_per_token() const { return head_->weight_bytes(); }

void EagleDrafter::observe_features(int32_t seq, int64_t first, const float* rows, int64_t n) {
  SeqState& st = seqs_.try_emplace(seq, kv_.config().page_size).first->second;
  const int64_t expected = st.first + st.committed + static_cast<int64_t>(st.pending.size()) / feature_width_;
  if (st.first >= 0 && first != expected) {  // a gap (or a recomputation): start over from here
    st.pages.release(kv_.allocator());
    st.committed = 0;
    st.pending.clear();
    st.first = -1;
  }
  if (st.first < 0) st.first = first;
  st.pending.insert(st.pending.end(), rows, rows + n * feature_width_);
}

Status EagleDrafter::run(SeqState& st, const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions,
                         const float* features, const float* hidden, std::vector<float>* logits,
                         std::vector<float>* hidden_out) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  SD_RETURN_IF_ERROR(st.pages.append(kv_.allocator(), n));
  EagleBatch b;
  b.token_ids = tokens;
  b.positions = positions;
  b.qo_indptr = {0, static_cast<int32_t>(n)};
  b.seqs = {&st.pages};
  b.features = features;
  b.hidden = hidden;
  b.logit_rows = {static_cast<int32_t>(n - 1)};
  logits->resize(static_cast<size_t>(head_->config().draft_vocab_size));
  hidden_out->resize(static_cast<size_t>(n * head_->config().hidden_size));
  return head_->forward(b, head_->has_embeddings() ? nullptr : &target_->embedding(), kv_, logits->data(),
                        hidden_out->data());
}

Status EagleDrafter::propose(int32_t seq, const DraftRequest& req, TokenTree* tree) {
  auto it = seqs_.find(seq);
  const int32_t budget = std::min(req.max_nodes, max_nodes());
  if (it == seqs_.end() || it->second.first < 0 || budget <= 0) return Status::Ok();
  SeqState& st = it->second;
  const std::vector<int32_t>& ctx = *req.context;
  const int64_t root = static_cast<int64_t>(ctx.size()) - 1;
  st.pages.truncate(kv_.allocator(), st.committed);
  const int64_t pending = static_cast<int64_t>(st.pending.size()) / feature_width_;
  const int64_t next = st.first + st.committed;  // token index of the first pending entry
  if (pending == 0 || next + pending != root) return Status::Ok();  // features up to the root's parent missing
  // Catch up: entry t pairs the features after token t with token t + 1, at position t.
  std::vector<int32_t> tokens, positions;
  for (int64_t t = next; t < root; ++t) {
    tokens.push_back(ctx[static_cast<size_t>(t + 1)]);
    positions.push_back(static_cast<int32_t>(t));
  }
  std::vector<float> logits, hidden;
  Status s = run(st, tokens, positions, st.pending.data(), nullptr, &logits, &hidden);
  if (!s.ok()) {  // the head's cache is out of blocks: forget this sequence until new features come
    st.pages.release(kv_.allocator());
    seqs_.erase(it);
    return s.code() == StatusCode::kOutOfBlocks ? Status::Ok() : s;
  }
  st.committed += pending;
  st.pending.clear();
  const int64_t H = head_->config().hidden_size, Vd = head_->config().draft_vocab_size;
  std::vector<float> h(hidden.end() - H, hidden.end());
  for (int32_t i = 0; i < budget; ++i) {  // a greedy chain from the head's own hidden states
    const int32_t x = head_->draft_to_target()[static_cast<size_t>(argmax(logits.data(), Vd))];
    tree->add(x, i - 1);
    if (i + 1 == budget) break;
    s = run(st, {x}, {static_cast<int32_t>(root + i)}, nullptr, h.data(), &logits, &hidden);
    if (s.code() == StatusCode::kOutOfBlocks) break;  // propose what we have
    SD_RETURN_IF_ERROR(s);
    h = hidden;
  }
  return Status::Ok();
}

void EagleDrafter::accept(int32_t seq, const TokenTree&, const std::vector<int32_t>&) {
  auto it = seqs_.find(seq);
  if (it != seqs_.end()) it->second.pages.truncate(kv_.allocator(), it->second.committed);  // drop the chain's entries
}

void EagleDrafter::release(int32_t seq, const std::vector<int32_t>&) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  it->second.pages.release(kv_.allocator());
  seqs_.erase(it);
}

}  // namespace sd
