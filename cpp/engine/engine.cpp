#include "engine/engine.h"

#include <algorithm>

#include "core/clock.h"
#include "core/parallel.h"
#include "engine/sequence.h"
#include "model/device_registry.h"
#include "spec/verifier.h"

namespace sd {

namespace {

// The first n tokens at positions 0 .. n - 1, as one request (causal: no mask).
ForwardBatch causal_batch(const std::vector<int32_t>& tokens, int64_t n) {
  ForwardBatch fb;
  fb.token_ids.assign(tokens.begin(), tokens.begin() + n);
  for (int64_t i = 0; i < n; ++i) fb.positions.push_back(static_cast<int32_t>(i));
  fb.qo_indptr = {0, static_cast<int32_t>(n)};
  return fb;
}

}  // namespace

Engine::~Engine() = default;

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
  SD_RETURN_IF_ERROR(create_model(opts.device, cfg, *ckpt, WeightDTypes::for_target(dtype), progress, &e->model_));
  e->opts_ = opts;
  if (e->opts_.max_model_len <= 0) e->opts_.max_model_len = cfg.max_position_embeddings;
  if (e->opts_.num_blocks == 0) {
    const int64_t per_seq = (e->opts_.max_model_len + opts.page_size - 1) / opts.page_size;
    e->opts_.num_blocks = static_cast<int32_t>(std::min<int64_t>(
        {per_seq * opts.max_num_seqs + 1, 1 << 24, e->model_->max_kv_blocks(opts.page_size)}));
    if (e->opts_.num_blocks < 2)
      return OutOfBlocks("no room for KV blocks on device '" + e->model_->device() + "' after the weights");
  }
  e->kv_.reset(new KVCache(e->model_->kv_config(e->opts_.page_size, e->opts_.num_blocks)));
  if (opts.enable_prefix_caching) e->prefix_cache_.reset(new RadixCache(opts.page_size, &e->kv_->allocator()));
  e->publish_stats();
  for (int32_t id : eos_token_ids)
    if (id >= 0 && id < cfg.vocab_size) e->eos_.push_back(id);
  *out = std::move(e);
  return Status::Ok();
}

Status Engine::validate(const GenerationRequest& r, int64_t id) const {
  const std::string who = "request " + std::to_string(id) + ": ";
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
  if (!r.hidden_state_layers.empty() && drafter_)
    return InvalidArgument(who + "hidden_state_layers needs autoregressive decoding (an engine without a drafter)");
  for (int32_t layer : r.hidden_state_layers)
    if (layer < 0 || layer >= config().num_layers)
      return InvalidArgument(who + "hidden state layer " + std::to_string(layer) + " is out of range [0, " +
                             std::to_string(config().num_layers) + ")");
  const int64_t need = blocks_for_whole_request(r);
  if (need > kv_->allocator().num_blocks() - 1)
    return OutOfBlocks(who + "needs " + std::to_string(need) + " KV blocks of " + std::to_string(opts_.page_size) +
                       " tokens but the cache has " + std::to_string(kv_->allocator().num_blocks() - 1) +
                       "; raise num_blocks or lower max_tokens");
  return Status::Ok();
}

Status Engine::attach_draft_model(const ModelConfig& cfg, const std::vector<std::string>& shard_paths,
                                  const std::string& dtype, const DraftModelOptions& opts,
                                  const std::function<void(int, int)>& progress) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!idle()) return InvalidArgument("a drafter can only be attached to an idle engine");
  if (cfg.vocab_size != config().vocab_size)
    return InvalidArgument("the draft model's vocabulary (" + std::to_string(cfg.vocab_size) +
                           " tokens) differs from the target's (" + std::to_string(config().vocab_size) + ")");
  SD_RETURN_IF_ERROR(validate_draft_shape(opts));
  std::unique_ptr<Checkpoint> ckpt;
  SD_RETURN_IF_ERROR(Checkpoint::open(shard_paths, &ckpt));
  DType dt;
  SD_RETURN_IF_ERROR(resolve_dtype(dtype, *ckpt, &dt));
  std::unique_ptr<ForwardModel> model;
  SD_RETURN_IF_ERROR(create_model(opts_.device, cfg, *ckpt, WeightDTypes::for_draft(dt, opts.vocab), progress, &model));
  DraftModelOptions o = opts;
  o.prefill_chunk = opts_.prefill_chunk;
  o.prefix_caching = opts_.enable_prefix_caching;
  const KVCacheConfig kv = model->kv_config(opts_.page_size, opts_.num_blocks);
  drafter_.reset(new DraftModelDrafter(std::move(model), kv, o));
  policy_ = ChainLengthPolicy();
  return Status::Ok();
}

