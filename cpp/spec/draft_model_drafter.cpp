#include "spec/draft_model_drafter.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace sd {

DraftModelDrafter::DraftModelDrafter(std::unique_ptr<ForwardModel> model, const KVCacheConfig& kv,
                                     const DraftModelOptions& o)
    : model_(std::move(model)), kv_(kv), opts_(o) {
  if (o.prefix_caching) prefix_.reset(new RadixCache(kv.page_size, &kv_.allocator()));
}

Status DraftModelDrafter::feed(SeqState& st, const std::vector<int32_t>& tokens,
                               const std::vector<int32_t>& positions, const std::vector<uint8_t>* mask,
                               const std::vector<int32_t>& rows, RowKind kind, DraftRows* out) {
  if (prefix_) prefix_->ensure_free(st.pages.blocks_needed(static_cast<int64_t>(tokens.size())));
  SD_RETURN_IF_ERROR(st.pages.append(kv_.allocator(), static_cast<int64_t>(tokens.size())));
  ForwardBatch fb;
  fb.token_ids = tokens;
  fb.positions = positions;
  fb.qo_indptr = {0, static_cast<int32_t>(tokens.size())};
  fb.seqs = {&st.pages};
  if (mask) {
    fb.custom_mask = *mask;
    fb.mask_indptr = {0, static_cast<int64_t>(mask->size())};
  }
  fb.logit_rows = rows;
  return forward_rows(*model_, fb, kv_, kind, out);
}

Status DraftModelDrafter::catch_up(SeqState& st, const std::vector<int32_t>& ctx, RowKind kind, DraftRows* root) {
  const int64_t len = static_cast<int64_t>(ctx.size());
  while (st.committed < len) {
    const int64_t n = std::min<int64_t>(opts_.prefill_chunk, len - st.committed);
    std::vector<int32_t> toks(ctx.begin() + st.committed, ctx.begin() + st.committed + n), pos(static_cast<size_t>(n));
    std::iota(pos.begin(), pos.end(), static_cast<int32_t>(st.committed));
    SD_RETURN_IF_ERROR(feed(st, toks, pos, nullptr, {static_cast<int32_t>(n - 1)}, kind, root));
    st.committed += n;
  }
  return Status::Ok();
}

DraftModelDrafter::SeqState& DraftModelDrafter::start(int32_t seq, const std::vector<int32_t>& ctx) {
  auto it = seqs_.find(seq);
  if (it != seqs_.end()) return it->second;
  SeqState& st = seqs_.emplace(seq, SeqState(kv_.config().page_size)).first->second;
  if (prefix_ && ctx.size() > 1) {  // the root itself is always recomputed (its logits are needed)
    const RadixCache::Match m = prefix_->match_prefix(ctx.data(), static_cast<int64_t>(ctx.size()) - 1);
    st.pages.share_prefix(kv_.allocator(), m.blocks);
    st.committed = m.num_tokens;
    st.cache_node = m.node;
    if (m.node != RadixCache::kRoot) prefix_->lock(m.node);
  }
  return st;
}

Status DraftModelDrafter::propose(int32_t seq, const DraftRequest& req, TokenTree* tree) {
  return propose_batch({DraftJob{seq, req, tree}});
}

Status DraftModelDrafter::propose_batch(const std::vector<DraftJob>& jobs) {
  const int64_t V = model_->config().vocab_size;
  std::vector<ChainDraft> chains;
  std::vector<SeqState*> states;  // of the chains, or of the trees
  // Chains read their root rows as the later rounds do (chain_row_kind); trees read logits.
  std::vector<ChainDraft> planned;
  for (const DraftJob& j : jobs)
    if (std::min(j.req.max_nodes, max_nodes()) > 0) planned.push_back(ChainDraft{&j.req, j.tree, 0});
  const RowKind root_kind = proposes_chains() ? chain_row_kind(planned, opts_.min_confidence) : RowKind::kLogits;
  DraftRows first;
  first.kind = root_kind;
  std::vector<TreeJob> trees;
  std::vector<std::vector<float>> tree_roots;
  tree_roots.reserve(jobs.size());
  Status s;
  for (const DraftJob& j : jobs) {
    SeqState& st = start(j.seq, *j.req.context);
    st.node_slot.clear();
    const int32_t budget = std::min(j.req.max_nodes, max_nodes());
    if (budget <= 0) continue;
    const int64_t len = static_cast<int64_t>(j.req.context->size());
    if (st.committed >= len) {  // the root is already in the cache: recompute its row
      st.pages.truncate(kv_.allocator(), len - 1);
      st.committed = len - 1;
    }
    DraftRows root;
    if (root_kind == RowKind::kDraws) prepare_draws({ChainDraft{&j.req, j.tree, budget}}, {0}, &root);
    s = catch_up(st, *j.req.context, root_kind, &root);
    if (!s.ok()) break;
    if (!proposes_chains()) {
      tree_roots.push_back(std::move(root.logits));
      trees.push_back(TreeJob{budget, tree_roots.back().data(), j.tree, &st.node_slot, j.req.tree_sizing});
      states.push_back(&st);
    } else {
      chains.push_back(ChainDraft{&j.req, j.tree, budget});
      states.push_back(&st);
      first.logits.insert(first.logits.end(), root.logits.begin(), root.logits.end());
      first.argmax.insert(first.argmax.end(), root.argmax.begin(), root.argmax.end());
      first.draws.tokens.insert(first.draws.tokens.end(), root.draws.tokens.begin(), root.draws.tokens.end());
      first.draws.probs.insert(first.draws.probs.end(), root.draws.probs.begin(), root.draws.probs.end());
    }
  }
  if (s.ok() && !trees.empty()) {
    s = grow_trees(opts_, V, trees, [&](const std::vector<int32_t>& active, const std::vector<TreeRound>& rounds,
                                        std::vector<float>* logits) {
      return feed_tree_rounds(states, active, rounds, logits);
    });
  }
  if (s.ok() && !chains.empty()) {
    s = grow_chains(chains, V, opts_.min_confidence, std::move(first),
                    [&](const std::vector<int32_t>& growing, RowKind kind, DraftRows* rows) {
                      return feed_chains(chains, states, growing, kind, rows);
                    });
  }
  for (const DraftJob& j : jobs) {  // one slot entry per node (-1: not in the cache)
    auto it = seqs_.find(j.seq);
    if (it == seqs_.end()) continue;
    SeqState& st = it->second;
    if (s.code() == StatusCode::kOutOfBlocks) {  // no room to draft: propose what we have
      st.pages.truncate(kv_.allocator(), st.committed);
      st.node_slot.clear();
    }
    st.node_slot.resize(static_cast<size_t>(j.tree->size()), -1);
  }
  return s.code() == StatusCode::kOutOfBlocks ? Status::Ok() : s;
}

