#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "model/scratch.h"
#include "ops/ops.h"
#include "sampling/sampler.h"

namespace sd {

std::vector<float> rope_inv_freq(const ModelConfig& cfg) {
  const int64_t half = cfg.head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // HF computes base ** (arange(0, dim, 2) / dim) in float32 and inverts it.
    const float expo = static_cast<float>(2 * i) / static_cast<float>(cfg.head_dim);
    inv[static_cast<size_t>(i)] = 1.0f / static_cast<float>(std::pow(cfg.rope_theta, static_cast<double>(expo)));
  }
  const RopeScaling& s = cfg.rope_scaling;
  if (s.type == "llama3") {
    const double old_len = static_cast<double>(s.original_max_position_embeddings);
    const double low_wavelen = old_len / s.low_freq_factor;
    const double high_wavelen = old_len / s.high_freq_factor;
    for (float& f : inv) {
      const double wavelen = 2 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = static_cast<float>(f / s.factor);
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / s.factor + smooth * f);
      }
    }
  }
  return inv;
}

Status LlamaModel::create(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                          const std::function<void(int, int)>& progress,
                          std::unique_ptr<LlamaModel>* out) {
  SD_RETURN_IF_ERROR(cfg.validate());
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->cfg_ = cfg;
  m->dtype_ = dtypes.layers;
  SD_RETURN_IF_ERROR(load_llama_weights(cfg, ckpt, dtypes, progress, &m->w_));
  m->inv_freq_ = rope_inv_freq(cfg);
  *out = std::move(m);
  return Status::Ok();
}

int64_t LlamaModel::weight_bytes_per_token(const std::vector<int32_t>& layers) const {
  int64_t n = w_.head().nbytes();
  for (int32_t l = 0; l < cfg_.num_layers; ++l) {
    if (!layers.empty() && !std::binary_search(layers.begin(), layers.end(), l)) continue;
    const LayerWeights& L = w_.layers[static_cast<size_t>(l)];
    n += L.qkv.view().nbytes() + L.o.view().nbytes() + L.gate_up.view().nbytes() + L.down.view().nbytes();
  }
  return n;
}

Status LlamaModel::copy_tokens(KVCache& kv, const SeqPages& seq, const std::vector<int64_t>& from,
                               const std::vector<int64_t>& to) {
  SD_RETURN_IF_ERROR(validate_copy_tokens(seq, from, to));
  for (size_t i = 0; i < from.size(); ++i) kv.copy_token(seq, from[i], to[i]);
  return Status::Ok();
}

Status LlamaModel::forward(const ForwardBatch& batch, KVCache& kv, float* logits) {
  if (batch.sample == nullptr && batch.draw == nullptr) return compute(batch, kv, logits);
  const int64_t V = cfg_.vocab_size;
  float* rows = logits;
  if (rows == nullptr) {
    grow(sample_logits_, static_cast<int64_t>(batch.logit_rows.size()) * V);
    rows = sample_logits_.data();
  }
  SD_RETURN_IF_ERROR(compute(batch, kv, rows));
  if (batch.sample != nullptr) sample_rows(rows, V, batch.sample, &sample_probs_, &sample_scratch_);
  if (batch.draw != nullptr) draw_rows(rows, V, batch.draw);
  return Status::Ok();
}

