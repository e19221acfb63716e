// How drafts are made. A Drafter proposes a TokenTree continuing one sequence; the engine
// verifies it in one target pass and tells the drafter what was accepted, so that any state
// the drafter keeps (a draft model's KV cache) rolls back to the committed tokens.
#pragma once
#include <cstdint>
#include <vector>

#include "kv/seq_pages.h"
#include "sampling/sampler.h"
#include "spec/token_tree.h"
#include "spec/tree_drafting.h"

namespace sd {

struct DraftRequest {
  const std::vector<int32_t>* context = nullptr;  // committed tokens; the last is the root
  const SamplingConfig* sampling = nullptr;
  uint64_t position = 0;  // output index of the token after the root (seeds draft sampling)
  int32_t max_nodes = 0;  // budget for this step (context length and KV permitting)
  // Record the draft's distribution of every drafted node in tree->q even when drafting
  // greedily (then the softmax at temperature 1; the drafts stay the argmax). Speculative
  // cascades need q for their deferral rule. Chains from a draft model only.
  bool record_q = false;
  // The target's pages of this sequence (its committed tokens but the root). A self-drafter runs
  // the target on them: it may write scratch KV past them and leaves them as it found them.
  SeqPages* pages = nullptr;
  // Adaptive speculation: the cost model's sizing of a dynamic tree (null: keep the budget).
  const TreeSizing* tree_sizing = nullptr;
};

// One sequence's part of a batched proposal.
struct DraftJob {
  int32_t seq = 0;
  DraftRequest req;
  TokenTree* tree = nullptr;
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  virtual Status propose(int32_t seq, const DraftRequest& req, TokenTree* tree) = 0;
  // Proposals for several sequences; drafters that batch their forwards across sequences
  // override it.
  virtual Status propose_batch(const std::vector<DraftJob>& jobs) {
    for (const DraftJob& j : jobs) SD_RETURN_IF_ERROR(propose(j.seq, j.req, j.tree));
    return Status::Ok();
  }
  // The target accepted these nodes (a root-to-node path) of the last proposal.
  virtual void accept(int32_t seq, const TokenTree& tree, const std::vector<int32_t>& accepted) {}
  // The sequence is finished or preempted: free what it holds. `context` is its committed
  // tokens (a drafter with a KV cache may keep their pages in its prefix cache).
  virtual void release(int32_t seq, const std::vector<int32_t>& context) {}
  // Largest tree this drafter proposes (the engine reserves KV for it).
  virtual int32_t max_nodes() const = 0;
  // Whether every proposal is a chain (then the engine may choose its length per step).
  virtual bool proposes_chains() const = 0;
  // Weight bytes one drafted token reads (0 for drafters without a model).
  virtual int64_t weight_bytes_per_token() const { return 0; }
  // Whether drafts come with the draft's distributions (record_q works; cascades need them).
  virtual bool has_distributions() const { return false; }
  // Target features this drafter reads (EAGLE-3: the hidden states after these decoder layers);
  // empty: none. The engine then captures them in every prefill and verification forward and
  // reports the committed tokens' rows through observe_features.
  virtual std::vector<int32_t> feature_layers() const { return {}; }
  // Features of n consecutive committed tokens of the sequence, token indexes [first, first + n),
  // as [n x feature_layers().size() x hidden] floats.
  virtual void observe_features(int32_t seq, int64_t first, const float* rows, int64_t n) {}
};

}  // namespace sd
