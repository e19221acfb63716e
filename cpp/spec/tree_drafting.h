// Tree drafting, shared by the drafters that run a model (a draft model, an EAGLE head). The
// tree grows level by level: each round runs ONE forward over the level's frontier nodes, then
// expands them with their top-ranked children.
//  - Static tree (Medusa/EAGLE tree choices): node n gets the children its choices name.
//  - Dynamic tree (EAGLE-2): each level expands the top_k nodes of highest cumulative draft
//    log-probability with their top_k children; at the end the max_nodes nodes of highest
//    cumulative log-probability are kept (ancestor-closed: a child never outscores its parent).
// Children are the draft's top-ranked tokens, deterministic: trees are verified with one-hot q.
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

// The nodes run so far, in run order (node s of `run` sits in run slot s; parents are slots, -1
// the root). One round runs slots [first, run.size()): each sees the context, the root, its
// run ancestors and itself (TokenTree::append_node_mask gives that mask).
struct TreeRound {
  const TokenTree& run;
  int32_t first;
};
// Fills *logits with one row (vocab floats) per slot in [first, run.size()), in order.
using RunRound = std::function<Status(const TreeRound& round, std::vector<float>* logits)>;

// Grows a tree of at most `budget` nodes from the root's logits. *out receives the tree,
// *slots each kept node's run slot (-1 for a leaf that was never run).
Status grow_tree(const DraftShape& shape, int32_t budget, int64_t vocab, const float* root_logits,
                 const RunRound& run_round, TokenTree* out, std::vector<int32_t>* slots);

}  // namespace sd
