// Drafts from a second, smaller model with its own paged KV cache. Shapes: a chain of up to
// num_tokens (spec/chain_drafting.h), a static tree from tree choices, or a dynamic tree
// (spec/tree_drafting.h; the chains or trees of a batch grow in one draft forward per round;
// EAGLE-2:
// expand the top_k children of the top_k most probable nodes per level, keep the max_nodes
// nodes of highest cumulative draft probability). Tree children are the draft's top-ranked
// tokens, deterministic, so trees are verified with one-hot q. Finished sequences leave their
// pages in the draft's own prefix cache, evicted when its blocks run low.
#pragma once
#include <map>
#include <memory>
#include <vector>

#include "kv/kv_cache.h"
#include "kv/radix_cache.h"
#include "model/forward_model.h"
#include "spec/chain_drafting.h"
#include "spec/drafter.h"
#include "spec/tree_drafting.h"

namespace sd {

struct DraftModelOptions : DraftShape {
  // Non-empty: the token ids (sorted, distinct) the draft's LM head keeps (FR-Spec's reduced
  // draft vocabulary: a smaller head read per drafted token; drafts stay inside it, lossless).
  std::vector<int32_t> vocab;
  int32_t prefill_chunk = 512;
  bool prefix_caching = true;  // keep finished sequences' pages in the draft's own prefix cache
};

class DraftModelDrafter : public Drafter {
 public:
  DraftModelDrafter(std::unique_ptr<ForwardModel> model, const KVCacheConfig& kv, const DraftModelOptions& o);
  Status propose(int32_t seq, const DraftRequest& req, TokenTree* tree) override;
  Status propose_batch(const std::vector<DraftJob>& jobs) override;
  void accept(int32_t seq, const TokenTree& tree, const std::vector<int32_t>& accepted) override;
  void release(int32_t seq, const std::vector<int32_t>& context) override;
  int32_t max_nodes() const override { return opts_.size(); }
  bool proposes_chains() const override { return opts_.chains(); }
  int64_t weight_bytes_per_token() const override { return model_->weight_bytes_per_token(); }
  bool has_distributions() const override { return true; }
  const ForwardModel& model() const { return *model_; }
  KVCache& kv_cache() { return kv_; }
  const RadixCache* prefix_cache() const { return prefix_.get(); }

 private:
  struct SeqState {
    explicit SeqState(int32_t page_size) : pages(page_size) {}
    SeqPages pages;
    int64_t committed = 0;           // context tokens held in the cache (root included)
    RadixCache::NodeId cache_node = RadixCache::kRoot;  // locked: the shared prefix it started from
    std::vector<int32_t> node_slot;  // per node of the last tree: slot after `committed`, or -1
  };
  // Appends tokens to the sequence's cache and runs them; the rows asked for into *out, of `kind`.
  Status feed(SeqState& st, const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions,
              const std::vector<uint8_t>* mask, const std::vector<int32_t>& rows, RowKind kind, DraftRows* out);
  // A new sequence starts from the longest cached prefix of its context.
  SeqState& start(int32_t seq, const std::vector<int32_t>& ctx);
  // Runs the context the cache lacks; *root: the root's row.
  Status catch_up(SeqState& st, const std::vector<int32_t>& ctx, RowKind kind, DraftRows* root);
  // One draft forward over the newest token of each growing chain.
  Status feed_chains(const std::vector<ChainDraft>& chains, const std::vector<SeqState*>& states,
                     const std::vector<int32_t>& growing, RowKind kind, DraftRows* rows);
  // One draft forward over a round of several sequences' trees (spec/tree_drafting.h).
  Status feed_tree_rounds(const std::vector<SeqState*>& states, const std::vector<int32_t>& active,
                          const std::vector<TreeRound>& rounds, std::vector<float>* logits);

  std::unique_ptr<ForwardModel> model_;
  KVCache kv_;
  std::unique_ptr<RadixCache> prefix_;  // over kv_'s blocks; null when prefix caching is off
  DraftModelOptions opts_;
  std::map<int32_t, SeqState> seqs_;
  std::vector<float> scratch_;
};

}  // namespace sd
