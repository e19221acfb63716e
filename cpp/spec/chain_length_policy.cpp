#include "spec/chain_length_policy.h"

#include <cmath>

namespace sd {

void ChainLengthPolicy::calibrate(std::vector<double> verify_seconds) { verify_seconds_ = std::move(verify_seconds); }

void ChainLengthPolicy::observe_draft(int32_t drafted, double draft_seconds) {
  if (drafted <= 0) return;
  const double per_token = draft_seconds / drafted;
  draft_token_seconds_ = have_draft_time_ ? 0.8 * draft_token_seconds_ + 0.2 * per_token : per_token;
  have_draft_time_ = true;
}

void ChainLengthPolicy::Acceptance::observe(int32_t drafted, int32_t accepted_tokens) {
  if (drafted <= 0) return;
  accepted += accepted_tokens;
  if (accepted_tokens < drafted) rejected += 1;  // the first rejection ends the chain
}

double ChainLengthPolicy::draft_cost_ratio() const {
  return calibrated() && have_draft_time_ ? draft_token_seconds_ / verify_seconds_[0] : 0.0;
}

double ChainLengthPolicy::expected_speedup(double alpha, int32_t k) const {
  const double v = verify_seconds_[static_cast<size_t>(k)] / verify_seconds_[0];
  const double tokens = alpha >= 1.0 ? k + 1.0 : (1.0 - std::pow(alpha, k + 1)) / (1.0 - alpha);
  return tokens / (k * draft_cost_ratio() + v);
}

int32_t ChainLengthPolicy::choose(const Acceptance& a) const {
  if (k_max() < 1) return 1;  // also before calibration (k_max() is -1 then)
  int32_t best = 1;
  double best_speedup = -1.0;
  for (int32_t k = 1; k <= k_max(); ++k) {
    const double s = expected_speedup(a.alpha(), k);
    if (s > best_speedup) best_speedup = s, best = k;
  }
  return best;
}

}  // namespace sd
