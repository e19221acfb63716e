#include "engine/engine.h"

#include <algorithm>
#include <chrono>

#include "core/parallel.h"
#include "spec/verifier.h"

namespace sd {

namespace {

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

bool contains(const std::vector<int32_t>& v, int32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

}  // namespace

Status Engine::create(const ModelConfig& cfg, const std::vector<std::string>& shard_paths,
                      const EngineOptions& opts, std::vector<int32_t> eos_token_ids,
                      const std::function<void(int, int)>& progress, std::unique_ptr<Engine>* out) {
  if (opts.page_size <= 0 || opts.max_num_seqs <= 0 || opts.prefill_chunk <= 0 || opts.num_blocks < 0)
    return InvalidArgument("page_size, max_num_seqs and prefill_chunk must be positive, num_blocks >= 0");
  set_num_threads(opts.num_threads);
  std::unique_ptr<Checkpoint> ckpt;
  SD_RETURN_IF_ERROR(Checkpoint::open(shard_paths, &ckpt));
  DType dtype;
  SD_RETURN_IF_ERROR(resolve_dtype(opts.dtype, *ckpt, &dtype));
  std::unique_ptr<Engine> e(new Engine());
  SD_RETURN_IF_ERROR(LlamaModel::create(cfg, *ckpt, WeightDTypes::for_target(dtype), progress, &e->model_));
  e->opts_ = opts;
  if (e->opts_.max_model_len <= 0) e->opts_.max_model_len = cfg.max_position_embeddings;
  if (e->opts_.num_blocks == 0) {
    const int64_t per_seq = (e->opts_.max_model_len + opts.page_size - 1) / opts.page_size;
    e->opts_.num_blocks = static_cast<int32_t>(std::min<int64_t>(per_seq * opts.max_num_seqs + 1, 1 << 24));
  }
  e->kv_.reset(new KVCache(e->model_->kv_config(e->opts_.page_size, e->opts_.num_blocks)));
  for (int32_t id : eos_token_ids)
    if (id >= 0 && id < cfg.vocab_size) e->eos_.push_back(id);
  *out = std::move(e);
  return Status::Ok();
}

Status Engine::validate(const GenerationRequest& r, int32_t index) const {
  const std::string who = "request " + std::to_string(index) + ": ";
  if (r.prompt.empty()) return InvalidArgument(who + "the prompt is empty");
  for (int32_t id : r.prompt)
    if (id < 0 || id >= config().vocab_size)
      return InvalidArgument(who + "prompt token id " + std::to_string(id) + " is out of range [0, " +
                             std::to_string(config().vocab_size) + ")");
  if (static_cast<int64_t>(r.prompt.size()) >= opts_.max_model_len)
    return InvalidArgument(who + "the prompt has " + std::to_string(r.prompt.size()) +
                           " tokens; the context holds " + std::to_string(opts_.max_model_len) +
                           " (prompt plus at least one generated token)");
  if (r.max_tokens < 1) return InvalidArgument(who + "max_tokens must be >= 1, got " + std::to_string(r.max_tokens));
  SD_RETURN_IF_ERROR(r.sampling.validate());
  return Status::Ok();
}

Status Engine::prefill(SeqPages& seq, const std::vector<int32_t>& prompt, std::vector<float>* last_logits) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  last_logits->resize(static_cast<size_t>(config().vocab_size));
  for (int64_t start = 0; start < n; start += opts_.prefill_chunk) {
    const int64_t len = std::min<int64_t>(opts_.prefill_chunk, n - start);
    SD_RETURN_IF_ERROR(seq.append(kv_->allocator(), len));
    ForwardBatch fb;
    fb.token_ids.assign(prompt.begin() + start, prompt.begin() + start + len);
    fb.positions.resize(static_cast<size_t>(len));
    for (int64_t i = 0; i < len; ++i) fb.positions[static_cast<size_t>(i)] = static_cast<int32_t>(start + i);
    fb.qo_indptr = {0, static_cast<int32_t>(len)};
    fb.seqs = {&seq};
    if (start + len == n) fb.logit_rows = {static_cast<int32_t>(len - 1)};
    SD_RETURN_IF_ERROR(model_->forward(fb, *kv_, last_logits->data()));
  }
  return Status::Ok();
}

struct Engine::Running {
  int32_t index;
  SeqPages seq;                 // KV of every committed token but the last (the root)
  std::vector<int32_t> tokens;  // prompt + generated; tokens.back() is the root
  ChainLengthPolicy::Acceptance acceptance;
};

Status Engine::attach_draft_model(const ModelConfig& cfg, const std::vector<std::string>& shard_paths,
                                  const std::string& dtype, const DraftModelOptions& opts,
                                  const std::function<void(int, int)>& progress) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cfg.vocab_size != config().vocab_size)
    return InvalidArgument("the draft model's vocabulary (" + std::to_string(cfg.vocab_size) +
                           " tokens) differs from the target's (" + std::to_string(config().vocab_size) + ")");
  if (opts.num_tokens < 1) return InvalidArgument("num_speculative_tokens must be >= 1");
  if (!opts.tree_choices.empty()) SD_RETURN_IF_ERROR(validate_tree_choices(opts.tree_choices, 256));
  if (opts.top_k > 0 && (opts.max_nodes < 1 || opts.max_nodes > 256))
    return InvalidArgument("dynamic tree: max_nodes must be in [1, 256]");
  std::unique_ptr<Checkpoint> ckpt;
  SD_RETURN_IF_ERROR(Checkpoint::open(shard_paths, &ckpt));
  DType dt;
  SD_RETURN_IF_ERROR(resolve_dtype(dtype, *ckpt, &dt));
  std::unique_ptr<LlamaModel> model;
  SD_RETURN_IF_ERROR(LlamaModel::create(cfg, *ckpt, WeightDTypes::for_draft(dt), progress, &model));
  DraftModelOptions o = opts;
  o.prefill_chunk = opts_.prefill_chunk;
  const KVCacheConfig kv = model->kv_config(opts_.page_size, opts_.num_blocks);
  drafter_.reset(new DraftModelDrafter(std::move(model), kv, o));
  policy_ = ChainLengthPolicy();
  return Status::Ok();
}

