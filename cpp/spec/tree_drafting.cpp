#include "spec/tree_drafting.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "spec/chain_drafting.h"

namespace sd {

namespace {

// Indexes of the k largest values (ties: lower index first), best first.
std::vector<int32_t> top_indices(const float* v, int64_t n, int32_t k) {
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  k = static_cast<int32_t>(std::min<int64_t>(k, n));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

// The candidate tree: every expansion, with each node's score and run slot.
class Candidates {
 public:
  Candidates(const DraftShape& shape, int64_t vocab) : shape_(shape), vocab_(vocab) {}

  // How many children `node` (-1: the root) gets.
  int32_t wanted_children(int32_t node) const {
    if (!shape_.is_static()) return shape_.top_k;
    const std::vector<int32_t> none;
    const std::vector<int32_t>& p = node < 0 ? none : path_[static_cast<size_t>(node)];
    int32_t n = 0;
    for (const auto& c : shape_.tree_choices)
      if (c.size() == p.size() + 1 && std::equal(p.begin(), p.end(), c.begin())) ++n;
    return n;
  }

  void expand(int32_t node, const float* logits) {
    const int32_t want = wanted_children(node);
    if (want <= 0) return;
    const float base = node < 0 ? 0.f : score_[static_cast<size_t>(node)];
    const std::vector<int32_t> top = top_indices(logits, vocab_, want);
    const LogSoftmax log_softmax(logits, vocab_);  // once per expanded node, not per child
    for (int32_t r = 0; r < static_cast<int32_t>(top.size()); ++r) {
      const int32_t tok = top[static_cast<size_t>(r)];
      tree_.add(tok, node);
      score_.push_back(base + log_softmax.log_prob(tok));
      std::vector<int32_t> p = node < 0 ? std::vector<int32_t>{} : path_[static_cast<size_t>(node)];
      p.push_back(r);
      path_.push_back(std::move(p));
      slot_.push_back(-1);
    }
  }

  // The nodes of [begin, end) to run next: static trees run every node with children; dynamic
  // ones the top_k best-scoring nodes of the level; with a sizing, only those among the nodes
  // the cost model would keep if the tree stopped growing now (a child never outscores its
  // parent, so a node outside that set rarely gets kept children). Ascending index order.
  std::vector<int32_t> frontier(int32_t begin, int32_t end, int32_t budget, const TreeSizing* sizing) const {
    const float cut = sizing && !shape_.is_static() ? kept_score_cut(budget, *sizing) : -INFINITY;
    std::vector<int32_t> f;
    for (int32_t i = begin; i < end; ++i)
      if ((!shape_.is_static() || wanted_children(i) > 0) && score_[static_cast<size_t>(i)] >= cut) f.push_back(i);
    if (!shape_.is_static() && static_cast<int32_t>(f.size()) > shape_.top_k) {
      std::sort(f.begin(), f.end(), [&](int32_t a, int32_t b) { return better(a, b); });
      f.resize(static_cast<size_t>(shape_.top_k));
      std::sort(f.begin(), f.end());
    }
    return f;
  }

  // Adds `frontier` to the run tree (slots in run order; parents as slots).
  void mark_run(const std::vector<int32_t>& frontier, TokenTree* run) {
    for (int32_t node : frontier) {
      const int32_t p = tree_.parent[static_cast<size_t>(node)];
      slot_[static_cast<size_t>(node)] = run->add(tree_.token[static_cast<size_t>(node)], p < 0 ? -1 : slot_[static_cast<size_t>(p)]);
    }
  }

  // Every node, best-scoring first (ties: lower index first).
  std::vector<int32_t> ranked() const {
    std::vector<int32_t> r(static_cast<size_t>(tree_.size()));
    std::iota(r.begin(), r.end(), 0);
    std::stable_sort(r.begin(), r.end(), [&](int32_t a, int32_t b) { return score_[a] > score_[b]; });
    return r;
  }

  // How many of `ranked` nodes the cost model keeps.
  int32_t sized(const std::vector<int32_t>& ranked, int32_t budget, const TreeSizing& sizing) const {
    std::vector<float> confidence;
    for (int32_t node : ranked) confidence.push_back(std::exp(score_[static_cast<size_t>(node)]));
    return best_tree_size(confidence, sizing, budget);
  }

  // The lowest score among the nodes the cost model would keep now.
  float kept_score_cut(int32_t budget, const TreeSizing& sizing) const {
    const std::vector<int32_t> r = ranked();
    if (r.empty()) return -INFINITY;
    const int32_t n = std::min<int32_t>(sized(r, budget, sizing), static_cast<int32_t>(r.size()));
    return score_[static_cast<size_t>(r[static_cast<size_t>(n - 1)])];
  }

  // Keeps the best `budget` nodes (all of a static tree that fits), or the number of them the
  // cost model prefers (dynamic trees with a sizing); records each kept node's path probability.
  void keep(int32_t budget, const TreeSizing* sizing, TokenTree* out, std::vector<int32_t>* slots) const {
    std::vector<int32_t> keep = ranked();
    if (sizing && !shape_.is_static()) budget = sized(keep, budget, *sizing);
    if (static_cast<int32_t>(keep.size()) > budget) keep.resize(static_cast<size_t>(budget));
    std::sort(keep.begin(), keep.end());
    std::vector<int32_t> new_index(static_cast<size_t>(tree_.size()), -1);
    for (int32_t node : keep) {
      const int32_t p = tree_.parent[static_cast<size_t>(node)];
      if (p >= 0 && new_index[static_cast<size_t>(p)] < 0) continue;  // parent dropped (rounding ties)
      new_index[static_cast<size_t>(node)] =
          out->add(tree_.token[static_cast<size_t>(node)], p < 0 ? -1 : new_index[static_cast<size_t>(p)]);
      out->confidence.push_back(std::exp(score_[static_cast<size_t>(node)]));
      slots->push_back(slot_[static_cast<size_t>(node)]);
    }
  }

  int32_t size() const { return tree_.size(); }

 private:
  bool better(int32_t a, int32_t b) const {
    return score_[a] > score_[b] || (score_[a] == score_[b] && a < b);
  }
  const DraftShape& shape_;
  int64_t vocab_;
  TokenTree tree_;
  std::vector<float> score_;               // cumulative draft log-probability
  std::vector<std::vector<int32_t>> path_;  // child ranks from the root
  std::vector<int32_t> slot_;              // run slot, -1 if not run
};

}  // namespace

int32_t best_tree_size(const std::vector<float>& confidence, const TreeSizing& sizing, int32_t budget) {
  const int32_t most = std::min<int32_t>(budget, static_cast<int32_t>(confidence.size()));
  if (sizing.pass_seconds.size() < 2 || most < 1) return budget;
  const int32_t last = std::min<int32_t>(most, static_cast<int32_t>(sizing.pass_seconds.size()) - 1);
  int32_t best = 1;
  double tokens = 1.0, best_rate = -1.0;
  for (int32_t n = 1; n <= last; ++n) {
    tokens += sizing.confidence_scale * confidence[static_cast<size_t>(n - 1)];
    const double rate = tokens / sizing.pass_seconds[static_cast<size_t>(n)];
    if (rate > best_rate) best_rate = rate, best = n;
  }
  return best;
}

Status validate_draft_shape(const DraftShape& shape) {
  constexpr int32_t kMaxNodes = 256;
  if (shape.num_tokens < 1) return InvalidArgument("num_speculative_tokens must be >= 1");
  if (shape.is_static()) return validate_tree_choices(shape.tree_choices, kMaxNodes);
  if (shape.top_k > 0 && (shape.max_nodes < 1 || shape.max_nodes > kMaxNodes))
    return InvalidArgument("dynamic tree: max_nodes must be in [1, " + std::to_string(kMaxNodes) + "]");
  return Status::Ok();
}

Status grow_trees(const DraftShape& shape, int64_t vocab, const std::vector<TreeJob>& jobs, const RunRounds& run) {
  int32_t max_depth = shape.num_tokens;
  if (shape.is_static()) {
    max_depth = 0;
    for (const auto& c : shape.tree_choices) max_depth = std::max<int32_t>(max_depth, static_cast<int32_t>(c.size()));
  }
  const size_t n = jobs.size();
  std::vector<Candidates> cand(n, Candidates(shape, vocab));
  std::vector<TokenTree> runs(n);
  std::vector<int32_t> level_begin(n, 0);
  for (size_t i = 0; i < n; ++i) cand[i].expand(-1, jobs[i].root_logits);
  std::vector<float> logits;
  for (int32_t depth = 1; depth < max_depth; ++depth) {
    std::vector<int32_t> active;
    std::vector<TreeRound> rounds;
    std::vector<std::vector<int32_t>> frontiers;
    for (size_t i = 0; i < n; ++i) {
      const int32_t level_end = cand[i].size();
      std::vector<int32_t> f = cand[i].frontier(level_begin[i], level_end, jobs[i].budget, jobs[i].sizing);
      level_begin[i] = level_end;
      if (f.empty()) continue;
      const int32_t first = runs[i].size();
      cand[i].mark_run(f, &runs[i]);
      active.push_back(static_cast<int32_t>(i));
      rounds.push_back(TreeRound{&runs[i], first});
      frontiers.push_back(std::move(f));
    }
    if (active.empty()) break;
    SD_RETURN_IF_ERROR(run(active, rounds, &logits));
    int64_t row = 0;
    for (size_t a = 0; a < active.size(); ++a)
      for (int32_t node : frontiers[a]) cand[static_cast<size_t>(active[a])].expand(node, logits.data() + row++ * vocab);
  }
  for (size_t i = 0; i < n; ++i) cand[i].keep(jobs[i].budget, jobs[i].sizing, jobs[i].out, jobs[i].slots);
  return Status::Ok();
}

}  // namespace sd
