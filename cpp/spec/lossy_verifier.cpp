#include "spec/lossy_verifier.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "sampling/philox.h"
#include "sampling/sampler.h"

namespace sd {

namespace {

float row_max(const float* v, int64_t n) {
  float m = v[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, v[i]);
  return m;
}

std::string num(float x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(x));
  return buf;
}

}  // namespace

const char* acceptance_mode_name(AcceptanceMode m) {
  switch (m) {
    case AcceptanceMode::kTypical: return "typical";
    case AcceptanceMode::kCascade: return "cascade";
    default: return "lossless";
  }
}

const char* cascade_rule_name(CascadeRule r) {
  switch (r) {
    case CascadeRule::kDiff: return "diff";
    case CascadeRule::kOpt: return "opt";
    default: return "chow";
  }
}

Status parse_acceptance_mode(const std::string& name, AcceptanceMode* out) {
  if (name == "lossless") *out = AcceptanceMode::kLossless;
  else if (name == "typical") *out = AcceptanceMode::kTypical;
  else if (name == "cascade") *out = AcceptanceMode::kCascade;
  else return InvalidArgument("acceptance must be one of lossless, typical, cascade; got '" + name + "'");
  return Status::Ok();
}

Status parse_cascade_rule(const std::string& name, CascadeRule* out) {
  if (name == "chow") *out = CascadeRule::kChow;
  else if (name == "diff") *out = CascadeRule::kDiff;
  else if (name == "opt") *out = CascadeRule::kOpt;
  else return InvalidArgument("cascade_rule must be one of chow, diff, opt; got '" + name + "'");
  return Status::Ok();
}

Status AcceptanceConfig::validate() const {
  if (!(typical_epsilon > 0.0f && typical_epsilon <= 1.0f))
    return InvalidArgument("typical_epsilon must be in (0, 1], got " + num(typical_epsilon));
  if (!(typical_delta > 0.0f && std::isfinite(typical_delta)))
    return InvalidArgument("typical_delta must be a finite number > 0, got " + num(typical_delta));
  const float a = cascade_alpha;
  switch (cascade_rule) {
    case CascadeRule::kChow:
      if (!(a >= 0.0f && a <= 1.0f)) return InvalidArgument("cascade_alpha must be in [0, 1] for rule 'chow', got " + num(a));
      break;
    case CascadeRule::kDiff:
      if (!(a >= -1.0f && a <= 1.0f)) return InvalidArgument("cascade_alpha must be in [-1, 1] for rule 'diff', got " + num(a));
      break;
    case CascadeRule::kOpt:
      if (!(a >= 0.0f && std::isfinite(a))) return InvalidArgument("cascade_alpha must be a finite number >= 0 for rule 'opt', got " + num(a));
      break;
    default:
      return InvalidArgument("unknown cascade_rule");
  }
  if (mode != AcceptanceMode::kLossless && mode != AcceptanceMode::kTypical && mode != AcceptanceMode::kCascade)
    return InvalidArgument("unknown acceptance mode");
  return Status::Ok();
}

double entropy(const float* p, int64_t vocab) {
  double h = 0;
  for (int64_t v = 0; v < vocab; ++v)
    if (p[v] > 0.0f) h -= static_cast<double>(p[v]) * std::log(static_cast<double>(p[v]));
  return h;
}

bool is_chain(const TokenTree& tree) {
  for (int32_t i = 0; i < tree.size(); ++i)
    if (tree.parent[static_cast<size_t>(i)] != i - 1) return false;
  return true;
}

