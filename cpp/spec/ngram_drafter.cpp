#include "spec/ngram_drafter.h"

#include <algorithm>

namespace sd {

Status NgramDrafter::propose(int32_t, const DraftRequest& req, TokenTree* tree) {
  const std::vector<int32_t>& ctx = *req.context;
  const int64_t len = static_cast<int64_t>(ctx.size());
  const int32_t budget = std::min(req.max_nodes, max_nodes());
  for (int32_t n = std::min<int64_t>(opts_.max_n, len - 1); n >= opts_.min_n && budget > 0; --n) {
    int32_t branches = 0;
    // Most recent occurrence first; the suffix itself (ending at len) is excluded.
    for (int64_t end = len - 1; end >= n && branches < opts_.max_branches; --end) {
      if (!std::equal(ctx.end() - n, ctx.end(), ctx.begin() + (end - n))) continue;
      // Follow ctx[end ...] into the trie, adding what is new.
      int32_t node = -1;
      bool added = false;
      for (int64_t j = end; j < len && j < end + opts_.num_tokens && tree->size() < budget; ++j) {
        int32_t next = -1;
        for (int32_t c : tree->children(node))
          if (tree->token[static_cast<size_t>(c)] == ctx[static_cast<size_t>(j)]) next = c;
        if (next < 0) {
          next = tree->add(ctx[static_cast<size_t>(j)], node);
          added = true;
        }
        node = next;
      }
      if (added) ++branches;
    }
    if (branches > 0) break;
  }
  return Status::Ok();
}

}  // namespace sd