void Engine::attach_ngram(const NgramOptions& opts) {
  std::lock_guard<std::mutex> lock(mu_);
  drafter_.reset(new NgramDrafter(opts));
  policy_ = ChainLengthPolicy();
}

Status Engine::step(std::vector<Running>& running, const std::vector<GenerationRequest>& requests,
                    std::vector<GenerationResult>* results,
                    const std::function<bool(Running&, int32_t)>& commit, std::vector<bool>* done) {
  const int64_t V = config().vocab_size;
  const size_t B = running.size();
  std::vector<TokenTree> trees(B);
  std::vector<int64_t> prefix(B);
  // 1. Drafts.
  for (size_t k = 0; k < B; ++k) {
    Running& r = running[k];
    prefix[k] = r.seq.num_tokens();
    if (!drafter_) continue;
    GenerationResult& res = (*results)[static_cast<size_t>(r.index)];
    DraftRequest dr;
    dr.context = &r.tokens;
    dr.sampling = &requests[static_cast<size_t>(r.index)].sampling;
    dr.position = res.tokens.size();
    dr.max_nodes = static_cast<int32_t>(std::max<int64_t>(0, opts_.max_model_len - 1 - prefix[k]));
    const bool adapt = adaptive_ && policy_.calibrated();
    if (adapt) dr.max_nodes = std::min(dr.max_nodes, policy_.choose(r.acceptance));
    const double t0 = now_seconds();
    SD_RETURN_IF_ERROR(drafter_->propose(r.index, dr, &trees[k]));
    SD_RETURN_IF_ERROR(trees[k].validate(static_cast<int32_t>(V)));
    const double drafting = now_seconds() - t0;
    res.draft_seconds += drafting;
    res.decode_seconds += drafting;  // decode time is drafting + verification
    if (adapt) policy_.observe_draft(trees[k].size(), drafting);
  }
  // 2. One target forward over every root and draft tree.
  const double t0 = now_seconds();
  bool any_tree = false;
  for (const TokenTree& t : trees) any_tree = any_tree || !t.empty();
  ForwardBatch fb;
  fb.qo_indptr.push_back(0);
  if (any_tree) fb.mask_indptr.push_back(0);
  for (size_t k = 0; k < B; ++k) {
    Running& r = running[k];
    const TokenTree& t = trees[k];
    SD_RETURN_IF_ERROR(r.seq.append(kv_->allocator(), 1 + t.size()));  // reserved up front
    fb.token_ids.push_back(r.tokens.back());
    fb.positions.push_back(static_cast<int32_t>(prefix[k]));
    for (int32_t i = 0; i < t.size(); ++i) {
      fb.token_ids.push_back(t.token[static_cast<size_t>(i)]);
      fb.positions.push_back(static_cast<int32_t>(prefix[k] + t.depth[static_cast<size_t>(i)]));
    }
    fb.qo_indptr.push_back(static_cast<int32_t>(fb.token_ids.size()));
    fb.seqs.push_back(&r.seq);
    if (any_tree) {
      t.append_mask(prefix[k], &fb.custom_mask);
      fb.mask_indptr.push_back(static_cast<int64_t>(fb.custom_mask.size()));
    }
  }
  fb.logit_rows.resize(fb.token_ids.size());
  for (size_t i = 0; i < fb.logit_rows.size(); ++i) fb.logit_rows[i] = static_cast<int32_t>(i);
  logits_.resize(fb.token_ids.size() * static_cast<size_t>(V));
  SD_RETURN_IF_ERROR(model_->forward(fb, *kv_, logits_.data()));
  const double forward_seconds = now_seconds() - t0;

  // 3. Verify, keep the accepted path's KV in sequence order, commit.
  for (size_t k = 0; k < B; ++k) {
    Running& r = running[k];
    const TokenTree& t = trees[k];
    const GenerationRequest& req = requests[static_cast<size_t>(r.index)];
    GenerationResult& res = (*results)[static_cast<size_t>(r.index)];
    const double tv = now_seconds();
    const float* rows = logits_.data() + static_cast<int64_t>(fb.qo_indptr[k]) * V;
    VerifyOutcome v;
    if (req.sampling.greedy()) {
      std::vector<int32_t> best(static_cast<size_t>(t.size() + 1));
      for (int32_t i = 0; i <= t.size(); ++i) best[static_cast<size_t>(i)] = argmax(rows + i * V, V);
      v = verify_greedy(t, best.data());
    } else {
      probs_.resize(static_cast<size_t>((t.size() + 1) * V));
      for (int32_t i = 0; i <= t.size(); ++i) processed_probs(rows + i * V, V, req.sampling, probs_.data() + i * V);
      v = verify_sampling(t, probs_.data(), V, req.sampling.seed, res.tokens.size(), &scratch_);
    }
    const int64_t m = static_cast<int64_t>(v.accepted.size());
    for (int64_t j = 0; j < m; ++j) kv_->copy_token(r.seq, prefix[k] + 1 + v.accepted[static_cast<size_t>(j)], prefix[k] + 1 + j);
    r.seq.truncate(kv_->allocator(), prefix[k] + 1 + m);
    if (drafter_) drafter_->accept(r.index, t, v.accepted);
    r.acceptance.observe(t.size(), static_cast<int32_t>(m));
    res.steps += 1;
    res.drafted += t.size();
    res.accepted += m;
    const int32_t depth = t.max_depth();
    if (static_cast<int32_t>(res.proposed_by_depth.size()) < depth) {
      res.proposed_by_depth.resize(static_cast<size_t>(depth), 0);
      res.accepted_by_depth.resize(static_cast<size_t>(depth), 0);
    }
    for (int32_t d = 0; d < depth; ++d) res.proposed_by_depth[static_cast<size_t>(d)] += 1;
    for (int64_t d = 0; d < m; ++d) res.accepted_by_depth[static_cast<size_t>(d)] += 1;
    res.verify_seconds += forward_seconds / static_cast<double>(B) + (now_seconds() - tv);
    res.decode_seconds += forward_seconds / static_cast<double>(B) + (now_seconds() - tv);
    bool finished = false;
    for (int64_t j = 0; j <= m && !finished; ++j) {
      const int32_t tok = j < m ? t.token[static_cast<size_t>(v.accepted[static_cast<size_t>(j)])] : v.next_token;
      r.tokens.push_back(tok);
      finished = commit(r, tok);
    }
    (*done)[k] = finished;
  }
  return Status::Ok();
}

