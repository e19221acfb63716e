// K and V storage of one model, per layer, in fixed-size blocks (FlashInfer's NHD layout:
// [block][slot][kv_head][head_dim], f32). Owns the BlockAllocator that hands its blocks out.
#pragma once
#include <cstdint>
#include <memory>
#include <cstdlib>
#include <vector>

#include "kv/block_allocator.h"
#include "kv/seq_pages.h"
#include "ops/ops.h"

namespace sd {

struct KVCacheConfig {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t page_size = 16;
  int32_t num_blocks = 0;  // including the reserved null block 0
  // False for a model whose K/V live on a device: the cache then only hands out pages (its
  // BlockAllocator) and holds no storage.
  bool host_storage = true;
};

class KVCache {
 public:
  explicit KVCache(const KVCacheConfig& cfg);

  const KVCacheConfig& config() const { return cfg_; }
  BlockAllocator& allocator() { return alloc_; }
  // Host bytes of K and V (0 without host storage).
  int64_t bytes() const { return cfg_.host_storage ? 2 * static_cast<int64_t>(cfg_.num_layers) * layer_floats_ * 4 : 0; }

  // The accessors below need host storage.
  ops::PagedKV layer(int32_t l) const;
  // Pointer to the K (or V) vector of kv_head 0 of token t of `seq` in layer l.
  float* k_slot(int32_t l, const SeqPages& seq, int64_t t);
  float* v_slot(int32_t l, const SeqPages& seq, int64_t t);
  // Copies token `from`'s K and V to token `to` of the same sequence, in every layer (moving an
  // accepted draft token into sequence order).
  void copy_token(const SeqPages& seq, int64_t from, int64_t to);

 private:
  int64_t slot_offset(const SeqPages& seq, int64_t t) const;
  KVCacheConfig cfg_;
  BlockAllocator alloc_;
  int64_t layer_floats_ = 0;
  struct FreeDeleter {
    void operator()(float* p) const { std::free(p); }
  };
  // calloc'ed: the OS maps zero pages lazily, so a large cache costs only what is touched.
  std::unique_ptr<float, FreeDeleter> k_, v_;  // [layer][block][slot][kv_head][head_dim]
};

}  // namespace sd
