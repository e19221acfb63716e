#include "spec/verifier.h"

#include <algorithm>
#include <string>

#include "sampling/philox.h"
#include "sampling/sampler.h"

namespace sd {

bool renormalize(float* p, int64_t vocab) {
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += p[v];
  if (sum <= 0) return false;
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t v = 0; v < vocab; ++v) p[v] *= inv;
  return true;
}

VerifyOutcome verify_greedy(const TokenTree& tree, const int32_t* row_argmax) {
  VerifyOutcome out;
  int32_t cur = -1;
  for (;;) {
    const int32_t want = row_argmax[cur + 1];
    int32_t next = -1;
    bool has_child = false;
    for (int32_t i = cur + 1; i < tree.size(); ++i) {
      if (tree.parent[static_cast<size_t>(i)] != cur) continue;
      has_child = true;
      if (tree.token[static_cast<size_t>(i)] == want) {
        next = i;
        break;
      }
    }
    if (next < 0) {
      out.next_token = want;
      out.bonus = !has_child;
      return out;
    }
    out.accepted.push_back(next);
    cur = next;
  }
}

VerifyOutcome verify_sampling(const TokenTree& tree, const float* probs, int64_t vocab,
                              uint64_t seed, uint64_t position, std::vector<float>* scratch) {
  VerifyOutcome out;
  scratch->resize(static_cast<size_t>(vocab));
  float* p = scratch->data();
  const bool one_hot = tree.q.empty();
  int32_t cur = -1;
  uint64_t pos = position;
  for (;;) {
    const float* row = probs + static_cast<int64_t>(cur + 1) * vocab;
    std::copy(row, row + vocab, p);
    bool has_child = false, accepted = false;
    int32_t sibling = 0;
    for (int32_t i = cur + 1; i < tree.size() && !accepted; ++i) {
      if (tree.parent[static_cast<size_t>(i)] != cur) continue;
      has_child = true;
      const int32_t x = tree.token[static_cast<size_t>(i)];
      const float* q = one_hot ? nullptr : tree.q.data() + static_cast<int64_t>(i) * vocab;
      const float qx = one_hot ? 1.0f : q[x];
      const float u = philox_uniform(accept_stream(seed), (pos << 8) | static_cast<uint64_t>(std::min(sibling, 255)), 0);
      ++sibling;
      if (qx > 0.0f && u * qx < p[x]) {  // u < min(1, p(x) / q(x))
        out.accepted.push_back(i);
        cur = i;
        ++pos;
        accepted = true;
        break;
      }
      // Rejected: the residual max(0, p - q), renormalized (back to the row if nothing is
      // left, which only rounding can cause: then p <= q everywhere and p was fully covered).
      if (one_hot) {
        p[x] = 0.0f;
      } else {
        for (int64_t v = 0; v < vocab; ++v) p[v] = std::max(0.0f, p[v] - q[v]);
      }
      if (!renormalize(p, vocab)) std::copy(row, row + vocab, p);
    }
    if (accepted) continue;
    out.next_token = sample_from_probs(p, vocab, philox_uniform(seed, pos, 0));
    out.bonus = !has_child;
    return out;
  }
}

int64_t RowSampling::num_rows() const {
  int64_t n = 0;
  for (const TokenTree* t : trees) n += 1 + (t == nullptr ? 0 : t->size());
  return n;
}

Status RowSampling::validate(int64_t rows, int32_t vocab) const {
  if (configs.size() != trees.size() || positions.size() != trees.size())
    return InvalidArgument("forward: row sampling needs one tree, config and position per group");
  if (num_rows() != rows)
    return InvalidArgument("forward: row sampling covers " + std::to_string(num_rows()) + " rows, the batch asks for " +
                           std::to_string(rows) + " logit rows");
  for (size_t g = 0; g < trees.size(); ++g) {
    SD_RETURN_IF_ERROR(configs[g].validate());
    if (trees[g] != nullptr) SD_RETURN_IF_ERROR(trees[g]->validate(vocab));
  }
  return Status::Ok();
}

void sample_rows(const float* logits, int64_t vocab, RowSampling* rs, std::vector<float>* probs,
                 std::vector<float>* scratch) {
  static const TokenTree kRootOnly;
  rs->outcomes.assign(rs->trees.size(), VerifyOutcome());
  const float* rows = logits;
  for (size_t g = 0; g < rs->trees.size(); ++g) {
    const TokenTree& t = rs->trees[g] == nullptr ? kRootOnly : *rs->trees[g];
    const SamplingConfig& cfg = rs->configs[g];
    const int64_t n = 1 + t.size();
    if (cfg.greedy()) {
      std::vector<int32_t> best(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) best[static_cast<size_t>(i)] = argmax(rows + i * vocab, vocab);
      rs->outcomes[g] = verify_greedy(t, best.data());
    } else {
      probs->resize(static_cast<size_t>(n * vocab));
      for (int64_t i = 0; i < n; ++i) processed_probs(rows + i * vocab, vocab, cfg, probs->data() + i * vocab);
      rs->outcomes[g] = verify_sampling(t, probs->data(), vocab, cfg.seed, rs->positions[g], scratch);
    }
    rows += n * vocab;
  }
}

}  // namespace sd