VerifyOutcome verify_typical(const TokenTree& tree, const float* probs, int64_t vocab, float epsilon,
                             float delta, const int32_t* row_argmax, uint64_t seed, uint64_t position) {
  VerifyOutcome out;
  int32_t cur = -1;
  uint64_t pos = position;
  for (;;) {
    const float* p = probs + static_cast<int64_t>(cur + 1) * vocab;
    const double threshold = std::min(static_cast<double>(epsilon),
                                      static_cast<double>(delta) * std::exp(-entropy(p, vocab)));
    bool has_child = false;
    int32_t next = -1;
    for (int32_t i = cur + 1; i < tree.size(); ++i) {
      if (tree.parent[static_cast<size_t>(i)] != cur) continue;
      has_child = true;
      if (static_cast<double>(p[tree.token[static_cast<size_t>(i)]]) > threshold) {
        next = i;
        break;
      }
    }
    if (next >= 0) {
      out.accepted.push_back(next);
      cur = next;
      ++pos;
      continue;
    }
    out.next_token = row_argmax ? row_argmax[cur + 1] : sample_from_probs(p, vocab, philox_uniform(seed, pos, 0));
    out.bonus = !has_child;
    return out;
  }
}

bool cascade_defer(CascadeRule rule, float alpha, const float* p, const float* q, int64_t vocab) {
  const double mq = row_max(q, vocab), mp = row_max(p, vocab), a = alpha;
  switch (rule) {
    case CascadeRule::kChow: return mq < 1.0 - a;
    case CascadeRule::kDiff: return mp - mq > a;
    case CascadeRule::kOpt: {
      double tv = 0;
      for (int64_t v = 0; v < vocab; ++v) tv += std::fabs(static_cast<double>(p[v]) - static_cast<double>(q[v]));
      return mq < mp - a * 0.5 * tv;
    }
  }
  return true;
}

VerifyOutcome verify_cascade(const TokenTree& tree, const float* probs, int64_t vocab, CascadeRule rule,
                             float alpha, const int32_t* row_argmax, uint64_t seed, uint64_t position,
                             std::vector<float>* scratch, std::vector<uint8_t>* deferred) {
  VerifyOutcome out;
  const bool one_hot = tree.q.empty();
  scratch->resize(static_cast<size_t>(2 * vocab));
  float* pi = scratch->data();
  float* qh = scratch->data() + vocab;  // a one-hot q when the tree has none
  if (deferred) deferred->clear();
  uint64_t pos = position;
  int32_t cur = -1;
  for (int32_t i = 0; i < tree.size(); ++i) {  // a chain: node i's parent is i - 1
    const float* p = probs + static_cast<int64_t>(cur + 1) * vocab;
    const int32_t x = tree.token[static_cast<size_t>(i)];
    const float* q;
    if (one_hot) {
      std::fill(qh, qh + vocab, 0.0f);
      qh[x] = 1.0f;
      q = qh;
    } else {
      q = tree.q.data() + static_cast<int64_t>(i) * vocab;
    }
    const bool defer = cascade_defer(rule, alpha, p, q, vocab);
    if (deferred) deferred->push_back(defer ? 1 : 0);
    if (row_argmax) {  // T = 0: pi one-hot on argmax q (keep) or argmax p (defer)
      const int32_t want = defer ? row_argmax[cur + 1] : argmax(q, vocab);
      if (x != want) {
        out.next_token = want;
        return out;
      }
    } else {
      const float* target = defer ? p : q;
      const float qx = q[x];
      const float u = philox_uniform(accept_stream(seed), pos << 8, 0);
      if (!(qx > 0.0f && u * qx < target[x])) {  // rejected: norm(max(0, pi - q))
        for (int64_t v = 0; v < vocab; ++v) pi[v] = std::max(0.0f, target[v] - q[v]);
        if (!renormalize(pi, vocab)) std::copy(target, target + vocab, pi);  // only rounding: pi <= q everywhere
        out.next_token = sample_from_probs(pi, vocab, philox_uniform(seed, pos, 0));
        return out;
      }
    }
    out.accepted.push_back(i);
    cur = i;
    ++pos;
  }
  const float* p = probs + static_cast<int64_t>(cur + 1) * vocab;
  out.next_token = row_argmax ? row_argmax[cur + 1] : sample_from_probs(p, vocab, philox_uniform(seed, pos, 0));
  out.bonus = true;
  return out;
}

}  // namespace sd
