// The EAGLE-3 draft head (SpecForge's / SGLang's LlamaForCausalLMEagle3): one Llama decoder
// layer over [input_layernorm(embed(x)) ; hidden_norm(h)], with its own one-layer paged KV. The
// exact math is that of the torch reference python/specdec_native/eagle/head.py:
//
//   entry t: h   = fc(target features after token t)  [3 * Ht -> H]   (or, drafting step j > 0,
//                  the head's own previous output h')
//            x   = [input_layernorm(embed(x_{t+1})) ; hidden_norm(h)]           (2H)
//            h'  = h + o_proj(attn(rope(q_proj x), rope(k_proj x), v_proj x))  (residual: h)
//            h'  = h' + down(silu(gate(post_attention_layernorm(h'))) * up(...))
//            logits = lm_head(norm(h')) over the draft vocabulary; target id = d + d2t[d]
//
// Tokens are embedded with the TARGET's table (a checkpoint may carry its own copy, which then
// wins, as in the torch loader). Like LlamaModel, the head is stateless between calls apart from
// scratch buffers: the caller owns the KV cache (kv_config) and each sequence's SeqPages.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "model/batch_pages.h"
#include "model/config.h"
#include "model/weights.h"

namespace sd {

struct Eagle3Config {
  int32_t hidden_size = 0;         // H
  int32_t intermediate_size = 0;   // I
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;            // D
  int32_t vocab_size = 0;          // the target's vocabulary
  int32_t draft_vocab_size = 0;    // rows of lm_head
  int32_t target_hidden_size = 0;  // Ht: fc reads 3 * Ht
  float rms_norm_eps = 1e-6f;
  double rope_theta = 10000.0;
  // The target decoder layers whose OUTPUTS (0-based; HF hidden_states index + 1) are
  // concatenated, in this order, into the [3 * Ht] features. Resolved against the target: the
  // checkpoint's own ids, or SpecForge's default [1, N/2 - 1, N - 4] (clamped).
  std::vector<int32_t> aux_layer_ids;
};

struct EagleBatch {
  std::vector<int32_t> token_ids;  // [T] the token paired with each entry (x_{t+1} for entry t)
  std::vector<int32_t> positions;  // [T] RoPE positions (anchor t + draft depth j)
  std::vector<int32_t> qo_indptr;  // [B + 1]
  std::vector<const SeqPages*> seqs;  // [B] pages of the head's KV, already holding the new entries
  // Optional tree masks, exactly as in ForwardBatch (qo_len x kv_len bools per request). Empty: causal.
  std::vector<uint8_t> custom_mask;
  std::vector<int64_t> mask_indptr;
  // The input state h of each entry. Row t is fc(features[t]) ([T, 3 * Ht], target features)
  // when from_hidden[t] == 0, and hidden[t] ([T, H], the head's own previous output h') as is
  // otherwise; only the rows used are read. Empty from_hidden: every row from `features` when
  // it is given, else every row from `hidden`.
  const float* features = nullptr;
  const float* hidden = nullptr;
  std::vector<uint8_t> from_hidden;
  std::vector<int32_t> logit_rows;  // which of the T entries need logits
};

class Eagle3Head {
 public:
  // Reads `dir`/config.json and `dir`/model.safetensors, checks them and that the head fits
  // `target` (vocabulary, fc input = 3 x the target's hidden size, aux layers that exist), and
  // converts the matrices to `dtype` (norms stay f32). Every problem is an InvalidArgument that
  // names the file.
  static Status load(const std::string& dir, const ModelConfig& target, DType dtype,
                     std::unique_ptr<Eagle3Head>* out);

  // logits: [logit_rows.size(), draft_vocab_size] f32 (may be null when there are no logit
  // rows); hidden_out: [T, H] f32, the entries' h' before the final norm (the next drafting
  // step's h), may be null. `target_embed` is the target's token embedding table [vocab, H]; it
  // may be null when the checkpoint carries its own. Not reentrant (one call at a time).
  Status forward(const EagleBatch& batch, const Matrix* target_embed, KVCache& kv, float* logits,
                 float* hidden_out);

  const Eagle3Config& config() const { return cfg_; }
  DType dtype() const { return dtype_; }
  bool has_embeddings() const { return has_embed_; }  // the checkpoint carried embed_tokens.weight
  // Target id of each draft id (d + d2t[d]); [draft_vocab_size].
  const std::vector<int32_t>& draft_to_target() const { return d2t_target_; }
  // Bytes of weights one drafted entry reads (fc, the layer, the LM head).
  int64_t weight_bytes() const {
    return fc_.view().nbytes() + qkv_w_.view().nbytes() + o_.view().nbytes() + gate_up_w_.view().nbytes() +
           down_.view().nbytes() + lm_head_.view().nbytes();
  }
  // One layer, the head's KV heads and head_dim.
  KVCacheConfig kv_config(int32_t page_size, int32_t num_blocks) const;

 private:
  Eagle3Head() = default;
  Eagle3Config cfg_;
  DType dtype_ = DType::kF32;
  OwnedMatrix fc_;       // [H, 3 * Ht]
  OwnedMatrix qkv_w_;    // [(nq + 2 * nkv) * D, 2H]   q, k, v fused row-wise
  OwnedMatrix o_;        // [H, nq * D]
  OwnedMatrix gate_up_w_;  // [2I, H]                  gate, up fused row-wise
  OwnedMatrix down_;     // [H, I]
  OwnedMatrix lm_head_;  // [draft_vocab, H]
  OwnedMatrix embed_;    // [vocab, H], only when has_embed_
  bool has_embed_ = false;
  std::vector<float> input_norm_, hidden_norm_, post_attention_norm_, final_norm_;
  std::vector<int32_t> d2t_target_;
  std::vector<float> inv_freq_;
  // scratch, grown on demand
  std::vector<float> e_, h_, x2_, qkv_, q_, attn_, tmp_, gate_up_, act_, feat_, last_;
  std::vector<int32_t> rows_;
  BatchPages pages_;
};

}  // namespace sd
