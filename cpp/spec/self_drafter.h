// Self-speculation: the target drafts for itself with a cheaper forward over its own weights and
// its own paged KV cache (nothing copied), and verifies the chain in full.
//  - layer skip: the draft runs only some decoder layers (the first L, or any ascending set),
//    then the final norm and LM head (LayerSkip, Draft & Verify);
//  - sparse KV (MagicDec): the draft runs every layer but attends only the attention-sink pages
//    and the most recent pages (kv/kv_window.h), so its cost stops growing with the context.
// The draft writes scratch KV past the committed tokens for the chain it grows and truncates it
// away; verification rewrites those slots with the full model. Chains only; the chains of a
// batch grow together, one draft forward per round.
#pragma once
#include <vector>

#include "model/forward_model.h"
#include "spec/chain_drafting.h"
#include "spec/drafter.h"

namespace sd {

struct SelfDraftOptions {
  int32_t num_tokens = 5;
  std::vector<int32_t> layers;  // layers the draft runs, ascending (empty: all)
  KVWindow window;              // inactive: dense attention
  float min_confidence = 0;     // stop a chain after a token drawn below it
};

class SelfDrafter : public Drafter {
 public:
  // The target and its cache outlive the drafter (the engine owns all three).
  SelfDrafter(ForwardModel* target, KVCache* kv, const SelfDraftOptions& o) : model_(target), kv_(kv), opts_(o) {}
  static Status validate(const SelfDraftOptions& o, const ModelConfig& target);

  Status propose(int32_t seq, const DraftRequest& req, TokenTree* tree) override {
    return propose_batch({DraftJob{seq, req, tree}});
  }
  Status propose_batch(const std::vector<DraftJob>& jobs) override;
  int32_t max_nodes() const override { return opts_.num_tokens; }
  bool proposes_chains() const override { return true; }
  int64_t weight_bytes_per_token() const override { return model_->weight_bytes_per_token(opts_.layers); }
  bool has_distributions() const override { return true; }
  const SelfDraftOptions& options() const { return opts_; }

 private:
  // One draft forward over one token per chain (its root or its newest draft).
  Status feed(const std::vector<ChainDraft>& chains, const std::vector<SeqPages*>& pages,
              const std::vector<int64_t>& base, const std::vector<int32_t>& growing, RowKind kind,
              DraftRows* rows);

  ForwardModel* model_;
  KVCache* kv_;
  SelfDraftOptions opts_;
};

}  // namespace sd
