// A tree of draft tokens hanging off the root (the last committed token, not yet in the KV
// cache). A chain is a tree whose nodes each have one child. Nodes are stored parent-first
// (every node after its parent), so a forward can process them in index order.
#pragma once
#include <cstdint>
#include <vector>

#include "core/status.h"

namespace sd {

struct TokenTree {
  std::vector<int32_t> token;   // node i's token
  std::vector<int32_t> parent;  // node i's parent, -1 for a child of the root
  std::vector<int32_t> depth;   // 1 for a child of the root
  // Optional draft distributions: q[i * vocab ...] is the distribution node i's token was drawn
  // from. Empty: deterministic drafts (argmax, top-k, n-gram), verified as one-hot q.
  std::vector<float> q;
  // Optional, from tree drafters: node i's path probability under the draft (the product of
  // its and its ancestors' draft probabilities), the drafter's estimate that it is accepted.
  std::vector<float> confidence;
  // Siblings drawn from q without replacement (each from q with the earlier siblings removed).
  bool without_replacement = false;

  int32_t size() const { return static_cast<int32_t>(token.size()); }
  bool empty() const { return token.empty(); }
  int32_t max_depth() const;
  // Appends a node; returns its index.
  int32_t add(int32_t tok, int32_t parent_node);
  // A tree from parallel lists (parents[i] = -1 for a child of the root, else an earlier node).
  static Status from_parents(const std::vector<int32_t>& tokens, const std::vector<int32_t>& parents,
                             TokenTree* out);
  // Children of `node` (-1: the root), in index order.
  std::vector<int32_t> children(int32_t node) const;
  // Checks parent-first order and token ranges.
  Status validate(int32_t vocab) const;

  // The mask for verifying root + nodes as qo rows over kv_len = prefix + 1 + size() slots,
  // where the root sits at slot `prefix` and node i at slot prefix + 1 + i: each row sees the
  // prefix, the root, its ancestors and itself. Row-major (1 + size()) x kv_len, appended to *out.
  void append_mask(int64_t prefix, std::vector<uint8_t>* out) const;

  // Rows for nodes [first, end) only, when the root is already in the KV cache (a drafter's
  // own cache): kv_len = prefix + end, node i at slot prefix + i; each row sees the prefix
  // (root included), its ancestors and itself. Row-major (end - first) x kv_len, appended.
  void append_node_mask(int64_t prefix, int32_t first, int32_t end, std::vector<uint8_t>* out) const;
};

// Tree shapes from a list of "tree choices" (Medusa/EAGLE): each choice is a path of child
// ranks from the root, e.g. {{0}, {1}, {0, 0}} = the top-2 children of the root and the top
// child of the first. Every prefix of a choice must itself be a choice.
Status validate_tree_choices(const std::vector<std::vector<int32_t>>& choices, int32_t max_nodes);

}  // namespace sd
