// The engine's scheduler: requests arriving and leaving, admission with prefix-cache reuse,
// chunked prefill under a token budget, KV block pressure (evict the prefix cache, then preempt
// the newest sequence), and generate() on top of it all.
#include <algorithm>

#include "core/clock.h"
#include "engine/engine.h"
#include "engine/sequence.h"

namespace sd {

namespace {

bool contains(const std::vector<int32_t>& v, int32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int64_t Engine::step_slots() const { return drafter_ ? drafter_->max_nodes() + 1 : 1; }

int64_t Engine::blocks_for_whole_request(const GenerationRequest& r) const {
  const int64_t len = std::min<int64_t>(static_cast<int64_t>(r.prompt.size()) + r.max_tokens, opts_.max_model_len);
  return ceil_div(len + step_slots(), opts_.page_size);
}

bool Engine::idle() const { return running_.empty() && waiting_.empty() && !has_unfinished(); }

Status Engine::add_request(int64_t id, const GenerationRequest& request) {
  SD_RETURN_IF_ERROR(validate(request, id));
  return enqueue(id, request);
}

Status Engine::enqueue(int64_t id, const GenerationRequest& request) {
  SeqPtr s(new Sequence(id, request, -1, opts_.page_size, now_seconds()));
  std::lock_guard<std::mutex> lock(queue_mu_);
  if (!live_ids_.insert(id).second)
    return InvalidArgument("request id " + std::to_string(id) + " is already in use by an unfinished request");
  incoming_.push_back(std::move(s));
  return Status::Ok();
}

void Engine::abort_request(int64_t id) {
  std::lock_guard<std::mutex> lock(queue_mu_);
  if (live_ids_.count(id)) aborts_.push_back(id);
}

bool Engine::has_unfinished() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return !live_ids_.empty();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return published_;
}

void Engine::publish_stats() {
  EngineStats s = totals_;
  s.running = static_cast<int32_t>(running_.size());
  s.waiting = static_cast<int32_t>(waiting_.size());
  s.free_blocks = kv_->allocator().num_free();
  s.total_blocks = kv_->allocator().num_blocks() - 1;
  s.cached_blocks = prefix_cache_ ? static_cast<int32_t>(prefix_cache_->num_cached_blocks()) : 0;
  std::lock_guard<std::mutex> lock(queue_mu_);
  s.waiting += static_cast<int32_t>(incoming_.size());
  published_ = s;
}

void Engine::take_incoming(std::vector<RequestUpdate>* updates) {
  std::vector<SeqPtr> in;
  std::vector<int64_t> aborts;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    in.swap(incoming_);
    aborts.swap(aborts_);
  }
  for (SeqPtr& s : in) {
    s->slot = next_slot_++;
    if (next_slot_ == INT32_MAX) next_slot_ = 0;
    waiting_.push_back(std::move(s));
  }
  for (int64_t id : aborts) {
    for (SeqPtr& s : waiting_)
      if (s->id == id && s->finish_reason.empty()) finish(*s, "abort", updates);
    for (SeqPtr& s : running_)
      if (s->id == id && s->finish_reason.empty()) finish(*s, "abort", updates);
  }
}

void Engine::reset_prefix_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  if (prefix_cache_) prefix_cache_->clear();
  publish_stats();
}

bool Engine::make_room(int64_t blocks) {
  return prefix_cache_ ? prefix_cache_->ensure_free(blocks) : kv_->allocator().num_free() >= blocks;
}