Status DraftModelDrafter::feed_chains(const std::vector<ChainDraft>& chains, const std::vector<SeqState*>& states,
                                      const std::vector<int32_t>& growing, RowKind kind, DraftRows* rows) {
  ForwardBatch fb;
  fb.qo_indptr.push_back(0);
  for (int32_t c : growing) {
    SeqState& st = *states[static_cast<size_t>(c)];
    const TokenTree& t = *chains[static_cast<size_t>(c)].tree;
    if (prefix_) prefix_->ensure_free(st.pages.blocks_needed(1));
    SD_RETURN_IF_ERROR(st.pages.append(kv_.allocator(), 1));
    st.node_slot.resize(static_cast<size_t>(t.size()), -1);
    st.node_slot.back() = t.size() - 1;
    fb.token_ids.push_back(t.token.back());
    fb.positions.push_back(static_cast<int32_t>(st.committed - 1 + t.depth.back()));
    fb.logit_rows.push_back(static_cast<int32_t>(fb.seqs.size()));
    fb.qo_indptr.push_back(static_cast<int32_t>(fb.token_ids.size()));
    fb.seqs.push_back(&st.pages);
  }
  return forward_rows(*model_, fb, kv_, kind, rows);
}

Status DraftModelDrafter::feed_tree_rounds(const std::vector<SeqState*>& states, const std::vector<int32_t>& active,
                                           const std::vector<TreeRound>& rounds, std::vector<float>* logits) {
  ForwardBatch fb;
  fb.qo_indptr.push_back(0);
  fb.mask_indptr.push_back(0);
  for (size_t a = 0; a < active.size(); ++a) {
    SeqState& st = *states[static_cast<size_t>(active[a])];
    const TreeRound& r = rounds[a];
    const int32_t n = r.run->size() - r.first;
    if (prefix_) prefix_->ensure_free(st.pages.blocks_needed(n));
    SD_RETURN_IF_ERROR(st.pages.append(kv_.allocator(), n));
    for (int32_t slot = r.first; slot < r.run->size(); ++slot) {
      fb.token_ids.push_back(r.run->token[static_cast<size_t>(slot)]);
      fb.positions.push_back(static_cast<int32_t>(st.committed - 1 + r.run->depth[static_cast<size_t>(slot)]));
      fb.logit_rows.push_back(static_cast<int32_t>(fb.logit_rows.size()));
    }
    r.run->append_node_mask(st.committed, r.first, r.run->size(), &fb.custom_mask);
    fb.mask_indptr.push_back(static_cast<int64_t>(fb.custom_mask.size()));
    fb.qo_indptr.push_back(static_cast<int32_t>(fb.token_ids.size()));
    fb.seqs.push_back(&st.pages);
  }
  logits->resize(fb.logit_rows.size() * static_cast<size_t>(model_->config().vocab_size));
  return model_->forward(fb, kv_, logits->data());
}

void DraftModelDrafter::accept(int32_t seq, const TokenTree& tree, const std::vector<int32_t>& accepted) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  SeqState& st = it->second;
  std::vector<int64_t> from, to;
  for (int32_t node : accepted) {
    const int32_t s = node < static_cast<int32_t>(st.node_slot.size()) ? st.node_slot[static_cast<size_t>(node)] : -1;
    if (s < 0) break;
    from.push_back(st.committed + s);
    to.push_back(st.committed + static_cast<int64_t>(to.size()));
  }
  // The indices come from this drafter's own bookkeeping: a failure is a bug, not bad input.
  const Status copied = model_->copy_tokens(kv_, st.pages, from, to);
  if (!copied.ok()) throw std::logic_error("draft model accept: " + copied.message());
  const int64_t keep = static_cast<int64_t>(from.size());
  st.committed += keep;
  st.pages.truncate(kv_.allocator(), st.committed);
  st.node_slot.clear();
}

void DraftModelDrafter::release(int32_t seq, const std::vector<int32_t>& context) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  SeqState& st = it->second;
  if (prefix_) {
    const int64_t n = std::min<int64_t>(st.pages.num_tokens(), static_cast<int64_t>(context.size()));
    if (n > 0) prefix_->insert(context.data(), n, st.pages.blocks());
    if (st.cache_node != RadixCache::kRoot) prefix_->unlock(st.cache_node);
  }
  st.pages.release(kv_.allocator());
  seqs_.erase(it);
}

}  // namespace sd
