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
#include "model/forward_model.h"
#include "model/weights.h"

namespace sd {

class LlamaModel : public ForwardModel {
 public:
  static Status create(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                       const std::function<void(int, int)>& progress,
                       std::unique_ptr<LlamaModel>* out);

  Status forward(const ForwardBatch& batch, KVCache& kv, float* logits) override;
  Status copy_tokens(KVCache& kv, const SeqPages& seq, const std::vector<int64_t>& from,
                     const std::vector<int64_t>& to) override;

  const ModelConfig& config() const override { return cfg_; }
  DType dtype() const override { return dtype_; }
  std::string device() const override { return "cpu"; }
  const Matrix* host_embedding() const override { return &w_.embed.view(); }  // [vocab, hidden]
  // Every matrix once; the embedding row is negligible.
  int64_t weight_bytes_per_token(const std::vector<int32_t>& layers) const override;
  using ForwardModel::weight_bytes_per_token;

 private:
  LlamaModel() = default;
  // The forward proper: logits (or batch.argmax) of the logit rows.
  Status compute(const ForwardBatch& batch, KVCache& kv, float* logits);

  ModelConfig cfg_;
  DType dtype_ = DType::kF32;
  LlamaWeights w_;
  std::vector<float> inv_freq_;
  // scratch, grown on demand
  std::vector<float> x_, h_, qkv_, q_, attn_, tmp_, gate_up_, act_, last_, head_out_;
  std::vector<float> sample_logits_, sample_probs_, sample_scratch_;  // batch.sample / draw on the host
  BatchPages pages_;
};

// RoPE inverse frequencies with the config's scaling (HF's default and llama3 rules).
std::vector<float> rope_inv_freq(const ModelConfig& cfg);

}  // namespace sd
