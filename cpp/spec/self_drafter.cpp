#include "spec/self_drafter.h"

#include <algorithm>
#include <string>

namespace sd {

Status SelfDrafter::validate(const SelfDraftOptions& o, const ModelConfig& target) {
  if (o.num_tokens < 1) return InvalidArgument("num_speculative_tokens must be >= 1");
  if (o.min_confidence < 0 || o.min_confidence >= 1) return InvalidArgument("draft confidence threshold must be in [0, 1)");
  for (size_t i = 0; i < o.layers.size(); ++i)
    if (o.layers[i] < 0 || o.layers[i] >= target.num_layers || (i > 0 && o.layers[i] <= o.layers[i - 1]))
      return InvalidArgument("draft layers must be ascending layer indices in [0, " + std::to_string(target.num_layers) +
                             ") of the target");
  if (o.window.sink_tokens < 0 || o.window.window_tokens < 0) return InvalidArgument("sink and window tokens must be >= 0");
  if (o.window.active() && o.window.window_tokens < o.num_tokens)
    return InvalidArgument("the KV window must hold the drafted chain: window_tokens >= num_speculative_tokens");
  const bool fewer_layers = !o.layers.empty() && static_cast<int32_t>(o.layers.size()) < target.num_layers;
  if (!fewer_layers && !o.window.active())
    return InvalidArgument("a self-draft must skip layers or attend a KV window (else it is the target itself)");
  return Status::Ok();
}

Status SelfDrafter::propose_batch(const std::vector<DraftJob>& jobs) {
  std::vector<ChainDraft> chains;
  std::vector<SeqPages*> pages;
  std::vector<int64_t> base;  // committed tokens with KV (the root goes at this slot)
  for (const DraftJob& j : jobs) {
    const int32_t budget = std::min(j.req.max_nodes, max_nodes());
    if (budget <= 0) continue;
    if (j.req.pages == nullptr) return InvalidArgument("self-speculation needs the target's pages of the sequence");
    chains.push_back(ChainDraft{&j.req, j.tree, budget});
    pages.push_back(j.req.pages);
    base.push_back(j.req.pages->num_tokens());
  }
  if (chains.empty()) return Status::Ok();
  std::vector<int32_t> all(chains.size());
  for (size_t c = 0; c < chains.size(); ++c) all[c] = static_cast<int32_t>(c);
  const RowKind kind = chain_row_kind(chains, opts_.min_confidence);
  DraftRows rows;
  if (kind == RowKind::kDraws) prepare_draws(chains, all, &rows);
  Status s = feed(chains, pages, base, all, kind, &rows);
  if (s.ok()) {
    s = grow_chains(chains, model_->config().vocab_size, opts_.min_confidence, std::move(rows),
                    [&](const std::vector<int32_t>& growing, RowKind kind, DraftRows* out) {
                      return feed(chains, pages, base, growing, kind, out);
                    });
  }
  for (size_t c = 0; c < chains.size(); ++c) pages[c]->truncate(kv_->allocator(), base[c]);
  return s.code() == StatusCode::kOutOfBlocks ? Status::Ok() : s;  // no room: propose what we have
}

Status SelfDrafter::feed(const std::vector<ChainDraft>& chains, const std::vector<SeqPages*>& pages,
                         const std::vector<int64_t>& base, const std::vector<int32_t>& growing, RowKind kind,
                         DraftRows* rows) {
  ForwardBatch fb;
  fb.layers = opts_.layers;
  fb.window = opts_.window;
  fb.qo_indptr.push_back(0);
  for (int32_t c : growing) {
    const ChainDraft& ch = chains[static_cast<size_t>(c)];
    SD_RETURN_IF_ERROR(pages[static_cast<size_t>(c)]->append(kv_->allocator(), 1));
    const bool root = ch.tree->empty();
    fb.token_ids.push_back(root ? ch.req->context->back() : ch.tree->token.back());
    fb.positions.push_back(static_cast<int32_t>(base[static_cast<size_t>(c)] + (root ? 0 : ch.tree->depth.back())));
    fb.logit_rows.push_back(static_cast<int32_t>(fb.seqs.size()));
    fb.qo_indptr.push_back(static_cast<int32_t>(fb.token_ids.size()));
    fb.seqs.push_back(pages[static_cast<size_t>(c)]);
  }
  return forward_rows(*model_, fb, *kv_, kind, rows);
}

}  // namespace sd