Status Engine::generate(const std::vector<GenerationRequest>& requests, const TokenCallback& on_token,
                        std::vector<GenerationResult>* results) {
  std::lock_guard<std::mutex> lock(mu_);
  const int32_t N = static_cast<int32_t>(requests.size());
  for (int32_t i = 0; i < N; ++i) SD_RETURN_IF_ERROR(validate(requests[static_cast<size_t>(i)], i));
  // Blocks each request may need (its whole length plus the largest draft tree); one that could
  // never fit is an error before any work.
  const int32_t P = opts_.page_size;
  const int64_t tree_slots = drafter_ ? drafter_->max_nodes() + 1 : 0;
  std::vector<int64_t> need(static_cast<size_t>(N));
  for (int32_t i = 0; i < N; ++i) {
    const GenerationRequest& r = requests[static_cast<size_t>(i)];
    const int64_t len = std::min<int64_t>(static_cast<int64_t>(r.prompt.size()) + r.max_tokens, opts_.max_model_len) + tree_slots;
    need[static_cast<size_t>(i)] = (len + P - 1) / P;
    if (need[static_cast<size_t>(i)] > kv_->allocator().num_blocks() - 1)
      return OutOfBlocks("request " + std::to_string(i) + " needs " + std::to_string(need[static_cast<size_t>(i)]) +
                         " KV blocks of " + std::to_string(P) + " tokens but the cache has " +
                         std::to_string(kv_->allocator().num_blocks() - 1) +
                         "; raise num_blocks or lower max_tokens");
  }

  if (adaptive_ && drafter_ && drafter_->proposes_chains() && !policy_.calibrated())
    SD_RETURN_IF_ERROR(calibrate_chain_length_policy());
  results->assign(static_cast<size_t>(N), GenerationResult());
  const double t_start = now_seconds();
  const int64_t V = config().vocab_size;
  std::vector<Running> running;
  std::vector<float> logits;
  int32_t next_request = 0;
  int64_t reserved = 0;  // blocks promised to running requests
  bool aborted = false;

  auto release = [&](Running& r) {
    r.seq.release(kv_->allocator());
    if (drafter_) drafter_->release(r.index);
    reserved -= need[static_cast<size_t>(r.index)];
    (*results)[static_cast<size_t>(r.index)].total_seconds = now_seconds() - t_start;
  };
  // Records a committed token; returns true when the request is finished.
  auto commit = [&](Running& r, int32_t token) {
    const GenerationRequest& req = requests[static_cast<size_t>(r.index)];
    GenerationResult& res = (*results)[static_cast<size_t>(r.index)];
    res.tokens.push_back(token);
    if (res.tokens.size() == 1) res.first_token_seconds = now_seconds() - t_start;
    TokenAction act = on_token ? on_token(r.index, token) : TokenAction::kContinue;
    if (act == TokenAction::kAbort) aborted = true;
    if (act != TokenAction::kContinue) {
      res.finish_reason = act == TokenAction::kAbort ? "abort" : "stop";
      return true;
    }
    if ((!req.ignore_eos && contains(eos_, token)) || contains(req.stop_token_ids, token)) {
      res.finish_reason = "stop";
      return true;
    }
    if (static_cast<int32_t>(res.tokens.size()) >= req.max_tokens ||
        static_cast<int64_t>(r.tokens.size()) >= opts_.max_model_len) {
      res.finish_reason = "length";
      return true;
    }
    return false;
  };

  auto loop = [&]() -> Status {
    while (!aborted && (next_request < N || !running.empty())) {
      // Admit requests while their blocks are free.
      while (!aborted && next_request < N && static_cast<int32_t>(running.size()) < opts_.max_num_seqs &&
             reserved + need[static_cast<size_t>(next_request)] <= kv_->allocator().num_blocks() - 1) {
        const int32_t i = next_request++;
        const GenerationRequest& req = requests[static_cast<size_t>(i)];
        GenerationResult& res = (*results)[static_cast<size_t>(i)];
        res.prompt_tokens = static_cast<int64_t>(req.prompt.size());
        reserved += need[static_cast<size_t>(i)];
        Running r{i, SeqPages(P), req.prompt};
        const double t0 = now_seconds();
        const Status pst = prefill(r.seq, req.prompt, &logits);
        if (!pst.ok()) {
          release(r);
          return pst;
        }
        const int32_t tok = sample_token(logits.data(), V, req.sampling, 0, &scratch_);
        res.prefill_seconds = now_seconds() - t0;
        // The last prompt token's KV is in the cache; the sampled token becomes the root.
        r.tokens.push_back(tok);
        if (commit(r, tok)) {
          release(r);
        } else {
          running.push_back(std::move(r));
        }
      }
      if (aborted || running.empty()) break;
      std::vector<bool> done(running.size(), false);
      SD_RETURN_IF_ERROR(step(running, requests, results, commit, &done));
      std::vector<Running> still;
      for (size_t k = 0; k < running.size(); ++k) {
        if (done[k]) {
          release(running[k]);
        } else {
          still.push_back(std::move(running[k]));
        }
      }
      running = std::move(still);
    }
    return Status::Ok();
  };
  const Status st = loop();
  for (Running& r : running) {
    release(r);
    (*results)[static_cast<size_t>(r.index)].finish_reason = "abort";
  }
  for (GenerationResult& res : *results) {
    if (res.finish_reason.empty()) res.finish_reason = "abort";
    if (res.total_seconds == 0) res.total_seconds = now_seconds() - t_start;
  }
  return st;
}

