// Engine: one model, its paged KV cache, and the generation loop. Requests are admitted while
// KV blocks for their whole length are free; running sequences decode together, one batched
// forward per step; a finished sequence frees its blocks and lets the next request in.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "model/llama.h"
#include "sampling/sampler.h"
#include "spec/chain_length_policy.h"
#include "spec/draft_model_drafter.h"
#include "spec/ngram_drafter.h"

namespace sd {

struct EngineOptions {
  std::string dtype = "auto";
  int32_t page_size = 16;
  int32_t num_blocks = 0;        // 0: enough for max_model_len tokens x max_num_seqs
  int32_t max_num_seqs = 8;      // sequences decoding at once
  int64_t max_model_len = 0;     // 0: the config's max_position_embeddings
  int32_t prefill_chunk = 512;   // prompt tokens per forward
  int32_t num_threads = 0;       // 0: one per core
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingConfig sampling;
  int32_t max_tokens = 16;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
};

struct GenerationResult {
  std::vector<int32_t> tokens;
  std::string finish_reason;  // "stop", "length" or "abort"
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double first_token_seconds = 0;  // from the call's start
  double total_seconds = 0;
  int64_t steps = 0;  // target forwards after the prefill
  // Speculation (zero without a drafter).
  int64_t drafted = 0;   // draft tokens proposed (tree nodes)
  int64_t accepted = 0;  // draft tokens accepted
  double draft_seconds = 0;
  double verify_seconds = 0;
  std::vector<int64_t> proposed_by_depth;  // [d]: steps whose tree reached depth d + 1
  std::vector<int64_t> accepted_by_depth;  // [d]: steps that accepted at least d + 1 tokens
};

// Called after every committed token: return kContinue, kStop (this request is done, reason
// "stop") or kAbort (every unfinished request ends with reason "abort").
enum class TokenAction { kContinue = 0, kStop = 1, kAbort = 2 };
using TokenCallback = std::function<TokenAction(int32_t request, int32_t token)>;

class Engine {
 public:
  static Status create(const ModelConfig& cfg, const std::vector<std::string>& shard_paths,
                       const EngineOptions& opts, std::vector<int32_t> eos_token_ids,
                       const std::function<void(int, int)>& progress, std::unique_ptr<Engine>* out);

  Status generate(const std::vector<GenerationRequest>& requests, const TokenCallback& on_token,
                  std::vector<GenerationResult>* results);

  // Speculative decoding: drafts from a second model (its own KV cache, same vocabulary), or
  // from n-gram prompt lookup. Replaces any earlier drafter.
  Status attach_draft_model(const ModelConfig& cfg, const std::vector<std::string>& shard_paths,
                            const std::string& dtype, const DraftModelOptions& opts,
                            const std::function<void(int, int)>& progress);
  void attach_ngram(const NgramOptions& opts);
  const Drafter* drafter() const { return drafter_.get(); }
  // Adaptive chain length: each step drafts the k (up to the drafter's) that the cost model
  // (spec/chain_length_policy.h) expects to be fastest for that request. Off by default: seeded
  // sampling stays reproducible only with a fixed k.
  void set_adaptive_speculation(bool on) { adaptive_ = on; }
  bool adaptive_speculation() const { return adaptive_; }
  const ChainLengthPolicy& chain_length_policy() const { return policy_; }

  // Logits of every prompt position ([prompt.size() x vocab] floats written to `logits`),
  // computed on a scratch sequence (tests, scoring, step-cost measurements).
  Status prompt_logits(const std::vector<int32_t>& prompt, float* logits);
  // One forward of prompt + a token tree hanging off its last token (the root), with the tree
  // mask and positions = depth, as verification runs it: logits of the root and of every node
  // ([1 + tree.size() x vocab] floats).
  Status tree_logits(const std::vector<int32_t>& prompt, const TokenTree& tree, float* logits);

  const ModelConfig& config() const { return model_->config(); }
  const EngineOptions& options() const { return opts_; }
  const LlamaModel& model() const { return *model_; }
  KVCache& kv_cache() { return *kv_; }
  int64_t max_model_len() const { return opts_.max_model_len; }

 private:
  Engine() = default;
  Status validate(const GenerationRequest& r, int32_t index) const;
  Status prefill(SeqPages& seq, const std::vector<int32_t>& prompt, std::vector<float>* last_logits);
  // Runs tokens on a scratch sequence; with a tree, tokens' last is its root and the nodes follow
  // (logits of the root and the nodes), else logits of every token.
  Status scratch_forward(const std::vector<int32_t>& tokens, float* logits, const TokenTree* tree = nullptr);
  Status calibrate_chain_length_policy();
  struct Running;
  // One decoding step for every running sequence; sets done[k] for the ones that finished.
  Status step(std::vector<Running>& running, const std::vector<GenerationRequest>& requests,
              std::vector<GenerationResult>* results,
              const std::function<bool(Running&, int32_t)>& commit, std::vector<bool>* done);

  EngineOptions opts_;
  std::vector<int32_t> eos_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<KVCache> kv_;
  std::unique_ptr<Drafter> drafter_;
  bool adaptive_ = false;
  ChainLengthPolicy policy_;
  std::vector<float> logits_, probs_, scratch_;
  std::mutex mu_;  // one generate() at a time
};

}  // namespace sd
