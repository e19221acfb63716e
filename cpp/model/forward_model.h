// The one dispatch point between the CPU and a device: what the engine and the drafters need
// of a Llama-family model. LlamaModel (model/llama.h) runs on the CPU over the host KVCache;
// a device model (cuda/device_llama.cu, registered at run time by the CUDA extension:
// model/device_registry.h) keeps its weights and the K/V of the cache's pages on the GPU and
// uses the host KVCache only for its page bookkeeping (the BlockAllocator).
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/status.h"
#include "kv/kv_cache.h"
#include "model/config.h"
#include "model/forward_batch.h"
#include "ops/matrix.h"

namespace sd {

class ForwardModel {
 public:
  virtual ~ForwardModel() = default;

  // logits: [logit_rows.size(), vocab_size] f32 in host memory (may be nullptr when logit_rows
  // is empty or batch.argmax is set). batch.captured and batch.argmax are host memory too.
  // Not reentrant (one call at a time).
  virtual Status forward(const ForwardBatch& batch, KVCache& kv, float* logits) = 0;
  // Moves accepted tokens into sequence order: for i in 0 .. from.size() IN ORDER, token from[i]'s
  // K and V go to token to[i] of `seq`, in every layer (KVCache::copy_token where the K/V live);
  // a pair with from == to is a no-op (a chain's accepted tokens are already in place).
  virtual Status copy_tokens(KVCache& kv, const SeqPages& seq, const std::vector<int64_t>& from,
                             const std::vector<int64_t>& to) = 0;

  virtual const ModelConfig& config() const = 0;
  virtual DType dtype() const = 0;
  // "cpu", "cuda", or "shadow" (model/shadow_model.h, tests only).
  virtual std::string device() const = 0;
  // The embedding table in host memory (EAGLE heads embed with the target's), or nullptr
  // where it lives on a device only.
  virtual const Matrix* host_embedding() const = 0;
  // Bytes of weights one decode step reads; with `layers`: of a forward that runs only those.
  virtual int64_t weight_bytes_per_token(const std::vector<int32_t>& layers) const = 0;
  int64_t weight_bytes_per_token() const { return weight_bytes_per_token({}); }
  // The most KV blocks of `page_size` tokens this model's device can hold now (a device model:
  // 80% of the free GPU memory, leaving room for activations and a draft model; the CPU: no
  // limit, pages are committed as they are written). Bounds the default num_blocks.
  virtual int64_t max_kv_blocks(int32_t /*page_size*/) const { return std::numeric_limits<int64_t>::max(); }

  // The cache this model's forward expects (on a device: page bookkeeping only).
  KVCacheConfig kv_config(int32_t page_size, int32_t num_blocks) const {
    const ModelConfig& c = config();
    KVCacheConfig k;
    k.num_layers = c.num_layers;
    k.num_kv_heads = c.num_kv_heads;
    k.head_dim = c.head_dim;
    k.page_size = page_size;
    k.num_blocks = num_blocks;
    k.host_storage = device() == "cpu";
    return k;
  }
};

}  // namespace sd
