// Feature-level drafting (EAGLE-3): a one-layer head reads the target's own hidden states (three
// layers' outputs, captured in the target's prefill and verification forwards) and drafts a
// chain from its own hidden states (spec/chain_drafting.h: argmax, or sampled with q recorded;
// the head's draft-vocabulary logits are spread over the target's vocabulary, -inf elsewhere).
// The chains of a batch grow together, one head forward per round; trees (EAGLE-2) likewise,
// one head forward per level for the whole batch, under tree masks over the head's KV. Entry t of the head pairs the features after token t
// with token t + 1 at RoPE position t; the entry paired with the root predicts the first draft.
// The head keeps a one-layer paged KV cache per sequence; entries made from real features are
// kept, the chain's scratch entries are truncated at the next step. A prefix-cache hit skips the
// target's forward over the cached tokens, so their features do not exist: the head then starts
// at the first computed token (still lossless; acceptance on that request may drop).
#pragma once
#include <map>
#include <memory>

#include "model/eagle_head.h"
#include "model/forward_model.h"
#include "spec/chain_drafting.h"
#include "spec/drafter.h"
#include "spec/tree_drafting.h"

namespace sd {

// A chain (default), a static tree or a dynamic EAGLE-2 tree grown from the head's draft-vocabulary
// logits (spec/tree_drafting.h).
struct EagleOptions : DraftShape {};

class EagleDrafter : public Drafter {
 public:
  // `target` outlives the drafter (its embedding table is the head's input embedding) and
  // keeps that table in host memory (Engine::attach_eagle_head checks).
  EagleDrafter(std::unique_ptr<Eagle3Head> head, const ForwardModel* target, int32_t page_size, int32_t num_blocks,
               const EagleOptions& o);
  Status propose(int32_t seq, const DraftRequest& req, TokenTree* tree) override {
    return propose_batch({DraftJob{seq, req, tree}});
  }
  Status propose_batch(const std::vector<DraftJob>& jobs) override;
  void accept(int32_t seq, const TokenTree& tree, const std::vector<int32_t>& accepted) override;
  void release(int32_t seq, const std::vector<int32_t>& context) override;
  int32_t max_nodes() const override { return opts_.size(); }
  bool proposes_chains() const override { return opts_.chains(); }
  int64_t weight_bytes_per_token() const override;
  bool has_distributions() const override { return true; }
  std::vector<int32_t> feature_layers() const override { return head_->config().aux_layer_ids; }
  void observe_features(int32_t seq, int64_t first, const float* rows, int64_t n) override;
  const Eagle3Head& head() const { return *head_; }

 private:
  struct SeqState {
    explicit SeqState(int32_t page_size) : pages(page_size) {}
    SeqPages pages;              // the head's KV: entries [0, committed) are real, later ones scratch
    int64_t first = -1;          // token index of entry 0
    int64_t committed = 0;       // entries made from real features
    std::vector<float> pending;  // features of tokens [first + committed, ...) not yet run
  };
  // Runs the pending entries of `st` (the root's is the last); its logits and h'. False when the
  // features do not reach the root's parent (then it does not draft).
  Status catch_up(SeqState& st, const std::vector<int32_t>& ctx, bool* ready, std::vector<float>* logits,
                  std::vector<float>* h);
  // One head forward over one entry per chain: (h' of its last entry, its newest draft token).
  Status feed(const std::vector<ChainDraft>& chains, const std::vector<SeqState*>& states,
              const std::vector<int64_t>& roots, std::vector<std::vector<float>>& h,
              const std::vector<int32_t>& growing, std::vector<float>* logits);
  // The trees of a batch, one head forward per level for all of them (spec/tree_drafting.h).
  // Nodes grow over draft-vocabulary ids (mapped to target ids when embedded, and in the jobs'
  // outputs); a node's input h is its parent's h' (the root's: root_h).
  Status grow_trees(const std::vector<SeqState*>& states, const std::vector<int64_t>& roots,
                    const std::vector<std::vector<float>>& root_h, const std::vector<TreeJob>& trees);
  // Draft-vocabulary logits rows to target-vocabulary rows (-inf outside the draft vocabulary).
  void spread(const std::vector<float>& draft_logits, int64_t rows, std::vector<float>* out) const;

  std::unique_ptr<Eagle3Head> head_;
  const ForwardModel* target_;
  KVCache kv_;
  EagleOptions opts_;
  int64_t feature_width_;  // 3 x target hidden
  std::map<int32_t, SeqState> seqs_;
};

}  // namespace sd
