// Lossy acceptance rules: unlike spec/verifier.h these do NOT reproduce the target's
// distribution; they trade quality for longer accepted runs. "lossless" (verifier.h) stays the
// default; these are opt-in (SpeculativeConfig(acceptance=...)).
//
// Typical acceptance (Medusa, Cai et al. 2024): a drafted token x at a node is accepted when
//   p(x) > min(epsilon, delta * exp(-H(p)))
// with p the target's distribution at that position (its processed distribution when sampling,
// the softmax at temperature 1 when greedy) and H(p) its entropy (nats). The tree is walked
// from the root taking the first accepted child in index order; the token after the accepted
// path is the row's argmax at T = 0, else drawn from p of that row with the same Philox key as
// verify_sampling's recovered/bonus token (seed, output position).
//
// Speculative cascades (Narasimhan et al. 2024, "Faster Cascades via Speculative Decoding"),
// chains only: at drafted position i a deferral rule delta_i in {0, 1} picks between the
// drafter's q_i and the target's p_i, pi_i = (1 - delta_i) q_i + delta_i p_i, and speculative
// sampling runs against pi: x_i ~ q_i is accepted with probability min(1, pi_i(x_i) / q_i(x_i)),
// after a rejection the next token is drawn from norm(max(0, pi_i - q_i)); after an
// all-accepted chain the bonus token comes from p of the last row. Rules (alpha):
//   chow: defer when max q < 1 - alpha
//   diff: defer when max p - max q > alpha
//   opt:  defer when max q < max p - alpha * D_TV(p, q)   (the paper's plug-in optimal rule)
// At T = 0, pi_i is one-hot on argmax q_i (delta = 0) or on argmax p_i (delta = 1); the rule
// quantities then come from the softmaxes at temperature 1 (probs and tree.q hold those).
// delta = 0 accepts every draft drawn from q (pi = q); delta = 1 everywhere is exactly
// verify_sampling on a chain (same random numbers, hence the same outputs).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "spec/token_tree.h"
#include "spec/verifier.h"

namespace sd {

enum class AcceptanceMode { kLossless = 0, kTypical = 1, kCascade = 2 };
enum class CascadeRule { kChow = 0, kDiff = 1, kOpt = 2 };

struct AcceptanceConfig {
  AcceptanceMode mode = AcceptanceMode::kLossless;
  float typical_epsilon = 0.09f;  // Medusa's posterior_threshold
  float typical_delta = 0.3f;     // Medusa's posterior_alpha
  CascadeRule cascade_rule = CascadeRule::kChow;
  float cascade_alpha = 0.1f;
  // Ranges: typical_epsilon in (0, 1], typical_delta > 0 (finite); cascade_alpha in [0, 1]
  // (chow), [-1, 1] (diff), [0, inf) finite (opt).
  Status validate() const;
};

const char* acceptance_mode_name(AcceptanceMode m);
const char* cascade_rule_name(CascadeRule r);
Status parse_acceptance_mode(const std::string& name, AcceptanceMode* out);
Status parse_cascade_rule(const std::string& name, CascadeRule* out);

// Entropy in nats (float64) of a distribution row; zero entries contribute nothing.
double entropy(const float* p, int64_t vocab);

// probs: [1 + n, vocab] (see above). row_argmax: [1 + n] for T = 0 (next token = the row's
// argmax), nullptr when sampling (next token drawn from the row with philox(seed, position')).
VerifyOutcome verify_typical(const TokenTree& tree, const float* probs, int64_t vocab, float epsilon,
                             float delta, const int32_t* row_argmax, uint64_t seed, uint64_t position);

// The deferral decision for one position: p the target's row, q the drafter's.
bool cascade_defer(CascadeRule rule, float alpha, const float* p, const float* q, int64_t vocab);

// tree must be a chain. tree.q: the drafter's distribution per node (empty: one-hot on the
// drafted token). row_argmax as for verify_typical. deferred (optional) receives delta_i for
// every position examined, in chain order.
VerifyOutcome verify_cascade(const TokenTree& tree, const float* probs, int64_t vocab, CascadeRule rule,
                             float alpha, const int32_t* row_argmax, uint64_t seed, uint64_t position,
                             std::vector<float>* scratch, std::vector<uint8_t>* deferred = nullptr);

// Whether every node has at most one child (the root included).
bool is_chain(const TokenTree& tree);

}  // namespace sd
