#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "sampling/philox.h"

namespace sd {

Status SamplingConfig::validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature))
    return InvalidArgument("temperature must be a finite number >= 0, got " + std::to_string(temperature));
  if (top_k < 0) return InvalidArgument("top_k must be >= 0 (0 disables it), got " + std::to_string(top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f))
    return InvalidArgument("top_p must be in (0, 1], got " + std::to_string(top_p));
  if (!(min_p >= 0.0f && min_p <= 1.0f))
    return InvalidArgument("min_p must be in [0, 1], got " + std::to_string(min_p));
  return Status::Ok();
}

int32_t argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

void processed_probs(const float* logits, int64_t vocab, const SamplingConfig& cfg, float* probs) {
  if (cfg.greedy()) {
    std::fill(probs, probs + vocab, 0.0f);
    probs[argmax(logits, vocab)] = 1.0f;
    return;
  }
  // Softmax of logits / T, in double for the normalizer.
  const float inv_t = 1.0f / cfg.temperature;
  float mx = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, logits[i] * inv_t);
  for (int64_t i = 0; i < vocab; ++i) probs[i] = std::exp(logits[i] * inv_t - mx);

  const bool use_top_k = cfg.top_k > 0 && cfg.top_k < vocab;
  const bool use_top_p = cfg.top_p < 1.0f;
  if (use_top_k || use_top_p) {
    // Candidates sorted by probability, descending (ties: lower id first).
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    auto by_prob = [&](int32_t a, int32_t b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); };
    // Keep the smallest prefix whose mass reaches top_p (HF drops tokens whose cumulative mass
    // from the bottom is <= 1 - top_p; the top token always stays). Returns {kept, reached}
    // over the first `sorted` candidates of `order`, which are in by_prob order.
    auto nucleus = [&](int64_t sorted, double total) {
      double cum = 0;
      int64_t n = 0;
      while (n < sorted) {
        cum += probs[order[static_cast<size_t>(n)]] / total;
        ++n;
        if (cum >= cfg.top_p) return std::make_pair(n, true);
      }
      return std::make_pair(n, false);
    };
    int64_t keep = vocab;
    if (use_top_k) {
      keep = cfg.top_k;
      std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_prob);
      if (use_top_p) {
        double total = 0;
        for (int64_t i = 0; i < keep; ++i) total += probs[order[static_cast<size_t>(i)]];
        keep = nucleus(keep, total).first;
      }
    } else {
      // Top-p alone: sort only as many candidates as the nucleus needs (a few dozen for a
      // model's peaked distributions), growing 8x until it is reached; a flat distribution
      // ends in a full sort. The kept set is the full sort's.
      double total = 0;
      for (int64_t i = 0; i < vocab; ++i) total += probs[i];
      for (int64_t m = std::min<int64_t>(vocab, 256);; m = std::min<int64_t>(vocab, 8 * m)) {
        std::partial_sort(order.begin(), order.begin() + m, order.end(), by_prob);
        const auto kept = nucleus(m, total);
        if (kept.second || m == vocab) {
          keep = kept.first;
          break;
        }
      }
    }
    for (int64_t i = keep; i < vocab; ++i) probs[order[static_cast<size_t>(i)]] = 0.0f;
  }
  if (cfg.min_p > 0.0f) {
    // The max probability is exp(0) = 1 before normalization and always kept.
    const float threshold = cfg.min_p;
    for (int64_t i = 0; i < vocab; ++i)
      if (probs[i] < threshold) probs[i] = 0.0f;
  }
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += probs[i];
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < vocab; ++i) probs[i] *= inv;
}

int32_t sample_from_probs(const float* probs, int64_t vocab, float u) {
  double cum = 0;
  int64_t last_nonzero = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (probs[i] <= 0.0f) continue;
    cum += probs[i];
    last_nonzero = i;
    if (u < cum) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(last_nonzero);  // u beyond the rounded total
}

int32_t sample_token(const float* logits, int64_t vocab, const SamplingConfig& cfg,
                     uint64_t counter, std::vector<float>* scratch) {
  if (cfg.greedy()) return argmax(logits, vocab);
  if (static_cast<int64_t>(scratch->size()) < vocab) scratch->resize(static_cast<size_t>(vocab));
  return draw_token(logits, vocab, cfg, counter, scratch->data());
}

int32_t draw_token(const float* logits, int64_t vocab, const SamplingConfig& cfg, uint64_t counter, float* probs) {
  processed_probs(logits, vocab, cfg, probs);
  return sample_from_probs(probs, vocab, philox_uniform(cfg.seed, counter, 0));
}

Status RowDraws::validate(int64_t rows) const {
  if (static_cast<int64_t>(configs.size()) != rows || counters.size() != configs.size())
    return InvalidArgument("forward: row draws need one config and counter per logit row, got " +
                           std::to_string(configs.size()) + " for " + std::to_string(rows) + " rows");
  for (const SamplingConfig& c : configs) {
    SD_RETURN_IF_ERROR(c.validate());
    if (c.greedy()) return InvalidArgument("forward: row draws sample (temperature > 0); greedy rows ask for the argmax");
  }
  return Status::Ok();
}

void draw_rows(const float* logits, int64_t vocab, RowDraws* d) {
  const size_t n = d->configs.size();
  d->tokens.resize(n);
  d->probs.resize(n * static_cast<size_t>(vocab));
  for (size_t i = 0; i < n; ++i)
    d->tokens[i] = draw_token(logits + static_cast<int64_t>(i) * vocab, vocab, d->configs[i], d->counters[i],
                              d->probs.data() + i * static_cast<size_t>(vocab));
}

}  // namespace sd
