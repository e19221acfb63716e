// Chooses how many tokens to draft per step (chains only), from the standard cost model of
// speculative decoding: with per-token acceptance alpha, a chain of k drafts yields
// (1 - alpha^(k+1)) / (1 - alpha) tokens per target pass and costs k c + v(k + 1) target steps,
// where c = one draft token's time / one target step's, and v(n) = the target's time to verify
// n tokens at once / to decode one. v(n) comes from a one-off calibration (target forwards of
// 1 .. k_max + 1 tokens); c from the measured draft time per drafted token; alpha per request
// from its own accept/reject history (the maximum-likelihood estimate under a geometric
// model, with a weak prior). Lossless either way: only the speed depends on k.
#pragma once
#include <cstdint>
#include <vector>

namespace sd {

class ChainLengthPolicy {
 public:
  // verify_seconds[n - 1]: the target's time for a forward over n new tokens, n = 1 .. k_max + 1.
  void calibrate(std::vector<double> verify_seconds);
  bool calibrated() const { return !verify_seconds_.empty(); }
  int32_t k_max() const { return static_cast<int32_t>(verify_seconds_.size()) - 1; }

  // One step's drafting: `drafted` chain tokens proposed in `draft_seconds`.
  void observe_draft(int32_t drafted, double draft_seconds);

  // Per-request acceptance statistics.
  struct Acceptance {
    double accepted = 2.0, rejected = 1.0;  // prior: alpha = 2/3, worth 3 tokens of evidence
    void observe(int32_t drafted, int32_t accepted_tokens);
    double alpha() const { return accepted / (accepted + rejected); }
  };

  // The k in [1, k_max] with the best expected tokens per unit of time.
  int32_t choose(const Acceptance& a) const;
  // Expected speedup over autoregressive decoding of a chain of k at acceptance alpha.
  double expected_speedup(double alpha, int32_t k) const;
  double draft_cost_ratio() const;  // c
  const std::vector<double>& verify_seconds() const { return verify_seconds_; }

 private:
  std::vector<double> verify_seconds_;
  double draft_token_seconds_ = 0;  // exponential moving average
  bool have_draft_time_ = false;
};

}  // namespace sd