Status Engine::attach_ngram(const NgramOptions& opts) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!idle()) return InvalidArgument("a drafter can only be attached to an idle engine");
  drafter_.reset(new NgramDrafter(opts));
  policy_ = ChainLengthPolicy();
  return Status::Ok();
}

Status Engine::attach_self_drafter(const SelfDraftOptions& opts) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!idle()) return InvalidArgument("a drafter can only be attached to an idle engine");
  SD_RETURN_IF_ERROR(SelfDrafter::validate(opts, config()));
  drafter_.reset(new SelfDrafter(model_.get(), kv_.get(), opts));
  policy_ = ChainLengthPolicy();
  return Status::Ok();
}

Status Engine::attach_eagle_head(const std::string& dir, const std::string& dtype, const EagleOptions& opts) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!idle()) return InvalidArgument("a drafter can only be attached to an idle engine");
  SD_RETURN_IF_ERROR(validate_draft_shape(opts));
  DType dt = model_->dtype();
  if (dtype != "auto" && !parse_dtype_name(dtype, &dt))
    return InvalidArgument("dtype must be auto, float32, bfloat16, float16, int8 or int4; got '" + dtype + "'");
  if (model_->host_embedding() == nullptr)
    return Unsupported("EAGLE heads draft on the CPU with the target's embedding table, which the target on '" +
                       model_->device() + "' does not keep in host memory");
  std::unique_ptr<Eagle3Head> head;
  SD_RETURN_IF_ERROR(Eagle3Head::load(dir, config(), dt, &head));
  drafter_.reset(new EagleDrafter(std::move(head), model_.get(), opts_.page_size, opts_.num_blocks, opts));
  policy_ = ChainLengthPolicy();
  return Status::Ok();
}

Status Engine::set_acceptance(const AcceptanceConfig& cfg) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!idle()) return InvalidArgument("the acceptance rule can only be changed on an idle engine");
  SD_RETURN_IF_ERROR(cfg.validate());
  if (cfg.mode == AcceptanceMode::kCascade) {
    if (!drafter_ || !drafter_->has_distributions())
      return InvalidArgument("acceptance 'cascade' needs a model that drafts (its distributions q); n-gram drafts have none");
    if (!drafter_->proposes_chains())
      return InvalidArgument("acceptance 'cascade' verifies chains only; the draft model proposes trees");
  }
  acceptance_ = cfg;
  return Status::Ok();
}

