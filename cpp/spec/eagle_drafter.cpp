#include "spec/eagle_drafter.h"

#include <algorithm>
#include <cmath>

namespace sd {

EagleDrafter::EagleDrafter(std::unique_ptr<Eagle3Head> head, const ForwardModel* target, int32_t page_size,
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

Status EagleDrafter::catch_up(SeqState& st, const std::vector<int32_t>& ctx, bool* ready, std::vector<float>* logits,
                              std::vector<float>* h) {
  *ready = false;
  const int64_t root = static_cast<int64_t>(ctx.size()) - 1;
  st.pages.truncate(kv_.allocator(), st.committed);
  const int64_t pending = static_cast<int64_t>(st.pending.size()) / feature_width_;
  const int64_t next = st.first + st.committed;  // token index of the first pending entry
  if (pending == 0 || next + pending != root) return Status::Ok();  // features up to the root's parent missing
  // Entry t pairs the features after token t with token t + 1, at position t.
  EagleBatch b;
  for (int64_t t = next; t < root; ++t) {
    b.token_ids.push_back(ctx[static_cast<size_t>(t + 1)]);
    b.positions.push_back(static_cast<int32_t>(t));
  }
  SD_RETURN_IF_ERROR(st.pages.append(kv_.allocator(), pending));
  b.qo_indptr = {0, static_cast<int32_t>(pending)};
  b.seqs = {&st.pages};
  b.features = st.pending.data();
  b.logit_rows = {static_cast<int32_t>(pending - 1)};
  const int64_t H = head_->config().hidden_size;
  std::vector<float> hidden(static_cast<size_t>(pending * H));
  logits->resize(static_cast<size_t>(head_->config().draft_vocab_size));
  SD_RETURN_IF_ERROR(head_->forward(b, head_->has_embeddings() ? nullptr : target_->host_embedding(), kv_, logits->data(),
                                    hidden.data()));
  st.committed += pending;
  st.pending.clear();
  h->assign(hidden.end() - H, hidden.end());
  *ready = true;
  return Status::Ok();
}

void EagleDrafter::spread(const std::vector<float>& draft_logits, int64_t rows, std::vector<float>* out) const {
  const int64_t V = head_->config().vocab_size, Vd = head_->config().draft_vocab_size;
  const std::vector<int32_t>& d2t = head_->draft_to_target();
  out->assign(static_cast<size_t>(rows * V), -INFINITY);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < Vd; ++d)
      (*out)[static_cast<size_t>(r * V + d2t[static_cast<size_t>(d)])] = draft_logits[static_cast<size_t>(r * Vd + d)];
}

Status EagleDrafter::propose_batch(const std::vector<DraftJob>& jobs) {
  std::vector<ChainDraft> chains;
  std::vector<SeqState*> states;
  std::vector<int64_t> roots;
  std::vector<std::vector<float>> h;
  std::vector<float> first;  // draft-vocabulary logits of each chain's root entry
  std::vector<std::vector<float>> tree_roots;  // ... of each tree's
  std::vector<TreeJob> trees;
  std::vector<std::vector<int32_t>> tree_slots(jobs.size());
  tree_roots.reserve(jobs.size());
  for (const DraftJob& j : jobs) {
    auto it = seqs_.find(j.seq);
    const int32_t budget = std::min(j.req.max_nodes, max_nodes());
    if (it == seqs_.end() || it->second.first < 0 || budget <= 0) continue;
    bool ready = false;
    std::vector<float> logits, hj;
    const Status s = catch_up(it->second, *j.req.context, &ready, &logits, &hj);
    if (s.code() == StatusCode::kOutOfBlocks) {  // the head's cache is full: forget this sequence until new features come
      it->second.pages.release(kv_.allocator());
      seqs_.erase(it);
      continue;
    }
    SD_RETURN_IF_ERROR(s);
    if (!ready) continue;
    states.push_back(&it->second);
    roots.push_back(static_cast<int64_t>(j.req.context->size()) - 1);
    h.push_back(std::move(hj));
    if (!proposes_chains()) {
      tree_roots.push_back(std::move(logits));
      trees.push_back(TreeJob{budget, tree_roots.back().data(), j.tree, &tree_slots[trees.size()], j.req.tree_sizing});
      continue;
    }
    chains.push_back(ChainDraft{&j.req, j.tree, budget});
    first.insert(first.end(), logits.begin(), logits.end());
  }
  if (!trees.empty()) {
    const Status s = grow_trees(states, roots, h, trees);
    if (s.code() != StatusCode::kOutOfBlocks) return s;
    for (SeqState* st : states) st->pages.truncate(kv_.allocator(), st->committed);  // no room: no drafts this step
    return Status::Ok();
  }
  if (chains.empty()) return Status::Ok();
  DraftRows rows;  // the head runs on the CPU: full rows (whose argmax is the host's to find)
  spread(first, static_cast<int64_t>(chains.size()), &rows.logits);
  const Status s = grow_chains(chains, head_->config().vocab_size, opts_.min_confidence, std::move(rows),
                               [&](const std::vector<int32_t>& growing, RowKind, DraftRows* out) {
                                 out->kind = RowKind::kLogits;
                                 return feed(chains, states, roots, h, growing, &out->logits);
                               });
  return s.code() == StatusCode::kOutOfBlocks ? Status::Ok() : s;  // no room: propose what we have
}

Status EagleDrafter::feed(const std::vector<ChainDraft>& chains, const std::vector<SeqState*>& states,
                          const std::vector<int64_t>& roots, std::vector<std::vector<float>>& h,
                          const std::vector<int32_t>& growing, std::vector<float>* logits) {
  const int64_t H = head_->config().hidden_size;
  EagleBatch b;
  b.qo_indptr.push_back(0);
  std::vector<float> hidden_in;
  for (int32_t c : growing) {
    const TokenTree& t = *chains[static_cast<size_t>(c)].tree;
    SD_RETURN_IF_ERROR(states[static_cast<size_t>(c)]->pages.append(kv_.allocator(), 1));
    b.token_ids.push_back(t.token.back());
    // Draft j (depth j) sits at the root's position + j - 1: the root's own entry is at root - 1.
    b.positions.push_back(static_cast<int32_t>(roots[static_cast<size_t>(c)] + t.depth.back() - 1));
    b.logit_rows.push_back(static_cast<int32_t>(b.seqs.size()));
    b.qo_indptr.push_back(static_cast<int32_t>(b.token_ids.size()));
    b.seqs.push_back(&states[static_cast<size_t>(c)]->pages);
    hidden_in.insert(hidden_in.end(), h[static_cast<size_t>(c)].begin(), h[static_cast<size_t>(c)].end());
  }
  b.hidden = hidden_in.data();
  std::vector<float> draft_logits(growing.size() * static_cast<size_t>(head_->config().draft_vocab_size));
  std::vector<float> hidden_out(growing.size() * static_cast<size_t>(H));
  SD_RETURN_IF_ERROR(head_->forward(b, head_->has_embeddings() ? nullptr : target_->host_embedding(), kv_,
                                    draft_logits.data(), hidden_out.data()));
  for (size_t r = 0; r < growing.size(); ++r)
    h[static_cast<size_t>(growing[r])].assign(hidden_out.begin() + static_cast<int64_t>(r) * H,
                                              hidden_out.begin() + static_cast<int64_t>(r + 1) * H);
  spread(draft_logits, static_cast<int64_t>(growing.size()), logits);
  return Status::Ok();
}

Status EagleDrafter::grow_trees(const std::vector<SeqState*>& states, const std::vector<int64_t>& roots,
                                const std::vector<std::vector<float>>& root_h, const std::vector<TreeJob>& trees) {
  const int64_t H = head_->config().hidden_size, Vd = head_->config().draft_vocab_size;
  const std::vector<int32_t>& d2t = head_->draft_to_target();
  std::vector<std::vector<float>> slot_h(trees.size());  // per tree: h' of each run slot
  std::vector<TokenTree> draft_ids(trees.size());        // per tree: nodes as draft-vocabulary ids
  std::vector<TreeJob> jobs = trees;
  for (size_t i = 0; i < jobs.size(); ++i) jobs[i].out = &draft_ids[i];
  auto run = [&](const std::vector<int32_t>& active, const std::vector<TreeRound>& rounds,
                 std::vector<float>* logits) -> Status {
    EagleBatch b;
    b.qo_indptr.push_back(0);
    b.mask_indptr.push_back(0);
    std::vector<float> hidden_in;
    for (size_t a = 0; a < active.size(); ++a) {
      const size_t i = static_cast<size_t>(active[a]);
      const TreeRound& r = rounds[a];
      SeqState& st = *states[i];
      SD_RETURN_IF_ERROR(st.pages.append(kv_.allocator(), r.run->size() - r.first));
      for (int32_t s = r.first; s < r.run->size(); ++s) {
        b.token_ids.push_back(d2t[static_cast<size_t>(r.run->token[static_cast<size_t>(s)])]);
        b.positions.push_back(static_cast<int32_t>(roots[i] + r.run->depth[static_cast<size_t>(s)] - 1));
        b.logit_rows.push_back(static_cast<int32_t>(b.logit_rows.size()));
        const int32_t p = r.run->parent[static_cast<size_t>(s)];
        const float* hp = p < 0 ? root_h[i].data() : slot_h[i].data() + static_cast<int64_t>(p) * H;
        hidden_in.insert(hidden_in.end(), hp, hp + H);
      }
      r.run->append_node_mask(st.committed, r.first, r.run->size(), &b.custom_mask);
      b.mask_indptr.push_back(static_cast<int64_t>(b.custom_mask.size()));
      b.qo_indptr.push_back(static_cast<int32_t>(b.token_ids.size()));
      b.seqs.push_back(&st.pages);
    }
    b.hidden = hidden_in.data();
    const size_t rows = b.token_ids.size();
    logits->resize(rows * static_cast<size_t>(Vd));
    std::vector<float> hidden_out(rows * static_cast<size_t>(H));
    SD_RETURN_IF_ERROR(head_->forward(b, head_->has_embeddings() ? nullptr : target_->host_embedding(), kv_,
                                      logits->data(), hidden_out.data()));
    const float* out = hidden_out.data();
    for (size_t a = 0; a < active.size(); ++a) {  // append each tree's new h' rows, in slot order
      std::vector<float>& sh = slot_h[static_cast<size_t>(active[a])];
      const int64_t n = (rounds[a].run->size() - rounds[a].first) * H;
      sh.insert(sh.end(), out, out + n);
      out += n;
    }
    return Status::Ok();
  };
  SD_RETURN_IF_ERROR(sd::grow_trees(opts_, Vd, jobs, run));
  for (size_t i = 0; i < trees.size(); ++i)
    for (int32_t n = 0; n < draft_ids[i].size(); ++n)
      trees[i].out->add(d2t[static_cast<size_t>(draft_ids[i].token[static_cast<size_t>(n)])],
                        draft_ids[i].parent[static_cast<size_t>(n)]);
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
