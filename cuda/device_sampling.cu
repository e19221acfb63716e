#include "cuda/device_sampling.h"

#include <algorithm>

namespace sd::cuda {

namespace {

// A config as the sampling kernel takes it; its draw at philox_uniform(c.seed, counter, 0).
SamplingRow sampling_row(const SamplingConfig& c, uint64_t counter) {
  SamplingRow row;
  row.temperature = c.temperature;
  row.top_k = c.top_k;
  row.top_p = c.top_p;
  row.min_p = c.min_p;
  row.seed = c.seed;
  row.counter = counter;
  return row;
}

}  // namespace

Status DeviceRowSampler::enqueue(const RowSampling& rs, const float* logits, int64_t vocab, cudaStream_t stream) {
  const size_t G = rs.trees.size(), V = static_cast<size_t>(vocab);
  static const TokenTree kRootOnly;
  rows_host_.clear();
  node_indptr_host_.assign(1, 0);
  tokens_host_.clear();
  parents_host_.clear();
  seeds_host_.clear();
  positions_host_.clear();
  bool any_q = false;
  max_accept_ = 1;  // a valid output row even when no group has a draft
  for (size_t g = 0; g < G; ++g) {
    const TokenTree& t = rs.trees[g] == nullptr ? kRootOnly : *rs.trees[g];
    const SamplingConfig& c = rs.configs[g];
    rows_host_.insert(rows_host_.end(), static_cast<size_t>(1 + t.size()), sampling_row(c, 0));
    tokens_host_.insert(tokens_host_.end(), t.token.begin(), t.token.end());
    parents_host_.insert(parents_host_.end(), t.parent.begin(), t.parent.end());
    node_indptr_host_.push_back(static_cast<int32_t>(tokens_host_.size()));
    seeds_host_.push_back(c.seed);
    positions_host_.push_back(rs.positions[g]);
    any_q = any_q || !t.q.empty();
    max_accept_ = std::max(max_accept_, t.max_depth());
  }
  const size_t R = rows_host_.size(), N = tokens_host_.size();
  if (any_q) {  // one q row per node; trees without q (deterministic drafts) get one-hot rows
    q_host_.assign(N * V, 0.0f);
    size_t node = 0;
    for (size_t g = 0; g < G; ++g) {
      if (rs.trees[g] == nullptr) continue;
      const TokenTree& t = *rs.trees[g];
      if (!t.q.empty()) std::copy(t.q.begin(), t.q.end(), q_host_.begin() + static_cast<std::ptrdiff_t>(node * V));
      else
        for (int32_t i = 0; i < t.size(); ++i) q_host_[(node + static_cast<size_t>(i)) * V + static_cast<size_t>(t.token[i])] = 1.0f;
      node += static_cast<size_t>(t.size());
    }
  }
  std::vector<StagedTables::Table> t(kNumTables);
  t[kRows] = StagedTables::of(rows_host_);
  t[kNodeIndptr] = StagedTables::of(node_indptr_host_);
  t[kTokens] = StagedTables::of(tokens_host_);
  t[kParents] = StagedTables::of(parents_host_);
  t[kSeeds] = StagedTables::of(seeds_host_);
  t[kPositions] = StagedTables::of(positions_host_);
  t[kQ] = any_q ? StagedTables::of(q_host_) : StagedTables::Table{nullptr, 0, 0};
  SD_RETURN_IF_ERROR(tables_.upload(t, stream));
  SD_RETURN_IF_ERROR(probs_.reserve(R * V));
  SD_RETURN_IF_ERROR(workspace_.reserve(G * V));
  const size_t A = static_cast<size_t>(max_accept_);
  const size_t out_n = G * A + 3 * G;
  SD_RETURN_IF_ERROR(out_.reserve(out_n));
  SD_RETURN_IF_ERROR(out_host_.reserve(out_n));
  groups_ = G;
  int32_t* accepted = out_.get();
  int32_t* num_accepted = accepted + G * A;
  int32_t* next_token = num_accepted + G;
  uint8_t* bonus = reinterpret_cast<uint8_t*>(next_token + G);

  SD_RETURN_IF_ERROR(sample(logits, static_cast<int64_t>(R), vocab, tables_.device<SamplingRow>(kRows), probs_.get(),
                            nullptr, stream));
  SD_RETURN_IF_ERROR(verify_tree(tables_.device<int32_t>(kNodeIndptr), static_cast<int64_t>(G),
                                 tables_.device<int32_t>(kTokens), tables_.device<int32_t>(kParents), probs_.get(),
                                 any_q ? tables_.device<float>(kQ) : nullptr, vocab, tables_.device<uint64_t>(kSeeds),
                                 tables_.device<uint64_t>(kPositions), max_accept_,
                                 accepted, num_accepted, next_token, bonus, workspace_.get(), stream));
  return check(cudaMemcpyAsync(out_host_.get(), out_.get(), out_n * sizeof(int32_t), cudaMemcpyDeviceToHost, stream),
               "row sampling D2H");
}

void DeviceRowSampler::read(RowSampling* rs) const {
  const size_t G = rs->trees.size(), A = static_cast<size_t>(max_accept_);
  rs->outcomes.assign(G, VerifyOutcome());
  if (G == 0 || G != groups_) return;  // (nothing was enqueued for these groups)
  const int32_t* accepted = out_host_.get();
  const int32_t* num_accepted = accepted + G * A;
  const int32_t* next_token = num_accepted + G;
  const uint8_t* bonus = reinterpret_cast<const uint8_t*>(next_token + G);
  for (size_t g = 0; g < G; ++g) {
    VerifyOutcome& o = rs->outcomes[g];
    o.accepted.assign(accepted + g * A, accepted + g * A + num_accepted[g]);
    o.next_token = next_token[g];
    o.bonus = bonus[g] != 0;
  }
}

Status DeviceRowSampler::enqueue_draws(RowDraws* d, const float* logits, int64_t vocab, cudaStream_t stream) {
  const size_t R = d->configs.size(), V = static_cast<size_t>(vocab);
  rows_host_.resize(R);
  for (size_t i = 0; i < R; ++i) rows_host_[i] = sampling_row(d->configs[i], d->counters[i]);
  SD_RETURN_IF_ERROR(draw_tables_.upload({StagedTables::of(rows_host_)}, stream));
  SD_RETURN_IF_ERROR(probs_.reserve(R * V));
  SD_RETURN_IF_ERROR(draw_tokens_.reserve(R));
  SD_RETURN_IF_ERROR(sample(logits, static_cast<int64_t>(R), vocab, draw_tables_.device<SamplingRow>(0), probs_.get(),
                            draw_tokens_.get(), stream));
  d->tokens.resize(R);
  d->probs.resize(R * V);
  SD_RETURN_IF_ERROR(check(cudaMemcpyAsync(d->tokens.data(), draw_tokens_.get(), R * sizeof(int32_t),
                                           cudaMemcpyDeviceToHost, stream),
                           "row draws D2H"));
  return check(cudaMemcpyAsync(d->probs.data(), probs_.get(), R * V * sizeof(float), cudaMemcpyDeviceToHost, stream),
               "row draws D2H");
}

}  // namespace sd::cuda