Status Engine::decode(std::vector<Sequence*>& running, std::vector<RequestUpdate>* updates) {
  const int64_t V = config().vocab_size;
  const size_t B = running.size();
  std::vector<TokenTree> trees(B);
  std::vector<int64_t> prefix(B);
  // 1. Drafts. Adaptive: one chain length for the whole batch from the cost model (0 when
  // acceptance is low or the batch already keeps the target busy). Steps that draft nothing
  // observe no acceptance, so after 8 of them one sequence (in turn) drafts a probe: the chain
  // the model would choose if every sequence accepted 90% (none when even that would not pay,
  // e.g. a compute-bound batch). The gap doubles up to 64, since a probe makes a draft model
  // catch up on the tokens it skipped.
  // Adaptive dynamic trees instead keep, per sequence, the tree size the cost model prefers.
  const bool adapt = adaptive_ && drafter_ && policy_.calibrated();
  const bool size_trees = adapt && !drafter_->proposes_chains();
  int32_t batch_k = 0, probe_k = 0;
  size_t probe = B;  // the sequence that probes this step, if any
  std::vector<TreeSizing> sizing(size_trees ? B : 0);
  if (size_trees) {
    const std::vector<double> cost = policy_.tree_pass_seconds(static_cast<int32_t>(B), drafter_->max_nodes());
    for (size_t k = 0; k < B; ++k) sizing[k] = TreeSizing{cost, running[k]->acceptance.confidence_scale()};
  } else if (adapt) {
    std::vector<const ChainLengthPolicy::Acceptance*> acceptances;
    for (const Sequence* s : running) acceptances.push_back(&s->acceptance);
    batch_k = policy_.choose(acceptances);
    if (batch_k > 0) {
      undrafted_steps_ = 0, probe_gap_ = 8;
    } else if (++undrafted_steps_ >= probe_gap_) {
      ChainLengthPolicy::Acceptance hopeful;
      hopeful.accepted = 9, hopeful.rejected = 1;
      probe_k = policy_.choose(std::vector<const ChainLengthPolicy::Acceptance*>(B, &hopeful));
      if (probe_k > 0) probe = static_cast<size_t>(probes_++) % B;
      undrafted_steps_ = 0;
      probe_gap_ = std::min(2 * probe_gap_, 64);
    }
  }
  std::vector<DraftJob> jobs;
  std::vector<bool> drafting_now(B, false);
  for (size_t k = 0; k < B; ++k) {
    Sequence& r = *running[k];
    prefix[k] = r.pages.num_tokens();
    if (!drafter_) continue;
    DraftJob j;
    j.seq = r.slot;
    j.tree = &trees[k];
    j.req.context = &r.tokens;
    j.req.sampling = &r.req.sampling;
    j.req.position = r.res.tokens.size();
    j.req.max_nodes = static_cast<int32_t>(std::max<int64_t>(0, opts_.max_model_len - 1 - prefix[k]));
    j.req.record_q = acceptance_.mode == AcceptanceMode::kCascade;
    j.req.pages = &r.pages;
    if (size_trees) j.req.tree_sizing = &sizing[k];
    else if (adapt) j.req.max_nodes = std::min(j.req.max_nodes, k == probe ? probe_k : batch_k);
    if (j.req.max_nodes > 0) jobs.push_back(j), drafting_now[k] = true;
  }
  if (!jobs.empty()) {
    const double t0 = now_seconds();
    SD_RETURN_IF_ERROR(drafter_->propose_batch(jobs));
    const double drafting = now_seconds() - t0;
    // A draft model first catches up on every token committed since it last ran (the prompt,
    // or the steps it sat out): that time is not the per-token drafting cost c.
    bool steady = true;
    int32_t drafted = 0;
    for (size_t k = 0; k < B; ++k) {
      Sequence& r = *running[k];
      if (!drafting_now[k]) continue;
      SD_RETURN_IF_ERROR(trees[k].validate(static_cast<int32_t>(V)));
      drafted += trees[k].size();
      steady = steady && (trees[k].empty() || r.drafted_last_step);
      r.res.draft_seconds += drafting / static_cast<double>(jobs.size());
      r.res.decode_seconds += drafting / static_cast<double>(jobs.size());  // decode time is drafting + verification
    }
    if (adapt && steady) policy_.observe_draft(drafted, drafting, static_cast<int32_t>(jobs.size()));
  }
  for (size_t k = 0; k < B; ++k) running[k]->drafted_last_step = !trees[k].empty();
  // 2. One target forward over every root and draft tree.
  const double t0 = now_seconds();
  bool any_tree = false;
  for (const TokenTree& t : trees) any_tree = any_tree || !t.empty();
  ForwardBatch fb;
  fb.qo_indptr.push_back(0);
  if (any_tree) fb.mask_indptr.push_back(0);
  for (size_t k = 0; k < B; ++k) {
    Sequence& r = *running[k];
    const TokenTree& t = trees[k];
    SD_RETURN_IF_ERROR(r.pages.append(kv_->allocator(), 1 + t.size()));  // reserve_decode_blocks made room
    fb.token_ids.push_back(r.tokens.back());
    fb.positions.push_back(static_cast<int32_t>(prefix[k]));
    for (int32_t i = 0; i < t.size(); ++i) {
      fb.token_ids.push_back(t.token[static_cast<size_t>(i)]);
      fb.positions.push_back(static_cast<int32_t>(prefix[k] + t.depth[static_cast<size_t>(i)]));
    }
    fb.qo_indptr.push_back(static_cast<int32_t>(fb.token_ids.size()));
    fb.seqs.push_back(&r.pages);
    if (any_tree) {
      t.append_mask(prefix[k], &fb.custom_mask);
      fb.mask_indptr.push_back(static_cast<int64_t>(fb.custom_mask.size()));
    }
  }
  fb.logit_rows.resize(fb.token_ids.size());
  for (size_t i = 0; i < fb.logit_rows.size(); ++i) fb.logit_rows[i] = static_cast<int32_t>(i);
  // Lossless verification happens where the logits are (on a GPU, T x V floats never come back):
  // greedy batches ask for each row's argmax only, others for the verification outcomes.
  // The lossy rules judge the logits here.
  const bool lossless = acceptance_.mode == AcceptanceMode::kLossless;
  bool argmax_only = lossless;
  for (const Sequence* s : running) argmax_only = argmax_only && s->req.sampling.greedy();
  std::vector<int32_t> row_argmax;
  RowSampling sampled;
  if (argmax_only) {
    row_argmax.resize(fb.token_ids.size());
    fb.argmax = row_argmax.data();
  } else if (lossless) {
    for (size_t k = 0; k < B; ++k) sampled.add(&trees[k], running[k]->req.sampling, running[k]->res.tokens.size());
    fb.sample = &sampled;
  } else {
    logits_.resize(fb.token_ids.size() * static_cast<size_t>(V));
  }
  const int64_t feature_width = capture_features(&fb);
  capture_requested(&fb, running);
  SD_RETURN_IF_ERROR(model_->forward(fb, *kv_, lossless ? nullptr : logits_.data()));
  store_requested(fb, running);
  const double forward_seconds = now_seconds() - t0;

  // 3. Verify, keep the accepted path's KV in sequence order, commit.
  for (size_t k = 0; k < B; ++k) {
    Sequence& r = *running[k];
    const TokenTree& t = trees[k];
    const GenerationRequest& req = r.req;
    GenerationResult& res = r.res;
    const double tv = now_seconds();
    VerifyOutcome v;
    if (argmax_only) {
      v = verify_greedy(t, row_argmax.data() + fb.qo_indptr[k]);
    } else if (lossless) {
      v = std::move(sampled.outcomes[k]);
    } else {
      // Lossy rules: p per row (processed when sampling; the softmax at T = 1 when greedy,
      // for the rule quantities).
      const float* rows = logits_.data() + static_cast<int64_t>(fb.qo_indptr[k]) * V;
      const bool greedy = req.sampling.greedy();
      std::vector<int32_t> best;  // each row's argmax, at T = 0
      if (greedy)
        for (int32_t i = 0; i <= t.size(); ++i) best.push_back(argmax(rows + i * V, V));
      probs_.resize(static_cast<size_t>((t.size() + 1) * V));
      for (int32_t i = 0; i <= t.size(); ++i)
        processed_probs(rows + i * V, V, greedy ? SamplingConfig() : req.sampling, probs_.data() + i * V);
      const int32_t* am = greedy ? best.data() : nullptr;
      if (acceptance_.mode == AcceptanceMode::kTypical) {
        v = verify_typical(t, probs_.data(), V, acceptance_.typical_epsilon, acceptance_.typical_delta, am,
                           req.sampling.seed, res.tokens.size());
      } else {
        if (!is_chain(t)) return InvalidArgument("acceptance 'cascade' got a draft tree; it verifies chains only");
        v = verify_cascade(t, probs_.data(), V, acceptance_.cascade_rule, acceptance_.cascade_alpha, am,
                           req.sampling.seed, res.tokens.size(), &scratch_);
      }
    }
    const int64_t m = static_cast<int64_t>(v.accepted.size());
    std::vector<int64_t> from(static_cast<size_t>(m)), to(static_cast<size_t>(m));  // accepted path -> sequence order
    for (int64_t j = 0; j < m; ++j) {
      from[static_cast<size_t>(j)] = prefix[k] + 1 + v.accepted[static_cast<size_t>(j)];
      to[static_cast<size_t>(j)] = prefix[k] + 1 + j;
    }
    SD_RETURN_IF_ERROR(model_->copy_tokens(*kv_, r.pages, from, to));
    r.pages.truncate(kv_->allocator(), prefix[k] + 1 + m);
    if (drafter_) drafter_->accept(r.slot, t, v.accepted);
    if (feature_width > 0) {  // the root's and the accepted nodes' features, in sequence order
      std::vector<float> rows;
      for (int64_t j = -1; j < m; ++j) {
        const float* row = features_.data() + (fb.qo_indptr[k] + (j < 0 ? 0 : 1 + v.accepted[static_cast<size_t>(j)])) * feature_width;
        rows.insert(rows.end(), row, row + feature_width);
      }
      drafter_->observe_features(r.slot, prefix[k], rows.data(), m + 1);
    }
    r.acceptance.observe(t.size(), static_cast<int32_t>(m));
    if (!t.confidence.empty()) {
      double predicted = 0;
      for (float c : t.confidence) predicted += c;
      r.acceptance.observe_confidence(predicted, static_cast<int32_t>(m));
    }
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
    if (finished) finish(r, r.finish_reason, updates);
  }
  return Status::Ok();
}

