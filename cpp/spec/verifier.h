// Judging a draft tree against the target's distributions, vLLM's words: accepted tokens, then
// one recovered token (drawn from the residual after a rejection) or one bonus token (drawn
// from the target when a leaf was reached).
//
// verify_sampling is multi-draft recursive rejection sampling (SpecInfer; Yang et al. 2023,
// multi-candidate speculative decoding): at a node, each child x (drawn from q_x) is accepted
// with probability min(1, p(x) / q_x(x)); after a rejection the target residual becomes
// norm(max(0, p - q_x)). Siblings drawn i.i.d. from q, or without replacement (q_x then already
// excludes the earlier siblings), or deterministic drafts (q_x one-hot on x) are all lossless:
// the emitted tokens are distributed exactly as the target's. A chain is the one-child case
// (Leviathan et al. 2023, Chen et al. 2023). An empty tree samples the root row exactly like
// autoregressive decoding (same random number), so seeded runs agree with and without drafts
// whenever no draft is made.
#pragma once
#include <cstdint>
#include <vector>

#include "sampling/rng_streams.h"
#include "sampling/sampler.h"
#include "spec/token_tree.h"

namespace sd {

struct VerifyOutcome {
  std::vector<int32_t> accepted;  // node indexes along the accepted path, root first
  int32_t next_token = -1;        // recovered or bonus token
  bool bonus = false;             // true when the path ended at a leaf (no rejection)
};

// Temperature 0: follow the child whose token is the row's argmax. row_argmax: [1 + n].
VerifyOutcome verify_greedy(const TokenTree& tree, const int32_t* row_argmax);

// probs: [1 + n, vocab], the target's processed distribution (temperature, top-k, top-p,
// min-p) for the root row and each node row. position: index in the output of the token the
// root row decides (the random numbers are keyed by it and by seed).
VerifyOutcome verify_sampling(const TokenTree& tree, const float* probs, int64_t vocab,
                              uint64_t seed, uint64_t position, std::vector<float>* scratch);

// Lossless verification of a forward's logit rows where they were computed (on a GPU: only
// the outcomes come back, not rows x vocab logits). The rows come in consecutive groups, one per
// request: its root row, then one row per node of trees[g] (nullptr: the root row alone, which
// samples the next token as autoregressive decoding does). Group g is judged with configs[g]:
// verify_greedy at temperature 0, else verify_sampling on the processed distributions, with
// seed configs[g].seed at output index positions[g].
struct RowSampling {
  std::vector<const TokenTree*> trees;
  std::vector<SamplingConfig> configs;
  std::vector<uint64_t> positions;
  std::vector<VerifyOutcome> outcomes;  // written by the forward, one per group

  void add(const TokenTree* tree, const SamplingConfig& config, uint64_t position) {
    trees.push_back(tree);
    configs.push_back(config);
    positions.push_back(position);
  }
  int64_t num_rows() const;
  // Groups, trees and configs agree, and the groups cover `rows` logit rows exactly.
  Status validate(int64_t rows, int32_t vocab) const;
};

// RowSampling on the host: logits [rs->num_rows(), vocab]; probs and scratch are grown.
void sample_rows(const float* logits, int64_t vocab, RowSampling* rs, std::vector<float>* probs,
                 std::vector<float>* scratch);

// Scales p[vocab] to sum to 1 (the residual after a rejection); false, leaving p as is, when
// nothing is left — which only rounding causes, when the target was fully covered by q.
bool renormalize(float* p, int64_t vocab);

}  // namespace sd
