#include "spec/chain_length_policy.h"

#include <algorithm>
#include <cmath>

namespace sd {

void ChainLengthPolicy::calibrate(std::vector<std::pair<int32_t, double>> points, int32_t k_max) {
  std::sort(points.begin(), points.end());
  points_ = std::move(points);
  k_max_ = k_max;
}

double ChainLengthPolicy::verify_seconds(int32_t n) const {
  if (points_.empty()) return 0.0;
  if (points_.size() == 1 || n <= points_.front().first) return points_.front().second;
  size_t i = 1;
  while (i + 1 < points_.size() && points_[i].first < n) ++i;
  const auto& a = points_[i - 1];
  const auto& b = points_[i];
  const double t = static_cast<double>(n - a.first) / static_cast<double>(b.first - a.first);
  return std::max(a.second + t * (b.second - a.second), 0.0);  // t > 1 extrapolates
}

void ChainLengthPolicy::observe_draft(int32_t drafted, double draft_seconds, int32_t batch) {
  if (drafted <= 0 || batch <= 0) return;
  const double per_token = draft_seconds / drafted, per_step = draft_seconds / batch;
  draft_token_seconds_ = have_draft_time_ ? 0.8 * draft_token_seconds_ + 0.2 * per_token : per_token;
  draft_step_seconds_ = have_draft_time_ ? 0.8 * draft_step_seconds_ + 0.2 * per_step : per_step;
  have_draft_time_ = true;
}

void ChainLengthPolicy::Acceptance::observe_confidence(double predicted_tokens, int32_t accepted_tokens) {
  if (!(predicted_tokens > 0)) return;
  predicted += predicted_tokens;
  realized += accepted_tokens;
}

std::vector<double> ChainLengthPolicy::tree_pass_seconds(int32_t batch, int32_t max_nodes) const {
  std::vector<double> cost;
  if (!calibrated() || batch <= 0) return cost;
  for (int32_t n = 0; n <= max_nodes; ++n)
    cost.push_back(draft_step_seconds_ + verify_seconds(batch * (n + 1)) / batch);
  return cost;
}

void ChainLengthPolicy::Acceptance::observe(int32_t drafted, int32_t accepted_tokens) {
  if (drafted <= 0) return;
  accepted = kForget * accepted + accepted_tokens;
  rejected = kForget * rejected + (accepted_tokens < drafted ? 1 : 0);  // the first rejection ends the chain
}

double ChainLengthPolicy::draft_cost_ratio() const {
  return calibrated() && have_draft_time_ ? draft_token_seconds_ / verify_seconds(1) : 0.0;
}

double ChainLengthPolicy::rate(const std::vector<const Acceptance*>& batch, int32_t k) const {
  const int32_t B = static_cast<int32_t>(batch.size());
  double tokens = 0;
  for (const Acceptance* a : batch) {
    const double alpha = a->alpha();
    tokens += alpha >= 1.0 ? k + 1.0 : (1.0 - std::pow(alpha, k + 1)) / (1.0 - alpha);
  }
  const double cost = B * k * draft_cost_ratio() + verify_seconds(B * (k + 1)) / verify_seconds(1);
  return tokens / cost;
}

double ChainLengthPolicy::expected_speedup(double alpha, int32_t k) const {
  Acceptance a;
  a.accepted = alpha, a.rejected = 1.0 - alpha;
  const std::vector<const Acceptance*> one{&a};
  return rate(one, k) / rate(one, 0);
}

int32_t ChainLengthPolicy::choose(const std::vector<const Acceptance*>& batch) const {
  if (!calibrated() || batch.empty()) return std::max(k_max_, 1);
  int32_t best = 0;
  double best_rate = rate(batch, 0);
  for (int32_t k = 1; k <= k_max_; ++k) {
    const double r = rate(batch, k);
    if (r > best_rate) best_rate = r, best = k;
  }
  return best;
}

}  // namespace sd
