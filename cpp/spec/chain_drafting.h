// Chain drafting for a batch of sequences, shared by the drafters that run a model (a draft
// model, or the target itself with fewer layers or a sparse KV window). Every round draws one
// token per growing chain from its logits row: the argmax at temperature 0, else a sample from the
// processed distribution keyed by (seed, output position), recorded in tree->q for the verifier.
// A chain stops at its budget, or after a token the draft gave less than `min_confidence`
// probability (that token is still proposed: its logits are paid for, its verification is cheap).
// Then `next` runs ONE forward over the newest token of every chain still growing.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "spec/drafter.h"

namespace sd {

struct ChainDraft {
  const DraftRequest* req = nullptr;
  TokenTree* tree = nullptr;
  int32_t budget = 0;  // tokens to draft at most
};

// growing: indexes into the chains; fills *logits with one row per growing chain, in that order.
using NextLogits = std::function<Status(const std::vector<int32_t>& growing, std::vector<float>* logits)>;

// logits: one row per chain (the distribution of its first draft token).
Status grow_chains(const std::vector<ChainDraft>& chains, int64_t vocab, float min_confidence,
                   std::vector<float> logits, const NextLogits& next);

// The draft's probability of `token` in a logits row at temperature 1 (one softmax normalizer).
float softmax_prob(const float* logits, int64_t vocab, int32_t token);

}  // namespace sd
