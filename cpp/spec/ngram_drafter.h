// Prompt lookup: the longest recent suffix (n from max_n down to min_n) that also occurs earlier
// in the prompt or the generated text proposes the tokens that followed it; several earlier
// occurrences with different continuations become branches (merged into a trie). Drafts are
// deterministic, so they are verified with one-hot q.
#pragma once
#include "spec/drafter.h"

namespace sd {

struct NgramOptions {
  int32_t min_n = 1;
  int32_t max_n = 4;
  int32_t num_tokens = 5;    // tokens per branch
  int32_t max_branches = 1;  // 1: a chain
};

class NgramDrafter : public Drafter {
 public:
  explicit NgramDrafter(const NgramOptions& o) : opts_(o) {}
  Status propose(int32_t seq, const DraftRequest& req, TokenTree* tree) override;
  int32_t max_nodes() const override { return opts_.num_tokens * opts_.max_branches; }
  bool proposes_chains() const override { return opts_.max_branches == 1; }

 private:
  NgramOptions opts_;
};

}  // namespace sd