int64_t Engine::capture_features(ForwardBatch* fb) {
  if (!drafter_) return 0;
  fb->capture_layers = drafter_->feature_layers();
  if (fb->capture_layers.empty()) return 0;
  const int64_t width = static_cast<int64_t>(fb->capture_layers.size()) * config().hidden_size;
  features_.resize(fb->token_ids.size() * static_cast<size_t>(width));
  fb->captured = features_.data();
  return width;
}

void Engine::capture_requested(ForwardBatch* fb, const std::vector<Sequence*>& seqs) {
  std::vector<int32_t> layers;
  for (const Sequence* s : seqs)
    for (int32_t layer : s->req.hidden_state_layers)
      if (std::find(layers.begin(), layers.end(), layer) == layers.end()) layers.push_back(layer);
  if (layers.empty()) return;
  fb->capture_layers = layers;
  features_.resize(fb->token_ids.size() * layers.size() * static_cast<size_t>(config().hidden_size));
  fb->captured = features_.data();
}

void Engine::store_requested(const ForwardBatch& fb, const std::vector<Sequence*>& seqs) {
  if (!fb.captured) return;
  const int64_t H = config().hidden_size, width = static_cast<int64_t>(fb.capture_layers.size()) * H;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const std::vector<int32_t>& mine = seqs[b]->req.hidden_state_layers;
    if (mine.empty()) continue;
    std::vector<int64_t> cols;  // each of its layers' place among the captured ones
    for (int32_t layer : mine)
      cols.push_back(std::find(fb.capture_layers.begin(), fb.capture_layers.end(), layer) - fb.capture_layers.begin());
    std::vector<float>& out = seqs[b]->res.hidden_states;
    const int64_t row = static_cast<int64_t>(mine.size()) * H;
    for (int32_t t = fb.qo_indptr[b]; t < fb.qo_indptr[b + 1]; ++t) {
      const int64_t pos = fb.positions[static_cast<size_t>(t)];
      if (static_cast<int64_t>(out.size()) < (pos + 1) * row) out.resize(static_cast<size_t>((pos + 1) * row));
      for (size_t j = 0; j < cols.size(); ++j)
        std::copy_n(fb.captured + t * width + cols[j] * H, H, out.data() + pos * row + static_cast<int64_t>(j) * H);
    }
  }
}

