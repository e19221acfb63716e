// The Llama-family forward (Llama, Qwen2, Mistral) over a paged KV cache. Stateless between
// calls apart from scratch buffers: every call names the sequences, their new tokens (already
// appended to their SeqPages), RoPE positions, and optionally a tree mask per sequence. A batch
// may run a subset of the layers or attend a sparse page list (the self-speculation drafts).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "io/safetensors.h"
#include "kv/kv_cache.h"
#include "kv/kv_window.h"
#include "model/batch_pages.h"
#include "model/config.h"
#include "model/weights.h"

namespace sd {

struct ForwardBatch {
  std::vector<int32_t> token_ids;  // [T], all sequences' new tokens, request after request
  std::vector<int32_t> positions;  // [T], RoPE positions (depth in the tree for drafts)
  std::vector<int32_t> qo_indptr;  // [B + 1]
  std::vector<const SeqPages*> seqs;  // [B]; each already holds its new tokens at its end
  // Optional tree masks in FlashInfer's layout: request b has qo_len x kv_len bools (row-major)
  // at custom_mask[mask_indptr[b]]. Empty: causal.
  std::vector<uint8_t> custom_mask;
  std::vector<int64_t> mask_indptr;
  std::vector<int32_t> logit_rows;  // which of the T tokens need logits
  // Self-speculation drafts run a cheaper version of the same model over the same cache:
  std::vector<int32_t> layers;  // the decoder layers to run, ascending (empty: all); others are skipped
  KVWindow window;              // sparse attention (sinks + recent pages); not with a custom mask
  // Feature capture (EAGLE-3 heads read the target's hidden states): the residual stream after
  // each of these decoder layers, for every token, into captured[T x capture_layers.size() x H]
  // (row t holds the layers' outputs side by side, in this order). Each layer must run.
  std::vector<int32_t> capture_layers;
  float* captured = nullptr;
};

class LlamaModel {
 public:
  static Status create(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                       const std::function<void(int, int)>& progress,
                       std::unique_ptr<LlamaModel>* out);

  // logits: [logit_rows.size(), vocab_size] f32. Not reentrant (one call at a time).
  Status forward(const ForwardBatch& batch, KVCache& kv, float* logits);

  const ModelConfig& config() const { return cfg_; }
  DType dtype() const { return dtype_; }
  const Matrix& embedding() const { return w_.embed.view(); }  // [vocab, hidden] (EAGLE heads embed with it)
  // Bytes of weights one decode step reads (every matrix once; the embedding row is negligible).
  // With `layers`: of a forward that runs only those decoder layers.
  int64_t weight_bytes_per_token(const std::vector<int32_t>& layers = {}) const;
  KVCacheConfig kv_config(int32_t page_size, int32_t num_blocks) const;

 private:
  LlamaModel() = default;
  ModelConfig cfg_;
  DType dtype_ = DType::kF32;
  LlamaWeights w_;
  std::vector<float> inv_freq_;
  // scratch, grown on demand
  std::vector<float> x_, h_, qkv_, q_, attn_, tmp_, gate_up_, act_, last_;
  BatchPages pages_;
};

// RoPE inverse frequencies with the config's scaling (HF's default and llama3 rules).
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

}  // namespace sd