void Engine::admit_waiting() {
  const int64_t P = opts_.page_size;
  while (!waiting_.empty() && static_cast<int32_t>(running_.size()) < opts_.max_num_seqs) {
    Sequence& s = *waiting_.front();
    const bool fresh = s.res.tokens.empty();
    const int64_t want = s.prefill_len();
    RadixCache::Match m;
    // A fresh prompt computes at least its last token (its logits give the first output token).
    if (prefix_cache_ && s.req.hidden_state_layers.empty()) {  // recorded prompts are computed
      m = prefix_cache_->match_prefix(s.tokens.data(), fresh ? want - 1 : want);
      lock_cache_node(m.node);  // our match must survive the eviction below
    }
    const int64_t need = ceil_div(want + step_slots(), P) - static_cast<int64_t>(m.blocks.size());
    if (!make_room(need)) {
      unlock_cache_node(m.node);
      break;  // first come, first served: the rest wait too
    }
    s.pages.share_prefix(kv_->allocator(), m.blocks);
    s.cache_node = m.node;
    if (fresh && s.res.preemptions == 0) {
      s.res.cached_prompt_tokens = m.num_tokens;
      totals_.prompt_tokens += static_cast<int64_t>(s.req.prompt.size());
      totals_.cached_prompt_tokens += m.num_tokens;
    }
    s.prefill_start = now_seconds();
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

Status Engine::prefill_chunks(std::vector<RequestUpdate>* updates) {
  int64_t budget = opts_.prefill_chunk;
  ForwardBatch fb;
  fb.qo_indptr.push_back(0);
  std::vector<Sequence*> done;        // prefills that complete in this forward
  std::vector<Sequence*> chunk_seqs;  // the forward's requests, in order
  RowSampling first_tokens;           // sampled where the logits are, as a decode step's
  for (SeqPtr& sp : running_) {
    Sequence& s = *sp;
    if (s.decoding() || budget <= 0) continue;
    const int64_t start = s.pages.num_tokens(), end = std::min(s.prefill_len(), start + budget);
    if (end > start) {
      if (!make_room(s.pages.blocks_needed(end - start))) break;  // reserve_decode_blocks preempts
      SD_RETURN_IF_ERROR(s.pages.append(kv_->allocator(), end - start));
      fb.token_ids.insert(fb.token_ids.end(), s.tokens.begin() + start, s.tokens.begin() + end);
      for (int64_t t = start; t < end; ++t) fb.positions.push_back(static_cast<int32_t>(t));
      fb.qo_indptr.push_back(static_cast<int32_t>(fb.token_ids.size()));
      fb.seqs.push_back(&s.pages);
      chunk_seqs.push_back(&s);
      budget -= end - start;
      totals_.prefill_tokens += end - start;
    }
    if (end == s.prefill_len()) {
      done.push_back(&s);
      // A fresh prompt's last row samples the first token; a preempted sequence's root is known.
      if (s.res.tokens.empty()) {
        fb.logit_rows.push_back(static_cast<int32_t>(fb.token_ids.size()) - 1);
        first_tokens.add(nullptr, s.req.sampling, 0);
      }
    }
  }
  if (!fb.token_ids.empty()) {
    fb.sample = &first_tokens;
    const int64_t feature_width = capture_features(&fb);
    capture_requested(&fb, chunk_seqs);
    SD_RETURN_IF_ERROR(model_->forward(fb, *kv_, nullptr));
    store_requested(fb, chunk_seqs);
    for (size_t b = 0; feature_width > 0 && b < chunk_seqs.size(); ++b) {
      const int32_t t0 = fb.qo_indptr[b], n = fb.qo_indptr[b + 1] - t0;
      drafter_->observe_features(chunk_seqs[b]->slot, fb.positions[static_cast<size_t>(t0)],
                                 features_.data() + t0 * feature_width, n);
    }
  }
  if (first_tokens.outcomes.size() != first_tokens.trees.size())
    return Status(StatusCode::kInternal, "prefill: a finished prompt's first token was not sampled");
  size_t row = 0;
  for (Sequence* sp : done) {
    Sequence& s = *sp;
    if (prefix_cache_) {  // the computed prompt pages become shareable right away
      const RadixCache::NodeId node = prefix_cache_->insert(s.tokens.data(), s.pages.num_tokens(), s.pages.blocks());
      lock_cache_node(node);
      unlock_cache_node(s.cache_node);
      s.cache_node = node;
    }
    if (!s.res.tokens.empty()) continue;
    const int32_t tok = first_tokens.outcomes[row++].next_token;
    s.res.prefill_seconds = now_seconds() - s.prefill_start;
    s.tokens.push_back(tok);  // the root: its KV comes with the first decode step
    if (commit(s, tok)) finish(s, s.finish_reason, updates);
  }
  return Status::Ok();
}

void Engine::reserve_decode_blocks() {
  auto need = [&]() {
    int64_t n = 0;
    for (const SeqPtr& s : running_)
      if (s->decoding()) n += s->pages.blocks_needed(step_slots());
    return n;
  };
  while (!make_room(need()) && running_.size() > 1) {
    preempt(*running_.back());
    waiting_.push_front(std::move(running_.back()));
    running_.pop_back();
  }
}

void Engine::lock_cache_node(RadixCache::NodeId node) {
  if (prefix_cache_ && node != RadixCache::kRoot) prefix_cache_->lock(node);
}

void Engine::unlock_cache_node(RadixCache::NodeId node) {
  if (prefix_cache_ && node != RadixCache::kRoot) prefix_cache_->unlock(node);
}

void Engine::release_kv(Sequence& s) {
  unlock_cache_node(s.cache_node);
  s.cache_node = RadixCache::kRoot;
  s.pages.release(kv_->allocator());
  if (drafter_) drafter_->release(s.slot, s.tokens);
}

void Engine::preempt(Sequence& s) {
  release_kv(s);
  s.drafted_last_step = false;
  s.res.preemptions += 1;
  totals_.preemptions += 1;
}

bool Engine::commit(Sequence& s, int32_t token) {
  GenerationResult& res = s.res;
  res.tokens.push_back(token);
  s.new_tokens.push_back(token);
  totals_.generation_tokens += 1;
  if (res.tokens.size() == 1) res.first_token_seconds = now_seconds() - s.arrival;
  const TokenAction act = on_token_ ? on_token_(static_cast<int32_t>(s.id), token) : TokenAction::kContinue;
  if (act == TokenAction::kAbort) abort_all_ = true;
  if (act != TokenAction::kContinue) {
    s.finish_reason = act == TokenAction::kAbort ? "abort" : "stop";
  } else if ((!s.req.ignore_eos && contains(eos_, token)) || contains(s.req.stop_token_ids, token)) {
    s.finish_reason = "stop";
  } else if (static_cast<int32_t>(res.tokens.size()) >= s.req.max_tokens ||
             static_cast<int64_t>(s.tokens.size()) >= opts_.max_model_len) {
    s.finish_reason = "length";
  }
  return !s.finish_reason.empty();
}

void Engine::finish(Sequence& s, const std::string& reason, std::vector<RequestUpdate>* updates, bool cache_pages) {
  s.finish_reason = reason;
  // Its committed tokens' pages stay in the prefix cache for later requests.
  // (A stop inside an accepted run leaves KV past the last committed token: not cached.)
  const int64_t n = std::min<int64_t>(s.pages.num_tokens(), static_cast<int64_t>(s.tokens.size()));
  if (prefix_cache_ && cache_pages && n > 0) prefix_cache_->insert(s.tokens.data(), n, s.pages.blocks());
  release_kv(s);
  s.res.finish_reason = reason;
  s.res.total_seconds = now_seconds() - s.arrival;
  totals_.requests_finished += 1;
  totals_.steps += s.res.steps;
  totals_.drafted += s.res.drafted;
  totals_.accepted += s.res.accepted;
  RequestUpdate u;
  u.id = s.id;
  u.new_tokens.swap(s.new_tokens);
  u.finished = true;
  if (!s.req.hidden_state_layers.empty()) {  // one row per token read; rows never computed (an abort) stay zero
    const int64_t rows = s.res.prompt_tokens + static_cast<int64_t>(s.res.tokens.size()) - 1;
    s.res.hidden_states.resize(static_cast<size_t>(std::max<int64_t>(rows, 0)) * s.req.hidden_state_layers.size() *
                               static_cast<size_t>(config().hidden_size));
  }
  std::vector<float> hidden;  // moved, not copied
  hidden.swap(s.res.hidden_states);
  u.result = s.res;
  u.result.hidden_states.swap(hidden);
  updates->push_back(std::move(u));
  std::lock_guard<std::mutex> lock(queue_mu_);
  live_ids_.erase(s.id);
}

Status Engine::step(std::vector<RequestUpdate>* updates) {
  std::lock_guard<std::mutex> lock(mu_);
  auto sweep = [&]() {
    auto finished = [](const SeqPtr& s) { return !s->finish_reason.empty(); };
    running_.erase(std::remove_if(running_.begin(), running_.end(), finished), running_.end());
    waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), finished), waiting_.end());
  };
  take_incoming(updates);
  sweep();
  Status st;
  if (adaptive_ && drafter_ && !policy_.calibrated() && !waiting_.empty())
    st = calibrate_chain_length_policy();
  if (st.ok()) {
    admit_waiting();
    st = prefill_chunks(updates);
    sweep();
  }
  if (st.ok()) {
    reserve_decode_blocks();
    std::vector<Sequence*> seqs;
    for (SeqPtr& s : running_)
      if (s->decoding()) seqs.push_back(s.get());
    if (!seqs.empty()) st = decode(seqs, updates);
    sweep();
  }
  if (!st.ok()) {  // after a failed forward no sequence's KV can be trusted: every one ends
    for (SeqPtr& s : running_) finish(*s, "abort", updates, false);
    for (SeqPtr& s : waiting_) finish(*s, "abort", updates, false);
    sweep();
  }
  for (SeqPtr& s : running_) {
    if (s->new_tokens.empty()) continue;
    RequestUpdate u;
    u.id = s->id;
    u.new_tokens.swap(s->new_tokens);
    updates->push_back(std::move(u));
  }
  publish_stats();
  return st;
}

