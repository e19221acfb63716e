#include "spec/chain_drafting.h"

#include <algorithm>
#include <cmath>

#include "sampling/rng_streams.h"
#include "spec/verifier.h"

namespace sd {

namespace {

// Chain c's next draw when it samples: its request's config keyed by draft_stream(seed), at
// counter position + node index (the host draw and the model's, ForwardBatch::draw, alike).
struct NextDraw {
  SamplingConfig config;
  uint64_t counter;
};
NextDraw next_draw(const ChainDraft& c) {
  NextDraw d{*c.req->sampling, c.req->position + static_cast<uint64_t>(c.tree->size())};
  d.config.seed = draft_stream(d.config.seed);
  return d;
}

// Draws chain c's next token from its logits row; returns the draft's probability of it.
float draw(const ChainDraft& c, const float* logits, int64_t V) {
  const SamplingConfig& sc = *c.req->sampling;
  // q: the distribution x is drawn from; when greedy, only if asked (the softmax at temperature
  // 1, for the cascade's deferral rule).
  float* q = nullptr;
  if (!sc.greedy() || c.req->record_q) {
    const size_t at = c.tree->q.size();
    c.tree->q.resize(at + static_cast<size_t>(V));
    q = c.tree->q.data() + at;
  }
  int32_t x;
  if (sc.greedy()) {
    if (q != nullptr) processed_probs(logits, V, SamplingConfig(), q);
    x = argmax(logits, V);
  } else {
    const NextDraw d = next_draw(c);
    x = draw_token(logits, V, d.config, d.counter, q);
  }
  c.tree->add(x, c.tree->size() - 1);
  return q ? q[x] : 1.0f;
}

}  // namespace

bool argmax_suffices(const DraftRequest& req, float min_confidence) {
  return min_confidence <= 0 && req.sampling->greedy() && !req.record_q;
}

Status forward_rows(ForwardModel& model, ForwardBatch& fb, KVCache& kv, RowKind kind, DraftRows* rows) {
  rows->kind = kind;
  if (kind == RowKind::kArgmax) {
    rows->argmax.resize(fb.logit_rows.size());
    fb.argmax = rows->argmax.data();
    return model.forward(fb, kv, nullptr);
  }
  if (kind == RowKind::kDraws) {
    fb.draw = &rows->draws;
    return model.forward(fb, kv, nullptr);
  }
  rows->logits.resize(fb.logit_rows.size() * static_cast<size_t>(model.config().vocab_size));
  return model.forward(fb, kv, rows->logits.data());
}

RowKind chain_row_kind(const std::vector<ChainDraft>& chains, float min_confidence) {
  auto all = [&](auto pred) { return std::all_of(chains.begin(), chains.end(), pred); };
  if (all([&](const ChainDraft& c) { return argmax_suffices(*c.req, min_confidence); })) return RowKind::kArgmax;
  if (all([](const ChainDraft& c) { return !c.req->sampling->greedy(); })) return RowKind::kDraws;
  return RowKind::kLogits;
}

void prepare_draws(const std::vector<ChainDraft>& chains, const std::vector<int32_t>& growing, DraftRows* rows) {
  rows->draws.configs.clear();
  rows->draws.counters.clear();
  for (int32_t g : growing) {
    const NextDraw d = next_draw(chains[static_cast<size_t>(g)]);
    rows->draws.configs.push_back(d.config);
    rows->draws.counters.push_back(d.counter);
  }
}

Status grow_chains(const std::vector<ChainDraft>& chains, int64_t V, float min_confidence, DraftRows rows,
                   const NextRows& next) {
  const RowKind kind = chain_row_kind(chains, min_confidence);
  std::vector<int32_t> growing;
  for (int32_t c = 0; c < static_cast<int32_t>(chains.size()); ++c) growing.push_back(c);
  while (!growing.empty()) {
    std::vector<int32_t> still;
    for (size_t r = 0; r < growing.size(); ++r) {
      const ChainDraft& c = chains[static_cast<size_t>(growing[r])];
      if (c.budget <= c.tree->size()) continue;
      float confidence = 1.0f;
      if (rows.kind == RowKind::kArgmax) {  // greedy, nothing else wanted (argmax_suffices)
        c.tree->add(rows.argmax[r], c.tree->size() - 1);
      } else if (rows.kind == RowKind::kDraws) {  // drawn by the model exactly as draw() would
        const float* q = rows.draws.probs.data() + static_cast<int64_t>(r) * V;
        c.tree->q.insert(c.tree->q.end(), q, q + V);
        const int32_t x = rows.draws.tokens[r];
        c.tree->add(x, c.tree->size() - 1);
        confidence = q[x];
      } else {
        const float* row = rows.logits.data() + static_cast<int64_t>(r) * V;
        confidence = draw(c, row, V);
        if (min_confidence > 0 && c.req->sampling->greedy() && !c.req->record_q)
          confidence = std::exp(LogSoftmax(row, V).log_prob(c.tree->token.back()));
      }
      if (c.tree->size() < c.budget && confidence >= min_confidence) still.push_back(growing[r]);
    }
    growing.swap(still);
    if (growing.empty()) break;
    if (kind == RowKind::kDraws) prepare_draws(chains, growing, &rows);
    SD_RETURN_IF_ERROR(next(growing, kind, &rows));
  }
  return Status::Ok();
}

}  // namespace sd
