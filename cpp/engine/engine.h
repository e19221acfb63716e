// Engine: one model, its paged KV cache with a prefix cache, an optional drafter, and the
// scheduler of continuous batching. Requests join (add_request) and leave (finish, abort_request)
// between steps; each step() prefills prompt chunks under a token budget and then decodes (or
// drafts and verifies) every running sequence in one batched target forward. KV blocks are
// allocated as sequences grow; when they run out, the prefix cache is evicted first, then the
// most recently admitted sequence is preempted (freed, and recomputed when blocks are back).
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "kv/radix_cache.h"
#include "model/forward_model.h"
#include "sampling/sampler.h"
#include "spec/chain_length_policy.h"
#include "spec/draft_model_drafter.h"
#include "spec/eagle_drafter.h"
#include "spec/lossy_verifier.h"
#include "spec/ngram_drafter.h"
#include "spec/self_drafter.h"

namespace sd {

struct EngineOptions {
  std::string device = "cpu";    // "cpu" or "cuda" (model/device_registry.h); drafts run there too
  std::string dtype = "auto";
  int32_t page_size = 16;
  int32_t num_blocks = 0;        // 0: enough for max_model_len tokens x max_num_seqs
  int32_t max_num_seqs = 8;      // sequences decoding at once
  int64_t max_model_len = 0;     // 0: the config's max_position_embeddings
  int32_t prefill_chunk = 512;   // prompt tokens per step, over all sequences (chunked prefill)
  int32_t num_threads = 0;       // 0: one per core
  bool enable_prefix_caching = true;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingConfig sampling;
  int32_t max_tokens = 16;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  // Record the residual stream after each of these decoder layers for every token the target
  // reads: the prompt, then each generated token but the last (what prompt_hidden_states gives
  // for the whole sequence, without a second pass; EAGLE-3 training data). Needs an engine
  // without a drafter; the prompt is then computed, not served from the prefix cache.
  std::vector<int32_t> hidden_state_layers;
};

struct GenerationResult {
  std::vector<int32_t> tokens;
  std::string finish_reason;  // "stop", "length" or "abort"
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;  // served from the prefix cache (whole pages)
  int64_t preemptions = 0;           // times freed for lack of KV blocks and recomputed
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double first_token_seconds = 0;  // from the request's arrival
  double total_seconds = 0;        // from the request's arrival
  int64_t steps = 0;  // target forwards after the prefill
  // Speculation (zero without a drafter).
  int64_t drafted = 0;   // draft tokens proposed (tree nodes)
  int64_t accepted = 0;  // draft tokens accepted
  double draft_seconds = 0;
  double verify_seconds = 0;
  std::vector<int64_t> proposed_by_depth;  // [d]: steps whose tree reached depth d + 1
  std::vector<int64_t> accepted_by_depth;  // [d]: steps that accepted at least d + 1 tokens
  // With hidden_state_layers: [prompt_tokens + tokens - 1][layers][hidden] floats, row-major
  // (rows an aborted request never computed are zero).
  std::vector<float> hidden_states;
};

// Called after every committed token: return kContinue, kStop (this request is done, reason
// "stop") or kAbort (every unfinished request ends with reason "abort").
enum class TokenAction { kContinue = 0, kStop = 1, kAbort = 2 };
using TokenCallback = std::function<TokenAction(int32_t request, int32_t token)>;

// What one step did for one request: tokens committed, and the result once it finished.
struct RequestUpdate {
  int64_t id = 0;
  std::vector<int32_t> new_tokens;
  bool finished = false;
  GenerationResult result;  // when finished (tokens: all of them)
};

// Counters over the engine's lifetime and its state after the last step.
struct EngineStats {
  int32_t running = 0, waiting = 0;
  int32_t free_blocks = 0, cached_blocks = 0, total_blocks = 0;  // total excludes the null block
  int64_t prompt_tokens = 0, cached_prompt_tokens = 0, generation_tokens = 0;
  int64_t prefill_tokens = 0;  // tokens computed by prefill forwards (recomputation included)
  int64_t requests_finished = 0, steps = 0, drafted = 0, accepted = 0, preemptions = 0;
};

class Engine {
 public:
  static Status create(const ModelConfig& cfg, const std::vector<std::string>& shard_paths,
                       const EngineOptions& opts, std::vector<int32_t> eos_token_ids,
                       const std::function<void(int, int)>& progress, std::unique_ptr<Engine>* out);

  ~Engine();

