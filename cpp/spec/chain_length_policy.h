// Chooses how many tokens to draft per step (chains only), from the standard cost model of
// speculative decoding: with per-token acceptance alpha, a chain of k drafts yields
// (1 - alpha^(k+1)) / (1 - alpha) tokens per target pass and costs k c + v(k + 1) target steps,
// where c = one draft token's time / one target step's, and v(n) = the target's time for a
// forward over n new tokens / for one. For a batch of B sequences one step verifies B (k + 1)
// tokens in one forward, so the step costs B k c + v(B (k + 1)) against v(B) for plain decoding:
// k = 0 (no drafting) wins once the batch makes the target compute-bound. v(n) comes from a
// one-off calibration (target forwards of 1 .. k_max + 1 tokens and of whole batches' worth,
// interpolated between), c from the measured draft time per drafted token, alpha per request
// from its own accept/reject history (the maximum-likelihood estimate under a geometric model,
// with a weak prior). Lossless either way: only the speed depends on k.
//
// Dynamic trees (EAGLE-2) are sized by the same model: a tree of n kept nodes is expected to
// commit 1 + s x (the sum of its nodes' path probabilities under the draft) tokens, s the
// request's measured ratio of accepted tokens to that prediction, and a pass costs the step's
// drafting time + v(n + 1); tree_pass_seconds gives those costs, spec/tree_drafting.h picks n.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace sd {

class ChainLengthPolicy {
 public:
  // (n, seconds) points of the target's forward time over n new tokens; must include
  // n = 1 .. k_max + 1 for chains (trees: sparser points beyond). Times between points are
  // interpolated, beyond the last extrapolated.
  void calibrate(std::vector<std::pair<int32_t, double>> points, int32_t k_max);
  bool calibrated() const { return !points_.empty(); }
  int32_t k_max() const { return k_max_; }
  double verify_seconds(int32_t n) const;  // interpolated forward time for n tokens

  // One step's drafting: `drafted` tokens proposed for `batch` sequences in `draft_seconds`.
  void observe_draft(int32_t drafted, double draft_seconds, int32_t batch = 1);

  // Per-request acceptance statistics. Acceptance drifts within a request (a summary copies
  // its source in bursts, then paraphrases), so older evidence is discounted: each observation
  // first scales the counts by kForget, a memory of about 1 / (1 - kForget) steps.
  struct Acceptance {
    static constexpr double kForget = 0.9;
    double accepted = 2.0, rejected = 1.0;  // prior: alpha = 2/3, worth 3 tokens of evidence
    void observe(int32_t drafted, int32_t accepted_tokens);
    double alpha() const { return accepted / (accepted + rejected); }
    // Trees: accepted tokens against the drafter's prediction (the sum of the verified nodes'
    // path probabilities); prior: a ratio of 1 worth 2 tokens.
    double predicted = 2.0, realized = 2.0;
    void observe_confidence(double predicted_tokens, int32_t accepted_tokens);
    double confidence_scale() const { return realized / predicted; }
  };

  // The k in [0, k_max] with the most expected tokens per unit of time for these sequences
  // decoding together (0: do not draft this step).
  int32_t choose(const std::vector<const Acceptance*>& batch) const;
  int32_t choose(const Acceptance& a) const { return choose(std::vector<const Acceptance*>{&a}); }
  // Expected speedup over autoregressive decoding of a chain of k at acceptance alpha (batch 1).
  double expected_speedup(double alpha, int32_t k) const;
  double draft_cost_ratio() const;  // c
  // Seconds of one sequence's share of a pass that keeps n = 0 .. max_nodes tree nodes, with
  // `batch` sequences each keeping n: the measured drafting time per sequence and step, plus
  // v(batch (n + 1)) / batch (no drafting time before a steady step was observed). Empty until
  // calibrated.
  std::vector<double> tree_pass_seconds(int32_t batch, int32_t max_nodes) const;

 private:
  // Expected committed tokens per target step's worth of time, drafting chains of k.
  double rate(const std::vector<const Acceptance*>& batch, int32_t k) const;
  std::vector<std::pair<int32_t, double>> points_;  // sorted by n
  int32_t k_max_ = -1;
  double draft_token_seconds_ = 0;  // exponential moving averages
  double draft_step_seconds_ = 0;   // per sequence
  bool have_draft_time_ = false;
};

}  // namespace sd