Status Engine::prompt_logits(const std::vector<int32_t>& prompt, float* logits) {
  std::lock_guard<std::mutex> lock(mu_);
  SD_RETURN_IF_ERROR(validate_prompt(prompt));
  return scratch_forward(prompt, logits);
}

Status Engine::prompt_hidden_states(const std::vector<int32_t>& prompt, const std::vector<int32_t>& layers, float* out) {
  std::lock_guard<std::mutex> lock(mu_);
  SD_RETURN_IF_ERROR(validate_prompt(prompt));
  if (layers.empty()) return InvalidArgument("prompt_hidden_states: name at least one layer");
  ForwardBatch fb = causal_batch(prompt, static_cast<int64_t>(prompt.size()));
  fb.capture_layers = layers;
  fb.captured = out;
  return run_scratch(fb, nullptr);
}

Status Engine::tree_logits(const std::vector<int32_t>& prompt, const TokenTree& tree, float* logits) {
  std::lock_guard<std::mutex> lock(mu_);
  SD_RETURN_IF_ERROR(validate_prompt(prompt));
  SD_RETURN_IF_ERROR(tree.validate(config().vocab_size));
  if (static_cast<int64_t>(prompt.size()) + tree.max_depth() > opts_.max_model_len)
    return InvalidArgument("the prompt plus the tree's depth exceed the context (" + std::to_string(opts_.max_model_len) + " tokens)");
  return scratch_forward(prompt, logits, &tree);
}

