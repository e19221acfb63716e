// Chain drafting for a batch of sequences, shared by the drafters that run a model (a draft
// model, or the target itself with fewer layers or a sparse KV window). Every round draws one
// token per growing chain from its logits row: the argmax at temperature 0, else a sample from the
// processed distribution keyed by (seed, output position), recorded in tree->q for the verifier.
// A chain stops at its budget, or after a token the draft gave less than `min_confidence`
// probability (that token is still proposed: its logits are paid for, its verification is cheap).
// Then `next` runs ONE forward over the newest token of every chain still growing.
#pragma once
#include <algorithm>
#include <cmath>
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

// log-softmax of a logits row, normalizer computed once: log_prob(x) for any entry x.
struct LogSoftmax {
  LogSoftmax(const float* l, int64_t n) : logits(l) {
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, logits[i]);
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(logits[i] - mx));
    log_sum = std::log(s);
  }
  float log_prob(int32_t x) const { return static_cast<float>(logits[x] - mx - log_sum); }
  const float* logits;
  float mx = -INFINITY;
  double log_sum = 0;
};

}  // namespace sd