  // Continuous batching. add_request and abort_request may be called from any thread, also
  // while step() runs on another; they take effect at the next step. Ids are the caller's
  // (unique among unfinished requests).
  Status add_request(int64_t id, const GenerationRequest& request);
  void abort_request(int64_t id);
  // One scheduling iteration; appends an update per request that committed tokens or finished.
  Status step(std::vector<RequestUpdate>* updates);
  bool has_unfinished() const;
  EngineStats stats() const;

  // Runs requests to completion, results in order; on_token is called after every committed
  // token. Concurrent calls take turns; requests added through add_request meanwhile are an
  // error (the engine must be idle).
  Status generate(const std::vector<GenerationRequest>& requests, const TokenCallback& on_token,
                  std::vector<GenerationResult>* results);

  // Speculative decoding: drafts from a second model (its own KV cache, same vocabulary), from
  // n-gram prompt lookup, or from the target itself. Replaces any earlier drafter.
  Status attach_draft_model(const ModelConfig& cfg, const std::vector<std::string>& shard_paths,
                            const std::string& dtype, const DraftModelOptions& opts,
                            const std::function<void(int, int)>& progress);
  Status attach_ngram(const NgramOptions& opts);
  // Self-speculation (spec/self_drafter.h): the target drafts with a subset of its layers or a
  // sparse KV window, over its own weights and cache.
  Status attach_self_drafter(const SelfDraftOptions& opts);
  // Feature-level drafting (spec/eagle_drafter.h): an EAGLE-3 head directory (SpecForge format)
  // trained for this target.
  Status attach_eagle_head(const std::string& dir, const std::string& dtype, const EagleOptions& opts);
  const Drafter* drafter() const { return drafter_.get(); }
  // Adaptive speculation: each step drafts the chain length k (up to the drafter's; 0 = none),
  // or keeps the dynamic-tree size, that the cost model (spec/chain_length_policy.h) expects to
  // be fastest for the running batch. Off by default: seeded sampling stays reproducible only
  // with a fixed shape.
  void set_adaptive_speculation(bool on) { adaptive_ = on; }
  // The cost model's target forward times, (n tokens, seconds) with n = 1 .. the drafter's
  // max_nodes + 1 among them, given instead of measured at the first request (what-if studies,
  // tests); the drafting time is still measured. After attaching the drafter.
  Status set_verify_costs(std::vector<std::pair<int32_t, double>> points);
  bool adaptive_speculation() const { return adaptive_; }
  const ChainLengthPolicy& chain_length_policy() const { return policy_; }
  // How drafts are judged (spec/lossy_verifier.h): lossless (the default), or the explicitly
  // lossy typical acceptance / speculative cascades. On an idle engine; "cascade" needs a
  // draft-model chain drafter attached first.
  Status set_acceptance(const AcceptanceConfig& cfg);
  const AcceptanceConfig& acceptance() const { return acceptance_; }

  // Logits of every prompt position ([prompt.size() x vocab] floats written to `logits`),
  // computed on a scratch sequence (tests, scoring, step-cost measurements).
  Status prompt_logits(const std::vector<int32_t>& prompt, float* logits);
  // The residual stream after each of `layers` for every prompt position
  // ([prompt.size() x layers.size() x hidden] floats): the features an EAGLE-3 head reads.
  Status prompt_hidden_states(const std::vector<int32_t>& prompt, const std::vector<int32_t>& layers, float* out);
  // One forward of prompt + a token tree hanging off its last token (the root), with the tree
  // mask and positions = depth, as verification runs it: logits of the root and of every node
  // ([1 + tree.size() x vocab] floats).
  Status tree_logits(const std::vector<int32_t>& prompt, const TokenTree& tree, float* logits);

  // What the attached model-based drafter proposes greedily after each prompt (its last token
  // the root, everything before it prefilled by the target on a scratch sequence), at most k
  // nodes each, all in ONE batched proposal as a decode step makes it: a chain with the draft's
  // temperature-1 distribution of each step in tree.q, or a tree (deterministic top-ranked
  // children, no q). For tests and diagnostics. Fewer nodes when the context ends.
  Status draft(const std::vector<std::vector<int32_t>>& prompts, int32_t k, std::vector<TokenTree>* trees);

  const ModelConfig& config() const { return model_->config(); }
  const EngineOptions& options() const { return opts_; }
  const ForwardModel& model() const { return *model_; }
  KVCache& kv_cache() { return *kv_; }
  // Blocks the prefix cache holds (free for new requests once evicted).
  int64_t num_cached_blocks() const { return prefix_cache_ ? prefix_cache_->num_cached_blocks() : 0; }
  void reset_prefix_cache();  // drops every cached page no running request uses
  int64_t max_model_len() const { return opts_.max_model_len; }