Status Engine::prompt_logits(const std::vector<int32_t>& prompt, float* logits) {
  std::lock_guard<std::mutex> lock(mu_);
  GenerationRequest r;
  r.prompt = prompt;
  SD_RETURN_IF_ERROR(validate(r, 0));
  return scratch_forward(prompt, logits);
}

Status Engine::tree_logits(const std::vector<int32_t>& prompt, const TokenTree& tree, float* logits) {
  std::lock_guard<std::mutex> lock(mu_);
  GenerationRequest r;
  r.prompt = prompt;
  SD_RETURN_IF_ERROR(validate(r, 0));
  SD_RETURN_IF_ERROR(tree.validate(config().vocab_size));
  if (static_cast<int64_t>(prompt.size()) + tree.max_depth() > opts_.max_model_len)
    return InvalidArgument("the prompt plus the tree's depth exceed the context (" + std::to_string(opts_.max_model_len) + " tokens)");
  return scratch_forward(prompt, logits, &tree);
}

Status Engine::scratch_forward(const std::vector<int32_t>& tokens, float* logits, const TokenTree* tree) {
  const int64_t n = static_cast<int64_t>(tokens.size()), S = tree ? tree->size() : 0;
  ForwardBatch fb;
  fb.token_ids = tokens;
  fb.positions.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) fb.positions[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  for (int64_t i = tree ? n - 1 : 0; i < n + S; ++i) fb.logit_rows.push_back(static_cast<int32_t>(i));
  if (tree) {
    fb.token_ids.insert(fb.token_ids.end(), tree->token.begin(), tree->token.end());
    for (int32_t d : tree->depth) fb.positions.push_back(static_cast<int32_t>(n - 1 + d));
    const int64_t kv_len = n + S;  // causal rows for the prefix, then the tree's rows
    fb.custom_mask.assign(static_cast<size_t>((n - 1) * kv_len), 0);
    for (int64_t i = 0; i < n - 1; ++i) std::fill_n(fb.custom_mask.begin() + i * kv_len, i + 1, 1);
    tree->append_mask(n - 1, &fb.custom_mask);
    fb.mask_indptr = {0, static_cast<int64_t>(fb.custom_mask.size())};
  }
  fb.qo_indptr = {0, static_cast<int32_t>(n + S)};
  SeqPages seq(opts_.page_size);
  Status st = seq.append(kv_->allocator(), n + S);
  if (!st.ok()) return st;
  fb.seqs = {&seq};
  st = model_->forward(fb, *kv_, logits);
  seq.release(kv_->allocator());
  return st;
}

Status Engine::calibrate_chain_length_policy() {
  const int32_t n_max = drafter_->max_nodes() + 1;
  std::vector<float> logits(static_cast<size_t>(n_max) * static_cast<size_t>(config().vocab_size));
  std::vector<double> seconds;
  for (int32_t n = 1; n <= n_max; ++n) {
    std::vector<int32_t> tokens(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) tokens[static_cast<size_t>(i)] = (1000 + 7 * i) % config().vocab_size;
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      const double t0 = now_seconds();
      SD_RETURN_IF_ERROR(scratch_forward(tokens, logits.data()));
      best = std::min(best, now_seconds() - t0);
    }
    seconds.push_back(best);
  }
  policy_.calibrate(std::move(seconds));
  return Status::Ok();
}

}  // namespace sd