Status Engine::draft(const std::vector<std::vector<int32_t>>& prompts, int32_t k, std::vector<TokenTree>* trees) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!drafter_ || drafter_->weight_bytes_per_token() == 0)
    return InvalidArgument("drafting a proposal needs a drafter that runs a model");
  if (!idle()) return InvalidArgument("drafting a proposal needs an idle engine");
  if (k < 1) return InvalidArgument("draft: k (the node budget) must be >= 1");
  int64_t blocks = 0;
  for (const auto& prompt : prompts) {
    SD_RETURN_IF_ERROR(validate_prompt(prompt));
    blocks += SeqPages(opts_.page_size).blocks_needed(static_cast<int64_t>(prompt.size()) + k);
  }
  make_room(blocks);
  const size_t B = prompts.size();
  std::vector<SeqPages> seqs(B, SeqPages(opts_.page_size));
  trees->assign(B, TokenTree());
  SamplingConfig greedy;
  greedy.temperature = 0;
  // Scratch sequence ids are negative: never a running sequence's.
  auto scratch_slot = [](size_t i) { return -1 - static_cast<int32_t>(i); };
  std::vector<DraftJob> jobs(B);
  Status st;
  for (size_t i = 0; i < B && st.ok(); ++i) {  // prefill all but the root, capturing features
    const std::vector<int32_t>& prompt = prompts[i];
    const int64_t n = static_cast<int64_t>(prompt.size());
    st = seqs[i].append(kv_->allocator(), n - 1);
    if (st.ok() && n > 1) {
      ForwardBatch fb = causal_batch(prompt, n - 1);
      fb.seqs = {&seqs[i]};
      const int64_t feature_width = capture_features(&fb);
      st = model_->forward(fb, *kv_, nullptr);
      if (st.ok() && feature_width > 0) drafter_->observe_features(scratch_slot(i), 0, features_.data(), n - 1);
    }
    DraftJob& j = jobs[i];
    j.seq = scratch_slot(i);
    j.tree = &(*trees)[i];
    j.req.context = &prompt;
    j.req.sampling = &greedy;
    j.req.max_nodes = static_cast<int32_t>(std::min<int64_t>(k, opts_.max_model_len - n));
    j.req.record_q = true;
    j.req.pages = &seqs[i];
  }
  if (st.ok()) st = drafter_->propose_batch(jobs);  // one batched proposal, as a decode step makes
  for (size_t i = 0; i < B; ++i) {
    drafter_->release(scratch_slot(i), {});
    seqs[i].release(kv_->allocator());
  }
  return st;
}