 private:
  Engine() = default;
  struct Sequence;
  using SeqPtr = std::unique_ptr<Sequence>;
  // Checks ids, lengths, sampling, and that the request fits the KV cache when alone.
  Status validate(const GenerationRequest& r, int64_t id) const;
  int64_t step_slots() const;  // KV slots one decode step may append: the root + the largest draft tree
  int64_t blocks_for_whole_request(const GenerationRequest& r) const;
  bool idle() const;  // no request anywhere (with mu_ held)
  Status enqueue(int64_t id, const GenerationRequest& request);  // add_request after validation
  // Scheduling (engine/scheduler.cpp).
  void take_incoming(std::vector<RequestUpdate>* updates);
  void admit_waiting();
  Status prefill_chunks(std::vector<RequestUpdate>* updates);
  bool make_room(int64_t blocks);  // evicts the prefix cache; true when that many blocks are free
  void reserve_decode_blocks();    // preempts the newest sequences until every running one fits a step
  void release_kv(Sequence& s);  // drops its prefix-cache lock, its pages and the drafter's state
  void preempt(Sequence& s);
  // Ends a sequence: frees its blocks (caching its committed pages unless told not to) and
  // reports it.
  void finish(Sequence& s, const std::string& reason, std::vector<RequestUpdate>* updates, bool cache_pages = true);
  void lock_cache_node(RadixCache::NodeId node);  // no-ops for the root and without a prefix cache
  void unlock_cache_node(RadixCache::NodeId node);
  // Records a committed token; true when the sequence is finished (its reason set).
  bool commit(Sequence& s, int32_t token);
  // Decoding (engine/engine.cpp): drafts, one target forward, verification, commits.
  Status decode(std::vector<Sequence*>& seqs, std::vector<RequestUpdate>* updates);
  Status scratch_forward(const std::vector<int32_t>& tokens, float* logits, const TokenTree* tree = nullptr);
  // Runs fb (one request) on a scratch sequence that holds its tokens, then frees it.
  Status run_scratch(ForwardBatch& fb, float* logits);
  Status validate_prompt(const std::vector<int32_t>& prompt) const;  // validate() for a bare prompt
  // Asks fb to capture the drafter's feature layers into features_; returns a row's width (0: none).
  int64_t capture_features(ForwardBatch* fb);
  // The requests' own hidden_state_layers (only without a drafter: validate()): capture_requested asks
  // fb (a forward over `seqs`, in qo_indptr order) for the union of their layers into
  // features_; store_requested copies each request's rows into its result, by position (a
  // preempted sequence's recomputation overwrites the same rows).
  void capture_requested(ForwardBatch* fb, const std::vector<Sequence*>& seqs);
  void store_requested(const ForwardBatch& fb, const std::vector<Sequence*>& seqs);
  Status calibrate_chain_length_policy();
  void publish_stats();

  EngineOptions opts_;
  std::vector<int32_t> eos_;
  std::unique_ptr<ForwardModel> model_;
  std::unique_ptr<KVCache> kv_;
  std::unique_ptr<RadixCache> prefix_cache_;  // null when prefix caching is off
  std::unique_ptr<Drafter> drafter_;
  bool adaptive_ = false;
  AcceptanceConfig acceptance_;
  ChainLengthPolicy policy_;
  int32_t undrafted_steps_ = 0;  // adaptive steps in a row that chose not to draft
  int32_t probe_gap_ = 8;        // undrafted steps before a one-token probe
  int64_t probes_ = 0;           // probes so far (picks the probing sequence in turn)
  std::vector<float> logits_, probs_, scratch_, features_;
  std::mutex mu_;           // one step (or scratch forward) at a time
  std::mutex generate_mu_;  // one generate() at a time
  // Owned by step(): sequences waiting for admission (preempted ones first) and running ones.
  std::deque<SeqPtr> waiting_;
  std::vector<SeqPtr> running_;
  int32_t next_slot_ = 0;  // drafter handles
  TokenCallback on_token_;  // set by generate()
  bool abort_all_ = false;  // on_token_ asked to abort every request
  EngineStats totals_;
  // Shared with other threads.
  mutable std::mutex queue_mu_;
  std::vector<SeqPtr> incoming_;
  std::vector<int64_t> aborts_;
  std::set<int64_t> live_ids_;  // added and not yet finished
  EngineStats published_;       // totals_ and the state after the last step
};

}  // namespace sd
