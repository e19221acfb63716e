#include "spec/draft_model_drafter.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace sd {

namespace {

// Indexes of the k largest values (ties: lower index first), best first.
std::vector<int32_t> top_indices(const float* v, int64_t n, int32_t k) {
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  k = static_cast<int32_t>(std::min<int64_t>(k, n));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

}  // namespace

DraftModelDrafter::DraftModelDrafter(std::unique_ptr<LlamaModel> model, const KVCacheConfig& kv,
                                     const DraftModelOptions& o)
    : model_(std::move(model)), kv_(kv), opts_(o) {
  if (o.prefix_caching) prefix_.reset(new RadixCache(kv.page_size, &kv_.allocator()));
}

int32_t DraftModelDrafter::max_nodes() const {
  if (!opts_.tree_choices.empty()) return static_cast<int32_t>(opts_.tree_choices.size());
  if (opts_.top_k > 0) return opts_.max_nodes;
  return opts_.num_tokens;
}

Status DraftModelDrafter::feed(SeqState& st, const std::vector<int32_t>& tokens,
                               const std::vector<int32_t>& positions, const std::vector<uint8_t>* mask,
                               const std::vector<int32_t>& rows, std::vector<float>* logits) {
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
  logits->resize(rows.size() * static_cast<size_t>(model_->config().vocab_size));
  return model_->forward(fb, kv_, logits->data());
}

Status DraftModelDrafter::catch_up(SeqState& st, const std::vector<int32_t>& ctx, std::vector<float>* root_logits) {
  const int64_t len = static_cast<int64_t>(ctx.size());
  while (st.committed < len) {
    const int64_t n = std::min<int64_t>(opts_.prefill_chunk, len - st.committed);
    std::vector<int32_t> toks(ctx.begin() + st.committed, ctx.begin() + st.committed + n), pos(static_cast<size_t>(n));
    std::iota(pos.begin(), pos.end(), static_cast<int32_t>(st.committed));
    SD_RETURN_IF_ERROR(feed(st, toks, pos, nullptr, {static_cast<int32_t>(n - 1)}, root_logits));
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
  std::vector<SeqState*> states;
  std::vector<float> first_logits;
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
    std::vector<float> root_logits;
    s = catch_up(st, *j.req.context, &root_logits);
    if (s.ok() && !proposes_chains()) s = grow_tree(st, j.req, budget, root_logits, j.tree);
    if (!s.ok()) break;
    if (proposes_chains()) {
      chains.push_back(ChainDraft{&j.req, j.tree, budget});
      states.push_back(&st);
      first_logits.insert(first_logits.end(), root_logits.begin(), root_logits.end());
    }
  }
  if (s.ok() && !chains.empty()) {
    s = grow_chains(chains, V, opts_.min_confidence, std::move(first_logits),
                    [&](const std::vector<int32_t>& growing, std::vector<float>* logits) {
                      return feed_chains(chains, states, growing, logits);
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
                                      const std::vector<int32_t>& growing, std::vector<float>* logits) {
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
  logits->resize(growing.size() * static_cast<size_t>(model_->config().vocab_size));
  return model_->forward(fb, kv_, logits->data());
}

Status DraftModelDrafter::grow_tree(SeqState& st, const DraftRequest& req, int32_t budget,
                                    const std::vector<float>& root_logits, TokenTree* tree) {
  const int64_t V = model_->config().vocab_size;
  const bool dynamic = opts_.tree_choices.empty();
  const int32_t k = dynamic ? opts_.top_k : 0;
  // Candidate tree (all expansions); a dynamic tree keeps the best `budget` of them at the end.
  TokenTree cand;
  std::vector<float> score;                  // cumulative draft log-probability
  std::vector<std::vector<int32_t>> path;    // child ranks from the root (static trees)
  std::vector<int32_t> slot;                 // slot after `committed`, -1 if not fed
  auto wanted_children = [&](int32_t node) -> int32_t {  // static: how many children this node has
    std::vector<int32_t> p = node < 0 ? std::vector<int32_t>{} : path[static_cast<size_t>(node)];
    int32_t n = 0;
    for (const auto& c : opts_.tree_choices)
      if (c.size() == p.size() + 1 && std::equal(p.begin(), p.end(), c.begin())) ++n;
    return n;
  };
  auto expand = [&](int32_t node, const float* logits) {
    const int32_t want = dynamic ? k : wanted_children(node);
    if (want <= 0) return;
    const float base = node < 0 ? 0.f : score[static_cast<size_t>(node)];
    const std::vector<int32_t> top = top_indices(logits, V, want);
    const LogSoftmax log_softmax(logits, V);  // once per expanded node, not per child
    for (int32_t r = 0; r < static_cast<int32_t>(top.size()); ++r) {
      cand.add(top[static_cast<size_t>(r)], node);
      score.push_back(base + log_softmax.log_prob(top[static_cast<size_t>(r)]));
      std::vector<int32_t> p = node < 0 ? std::vector<int32_t>{} : path[static_cast<size_t>(node)];
      p.push_back(r);
      path.push_back(p);
      slot.push_back(-1);
    }
  };
  expand(-1, root_logits.data());
  const int32_t max_depth = dynamic ? opts_.num_tokens : [&] {
    int32_t d = 0;
    for (const auto& c : opts_.tree_choices) d = std::max<int32_t>(d, static_cast<int32_t>(c.size()));
    return d;
  }();
  int32_t level_begin = 0;
  int64_t fed = 0;
  for (int32_t depth = 1; depth < max_depth; ++depth) {
    const int32_t level_end = cand.size();
    std::vector<int32_t> frontier;
    for (int32_t i = level_begin; i < level_end; ++i)
      if (!dynamic ? wanted_children(i) > 0 : true) frontier.push_back(i);
    if (dynamic) {  // the top_k most probable nodes of this level
      std::sort(frontier.begin(), frontier.end(), [&](int32_t a, int32_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); });
      if (static_cast<int32_t>(frontier.size()) > k) frontier.resize(static_cast<size_t>(k));
      std::sort(frontier.begin(), frontier.end());
    }
    if (frontier.empty()) break;
    // Feed the frontier nodes (in index order) and read their logits; each sees the context,
    // its fed ancestors and itself.
    TokenTree sub;  // the fed nodes so far, re-indexed by slot, to build the mask
    std::vector<int32_t> slot_node;
    for (int32_t i = 0; i < cand.size(); ++i)
      if (slot[static_cast<size_t>(i)] >= 0) slot_node.push_back(i);
    for (int32_t f : frontier) slot_node.push_back(f);
    std::vector<int32_t> slot_of(static_cast<size_t>(cand.size()), -1);
    for (size_t s = 0; s < slot_node.size(); ++s) slot_of[static_cast<size_t>(slot_node[s])] = static_cast<int32_t>(s);
    for (int32_t node : slot_node) {
      const int32_t p = cand.parent[static_cast<size_t>(node)];
      sub.add(cand.token[static_cast<size_t>(node)], p < 0 ? -1 : slot_of[static_cast<size_t>(p)]);
    }
    std::vector<uint8_t> mask;
    sub.append_node_mask(st.committed, static_cast<int32_t>(fed), sub.size(), &mask);
    std::vector<int32_t> toks, pos, rows;
    for (size_t j = 0; j < frontier.size(); ++j) {
      toks.push_back(cand.token[static_cast<size_t>(frontier[j])]);
      pos.push_back(static_cast<int32_t>(st.committed - 1 + cand.depth[static_cast<size_t>(frontier[j])]));
      rows.push_back(static_cast<int32_t>(j));
    }
    std::vector<float> logits;
    SD_RETURN_IF_ERROR(feed(st, toks, pos, &mask, rows, &logits));
    for (size_t j = 0; j < frontier.size(); ++j) slot[static_cast<size_t>(frontier[j])] = static_cast<int32_t>(fed + j);
    fed += static_cast<int64_t>(frontier.size());
    for (size_t j = 0; j < frontier.size(); ++j) expand(frontier[j], logits.data() + j * V);
    level_begin = level_end;
  }
  // Keep the best `budget` nodes (ancestor-closed: a child never scores above its parent).
  std::vector<int32_t> keep(static_cast<size_t>(cand.size()));
  std::iota(keep.begin(), keep.end(), 0);
  if (static_cast<int32_t>(keep.size()) > budget) {
    std::stable_sort(keep.begin(), keep.end(), [&](int32_t a, int32_t b) { return score[a] > score[b]; });
    keep.resize(static_cast<size_t>(budget));
    std::sort(keep.begin(), keep.end());
  }
  std::vector<int32_t> new_index(static_cast<size_t>(cand.size()), -1);
  for (int32_t node : keep) {
    const int32_t p = cand.parent[static_cast<size_t>(node)];
    if (p >= 0 && new_index[static_cast<size_t>(p)] < 0) continue;  // parent dropped (rounding ties)
    new_index[static_cast<size_t>(node)] = tree->add(cand.token[static_cast<size_t>(node)], p < 0 ? -1 : new_index[static_cast<size_t>(p)]);
    st.node_slot.push_back(slot[static_cast<size_t>(node)]);
  }
  return Status::Ok();
}

void DraftModelDrafter::accept(int32_t seq, const TokenTree& tree, const std::vector<int32_t>& accepted) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  SeqState& st = it->second;
  int64_t keep = 0;
  for (int32_t node : accepted) {
    const int32_t s = node < static_cast<int32_t>(st.node_slot.size()) ? st.node_slot[static_cast<size_t>(node)] : -1;
    if (s < 0) break;
    kv_.copy_token(st.pages, st.committed + s, st.committed + keep);
    ++keep;
  }
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
