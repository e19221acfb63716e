// Tree drafting, shared by the drafters that run a model (a draft model, an EAGLE head). The
// tree grows level by level: each round runs ONE forward over the level's frontier nodes, then
// expands them with their top-ranked children.
//  - Static tree (Medusa/EAGLE tree choices): node n gets the children its choices name.
//  - Dynamic tree (EAGLE-2): each level expands the top_k nodes of highest cumulative draft
//    log-probability with their top_k children; at the end the max_nodes nodes of highest
//    cumulative log-probability are kept (ancestor-closed: a child never outscores its parent).
// Children are the draft's top-ranked tokens, deterministic: trees are verified with one-hot q.
// Each kept node's path probability goes to TokenTree::confidence. With a TreeSizing (adaptive
// speculation) a dynamic tree keeps the n <= budget best nodes that the cost model expects to
// commit the most tokens per second, not always the budget, and each level expands only frontier
// nodes among the ones it would keep if growth stopped there (so drafting shrinks with the tree).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "spec/token_tree.h"

namespace sd {

// How a model drafter shapes its proposals: a chain of num_tokens (the default), a static tree
// (tree_choices) or a dynamic tree (top_k > 0: num_tokens levels, max_nodes nodes kept).
struct DraftShape {
  int32_t num_tokens = 5;                          // chain length; tree depth
  std::vector<std::vector<int32_t>> tree_choices;  // static tree (non-empty: used)
  int32_t top_k = 0;                               // dynamic tree when > 0
  int32_t max_nodes = 0;                           // dynamic tree size
  float min_confidence = 0;                        // chains: stop after a token drawn below it

  bool is_static() const { return !tree_choices.empty(); }
  bool chains() const { return !is_static() && top_k <= 0; }
  // Nodes of the largest proposal.
  int32_t size() const {
    return is_static() ? static_cast<int32_t>(tree_choices.size()) : top_k > 0 ? max_nodes : num_tokens;
  }
};

// num_tokens >= 1, tree choices well formed, a dynamic tree's max_nodes in [1, 256].
Status validate_draft_shape(const DraftShape& shape);

// The nodes of one tree run so far, in run order (node s of `run` sits in run slot s; parents
// are slots, -1 the root). A round runs slots [first, run->size()): each sees the context, the
// root, its run ancestors and itself (TokenTree::append_node_mask gives that mask).
struct TreeRound {
  const TokenTree* run = nullptr;
  int32_t first = 0;
};

// The cost model's view of one sequence's tree (spec/chain_length_policy.h).
struct TreeSizing {
  std::vector<double> pass_seconds;  // [n]: a pass's time with n kept nodes, n = 0 .. max
  double confidence_scale = 1.0;     // measured accepted tokens / predicted (path probabilities)
};

// The n in [1, min(budget, pass_seconds.size() - 1)] maximizing
// (1 + scale x (confidence[0] + ... + confidence[n - 1])) / pass_seconds[n]; confidence is sorted
// best first. Without costs (pass_seconds of size < 2): the budget.
int32_t best_tree_size(const std::vector<float>& confidence, const TreeSizing& sizing, int32_t budget);

// One sequence's tree: its node budget and root logits (vocab floats); receives the kept tree
// in *out and each kept node's run slot in *slots (-1 for a leaf that was never run). sizing:
// adaptive dynamic trees only (null: keep the budget).
struct TreeJob {
  int32_t budget = 0;
  const float* root_logits = nullptr;
  TokenTree* out = nullptr;
  std::vector<int32_t>* slots = nullptr;
  const TreeSizing* sizing = nullptr;
};

// Runs one round of several trees in ONE forward: active[i] indexes the jobs, rounds[i] is its
// round. Fills *logits with one row (vocab floats) per run node, tree after tree, in slot order.
using RunRounds = std::function<Status(const std::vector<int32_t>& active, const std::vector<TreeRound>& rounds,
                                       std::vector<float>* logits)>;

// Grows the trees of a batch together, level by level. On an error nothing is written to the
// jobs' outputs.
Status grow_trees(const DraftShape& shape, int64_t vocab, const std::vector<TreeJob>& jobs, const RunRounds& run);

}  // namespace sd