Status Engine::scratch_forward(const std::vector<int32_t>& tokens, float* logits, const TokenTree* tree) {
  const int64_t n = static_cast<int64_t>(tokens.size()), S = tree ? tree->size() : 0;
  ForwardBatch fb = causal_batch(tokens, n);
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
  return run_scratch(fb, logits);
}

Status Engine::run_scratch(ForwardBatch& fb, float* logits) {
  const int64_t n = static_cast<int64_t>(fb.token_ids.size());
  SeqPages seq(opts_.page_size);
  make_room(seq.blocks_needed(n));
  Status st = seq.append(kv_->allocator(), n);
  if (st.ok()) {
    fb.seqs = {&seq};
    st = model_->forward(fb, *kv_, logits);
  }
  seq.release(kv_->allocator());
  return st;
}

Status Engine::validate_prompt(const std::vector<int32_t>& prompt) const {
  GenerationRequest r;
  r.prompt = prompt;
  return validate(r, 0);
}

Status Engine::set_verify_costs(std::vector<std::pair<int32_t, double>> points) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!drafter_) return InvalidArgument("set_verify_costs: attach a drafter first");
  const int32_t k_max = drafter_->max_nodes();
  for (int32_t n = 1; n <= k_max + 1; ++n)
    if (std::none_of(points.begin(), points.end(), [&](const auto& p) { return p.first == n; }))
      return InvalidArgument("set_verify_costs: need a time for n = 1 .. " + std::to_string(k_max + 1) +
                             " tokens (missing " + std::to_string(n) + ")");
  for (const auto& p : points)
    if (!(p.second > 0)) return InvalidArgument("set_verify_costs: forward times must be > 0");
  policy_.calibrate(std::move(points), k_max);
  return Status::Ok();
}

Status Engine::calibrate_chain_length_policy() {
  // Forwards of 1 .. k_max + 1 tokens (one sequence's chain or tree; past 9, steps of x1.5),
  // then of whole batches' worth.
  const int32_t k_max = drafter_->max_nodes(), n_chain = k_max + 1;
  std::vector<int32_t> sizes;
  for (int32_t n = 1; n <= n_chain; n = n < 9 ? n + 1 : std::min(n_chain, n + n / 2)) {
    sizes.push_back(n);
    if (n == n_chain) break;
  }
  const int32_t n_batch = std::min(opts_.max_num_seqs * n_chain, opts_.prefill_chunk);
  for (int32_t n = 2 * n_chain; n < n_batch; n *= 2) sizes.push_back(n);
  if (n_batch > n_chain) sizes.push_back(n_batch);
  std::vector<float> logits(static_cast<size_t>(sizes.back()) * static_cast<size_t>(config().vocab_size));
  std::vector<std::pair<int32_t, double>> points;
  for (int32_t n : sizes) {
    std::vector<int32_t> tokens(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) tokens[static_cast<size_t>(i)] = (1000 + 7 * i) % config().vocab_size;
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      const double t0 = now_seconds();
      SD_RETURN_IF_ERROR(scratch_forward(tokens, logits.data()));
      best = std::min(best, now_seconds() - t0);
    }
    points.emplace_back(n, best);
  }
  policy_.calibrate(std::move(points), k_max);
  return Status::Ok();
}

}  // namespace sd
