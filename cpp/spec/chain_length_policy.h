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
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace sd {

class ChainLengthPolicy {
 public:
  // (n, seconds) points of the target's forward time over n new tokens; must include
  // n = 1 .. k_max + 1. Times between points are interpolated, beyond the last extrapolated.
  void calibrate(std::vector<std::pair<int32_t, double>> points, int32_t k_max);
  bool calibrated() const { return !points_.empty(); }
  int32_t k_max() const { return k_max_; }
  double verify_seconds(int32_t n) const;  // interpolated forward time for n tokens

  // One step's drafting: `drafted` chain tokens proposed in `draft_seconds`.
  void observe_draft(int32_t drafted, double draft_seconds);

  // Per-request acceptance statistics.
  struct Acceptance {
    double accepted = 2.0, rejected = 1.0;  // prior: alpha = 2/3, worth 3 tokens of evidence
    void observe(int32_t drafted, int32_t accepted_tokens);
    double alpha() const { return accepted / (accepted + rejected); }
  };

  // The k in [0, k_max] with the most expected tokens per unit of time for these sequences
  // decoding together (0: do not draft this step).
  int32_t choose(const std::vector<const Acceptance*>& batch) const;
  int32_t choose(const Acceptance& a) const { return choose(std::vector<const Acceptance*>{&a}); }
  // Expected speedup over autoregressive decoding of a chain of k at acceptance alpha (batch 1).
  double expected_speedup(double alpha, int32_t k) const;
  double draft_cost_ratio() const;  // c

 private:
  // Expected committed tokens per target step's worth of time, drafting chains of k.
  double rate(const std::vector<const Acceptance*>& batch, int32_t k) const;
  std::vector<std::pair<int32_t, double>> points_;  // sorted by n
  int32_t k_max_ = -1;
  double draft_token_seconds_ = 0;  // exponential moving average
  bool have_draft_time_ = false;
};

}  // namespace sd
