// Chain drafting for a batch of sequences, shared by the drafters that run a model (a draft
// model, or the target itself with fewer layers or a sparse KV window). Every round draws one
// token per growing chain from its logits row: the argmax at temperature 0, else a sample from the
// processed distribution keyed by (seed, output position), recorded in tree->q for the verifier
// (the model computes the argmax or the draw itself where it can: DraftRows below).
// A chain stops at its budget, or after a token the draft gave less than `min_confidence`
// probability (that token is still proposed: its logits are paid for, its verification is cheap).
// Then `next` runs ONE forward over the newest token of every chain still growing.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "model/forward_model.h"
#include "spec/drafter.h"

namespace sd {

struct ChainDraft {
  const DraftRequest* req = nullptr;
  TokenTree* tree = nullptr;
  int32_t budget = 0;  // tokens to draft at most
};

// What a drafting round returns per chain asked for, in order (kind): logits rows; or only each
// row's argmax, when the chains draw by argmax and need no distribution; or, for sampled chains,
// each row's draw and distribution made where the logits are (ForwardBatch::draw: a device
// model then sends back a token and q, and does not leave the sampling to the host).
enum class RowKind { kLogits, kArgmax, kDraws };
struct DraftRows {
  RowKind kind = RowKind::kLogits;
  std::vector<float> logits;    // [rows, vocab]: kLogits
  std::vector<int32_t> argmax;  // [rows]: kArgmax
  RowDraws draws;               // kDraws: configs and counters set by grow_chains, tokens and q by the forward
};

// Whether a chain's draws need each row's argmax only: greedy, no q recorded, no confidence stop.
bool argmax_suffices(const DraftRequest& req, float min_confidence);

// The rows a round of these chains needs: kArgmax when argmax suffices for every chain, kDraws
// when every chain samples, else kLogits.
RowKind chain_row_kind(const std::vector<ChainDraft>& chains, float min_confidence);

// rows->draws' configs and counters for the next draw of each of `growing`'s chains: the
// request's config keyed by draft_stream(seed), counter position + node index (the host draw's).
void prepare_draws(const std::vector<ChainDraft>& chains, const std::vector<int32_t>& growing, DraftRows* rows);

// Runs `fb` (its logit_rows set) into *rows as `kind` asks (kDraws: rows->draws prepared).
Status forward_rows(ForwardModel& model, ForwardBatch& fb, KVCache& kv, RowKind kind, DraftRows* rows);

// growing: indexes into the chains; fills *rows with one row per growing chain, in that order,
// of the kind asked when the drafter can (rows->kind says what it gave).
using NextRows = std::function<Status(const std::vector<int32_t>& growing, RowKind kind, DraftRows* rows)>;

// first: one row per chain (the distribution of its first draft token).
Status grow_chains(const std::vector<ChainDraft>& chains, int64_t vocab, float min_confidence, DraftRows first,
                   const NextRows& next);

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
