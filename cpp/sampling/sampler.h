// Turning logits into a token: greedy, or temperature then top-k, top-p and min-p (the order
// Hugging Face's logits processors apply them), drawn with a counter-based seeded RNG.
#pragma once
#include <cstdint>
#include <vector>

#include "core/status.h"

namespace sd {

struct SamplingConfig {
  float temperature = 1.0f;  // 0: greedy
  int32_t top_k = 0;         // 0 or >= vocab: off
  float top_p = 1.0f;        // in (0, 1]
  float min_p = 0.0f;        // in [0, 1]
  uint64_t seed = 0;

  Status validate() const;
  bool greedy() const { return temperature == 0.0f; }
};

// Writes the distribution sampling draws from (after temperature, top-k, top-p, min-p; zeros
// outside the kept set; sums to 1) into probs[vocab]. Greedy: one-hot on the argmax.
void processed_probs(const float* logits, int64_t vocab, const SamplingConfig& cfg, float* probs);

// Draws from probs[vocab] by inverse CDF with u in [0, 1).
int32_t sample_from_probs(const float* probs, int64_t vocab, float u);

// First index of the maximum (ties to the lowest id, as torch.argmax).
int32_t argmax(const float* logits, int64_t vocab);

// A sampled draw (temperature > 0): probs[vocab] receives processed_probs(logits, cfg), and the
// token is its inverse-CDF draw at philox_uniform(cfg.seed, counter, 0).
int32_t draw_token(const float* logits, int64_t vocab, const SamplingConfig& cfg, uint64_t counter, float* probs);

// Draws from a forward's logit rows where they were computed (ForwardBatch::draw; a draft
// model's sampled chains): row i's distribution probs[i] = processed_probs(row, configs[i])
// (temperature > 0) and tokens[i] its draw at philox_uniform(configs[i].seed, counters[i], 0).
// A device model then sends back the tokens and distributions, and samples on the device.
struct RowDraws {
  std::vector<SamplingConfig> configs;  // seed: the key of the row's draws
  std::vector<uint64_t> counters;
  std::vector<int32_t> tokens;  // written by the forward: [rows]
  std::vector<float> probs;     // written by the forward: [rows, vocab]
  Status validate(int64_t rows) const;
};

// RowDraws on the host: logits [rows, vocab].
void draw_rows(const float* logits, int64_t vocab, RowDraws* d);

// One token for a request: greedy, or a draw with philox_uniform(cfg.seed, counter).
// `scratch` is grown to vocab floats.
int32_t sample_token(const float* logits, int64_t vocab, const SamplingConfig& cfg,
                     uint64_t counter, std::vector<float>* scratch);

}  // namespace sd