Status Engine::generate(const std::vector<GenerationRequest>& requests, const TokenCallback& on_token,
                        std::vector<GenerationResult>* results) {
  std::lock_guard<std::mutex> one_at_a_time(generate_mu_);  // concurrent calls take turns
  const int32_t N = static_cast<int32_t>(requests.size());
  if (has_unfinished())
    return InvalidArgument("generate() needs an idle engine; this one is serving other requests");
  for (int32_t i = 0; i < N; ++i) SD_RETURN_IF_ERROR(validate(requests[static_cast<size_t>(i)], i));
  for (int32_t i = 0; i < N; ++i) SD_RETURN_IF_ERROR(enqueue(i, requests[static_cast<size_t>(i)]));
  results->assign(static_cast<size_t>(N), GenerationResult());
  on_token_ = on_token;
  abort_all_ = false;
  Status st;
  std::vector<RequestUpdate> updates;
  while (has_unfinished()) {
    updates.clear();
    const Status s = step(&updates);
    if (!s.ok() && st.ok()) st = s;
    for (RequestUpdate& u : updates)
      if (u.finished && u.id >= 0 && u.id < N) (*results)[static_cast<size_t>(u.id)] = std::move(u.result);
    if (abort_all_)
      for (int32_t i = 0; i < N; ++i) abort_request(i);
  }
  on_token_ = nullptr;
  return st;
}

}  // namespace sd