Status LlamaModel::compute(const ForwardBatch& batch, KVCache& kv, float* logits) {
  const int64_t T = static_cast<int64_t>(batch.token_ids.size());
  const int64_t H = cfg_.hidden_size, D = cfg_.head_dim, I = cfg_.intermediate_size;
  const int64_t nq = cfg_.num_heads, nkv = cfg_.num_kv_heads;
  const int64_t qkv_w = (nq + 2 * nkv) * D;

  SD_RETURN_IF_ERROR(validate_forward_batch(batch, cfg_, logits));
  if (!kv.config().host_storage) return InvalidArgument("forward: the KV cache has no host storage (it was made for a device model)");
  const bool masked = !batch.custom_mask.empty();
  static const std::vector<int64_t> kNoMask;
  SD_RETURN_IF_ERROR(pages_.build(batch.seqs, batch.qo_indptr, masked ? batch.mask_indptr : kNoMask, batch.window, "forward"));

  grow(x_, T * H);
  grow(h_, T * H);
  grow(qkv_, T * qkv_w);
  grow(q_, T * nq * D);
  grow(attn_, T * nq * D);
  grow(tmp_, T * H);
  grow(gate_up_, T * 2 * I);
  grow(act_, T * I);

  ops::embedding(w_.embed.view(), batch.token_ids.data(), T, x_.data());

  const int32_t num_run = batch.layers.empty() ? cfg_.num_layers : static_cast<int32_t>(batch.layers.size());
  for (int32_t li = 0; li < num_run; ++li) {
    const int32_t l = batch.layers.empty() ? li : batch.layers[static_cast<size_t>(li)];
    const LayerWeights& L = w_.layers[static_cast<size_t>(l)];
    ops::rmsnorm(x_.data(), L.input_norm.data(), cfg_.rms_norm_eps, T, H, h_.data());
    ops::matmul(L.qkv.view(), h_.data(), T, H, qkv_.data(), qkv_w,
                L.qkv_bias.empty() ? nullptr : L.qkv_bias.data());
    ops::rope(qkv_.data(), batch.positions.data(), T, nq, D, qkv_w, inv_freq_.data());
    ops::rope(qkv_.data() + nq * D, batch.positions.data(), T, nkv, D, qkv_w, inv_freq_.data());
    pages_.scatter_qkv(qkv_.data(), nq, nkv, D, l, kv, q_.data());
    SD_RETURN_IF_ERROR(pages_.attend(q_.data(), kv, l, batch.custom_mask, batch.mask_indptr, static_cast<int32_t>(nq), attn_.data()));
    ops::matmul(L.o.view(), attn_.data(), T, nq * D, tmp_.data(), H, nullptr);
    add_inplace(x_.data(), tmp_.data(), T * H);

    ops::rmsnorm(x_.data(), L.post_attention_norm.data(), cfg_.rms_norm_eps, T, H, h_.data());
    ops::matmul(L.gate_up.view(), h_.data(), T, H, gate_up_.data(), 2 * I, nullptr);
    ops::silu_mul(gate_up_.data(), T, I, act_.data());
    ops::matmul(L.down.view(), act_.data(), T, I, tmp_.data(), H, nullptr);
    add_inplace(x_.data(), tmp_.data(), T * H);
    const int64_t C = static_cast<int64_t>(batch.capture_layers.size());
    for (int64_t j = 0; j < C; ++j) {
      if (batch.capture_layers[static_cast<size_t>(j)] != l) continue;
      for (int64_t t = 0; t < T; ++t) std::copy(x_.data() + t * H, x_.data() + (t + 1) * H, batch.captured + (t * C + j) * H);
    }
  }

  const int64_t R = static_cast<int64_t>(batch.logit_rows.size());
  if (R == 0) return Status::Ok();
  grow(last_, R * H);
  for (int64_t r = 0; r < R; ++r)
    std::copy(x_.data() + batch.logit_rows[static_cast<size_t>(r)] * H,
              x_.data() + (batch.logit_rows[static_cast<size_t>(r)] + 1) * H, last_.data() + r * H);
  ops::rmsnorm(last_.data(), w_.final_norm.data(), cfg_.rms_norm_eps, R, H, last_.data());
  const int64_t V = cfg_.vocab_size;
  const std::vector<int32_t>& kept = w_.head_vocab;
  if (!kept.empty()) {  // a reduced vocabulary: its logits, scattered into rows of -inf
    const int64_t N = static_cast<int64_t>(kept.size());
    grow(head_out_, R * N);
    ops::matmul(w_.head(), last_.data(), R, H, head_out_.data(), N, nullptr);
    for (int64_t r = 0; r < R; ++r) {
      const float* row = head_out_.data() + r * N;
      if (batch.argmax != nullptr) batch.argmax[r] = kept[static_cast<size_t>(argmax(row, N))];
      if (logits == nullptr) continue;
      float* dst = logits + r * V;
      std::fill(dst, dst + V, -std::numeric_limits<float>::infinity());
      for (int64_t i = 0; i < N; ++i) dst[kept[static_cast<size_t>(i)]] = row[i];
    }
    return Status::Ok();
  }
  float* out = logits;
  if (out == nullptr) {  // the argmax alone was asked for
    grow(head_out_, R * V);
    out = head_out_.data();
  }
  ops::matmul(w_.head(), last_.data(), R, H, out, V, nullptr);
  if (batch.argmax != nullptr)
    for (int64_t r = 0; r < R; ++r) batch.argmax[r] = argmax(out + r * V, V);
  return Status::Ok();
}

}  // namespace sd
