#include "kv/kv_cache.h"

#include <algorithm>
#include <cstdlib>
#include <new>

namespace sd {
namespace {

// Zeroed floats (nullptr for none); calloc lets the OS hand out untouched pages lazily.
float* allocate_floats(int64_t n) {
  if (n <= 0) return nullptr;
  float* p = static_cast<float*>(std::calloc(static_cast<size_t>(n), sizeof(float)));
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

KVCache::KVCache(const KVCacheConfig& cfg)
    : cfg_(cfg),
      alloc_(cfg.num_blocks),
      layer_floats_(static_cast<int64_t>(cfg.num_blocks) * cfg.page_size * cfg.num_kv_heads *
                    cfg.head_dim),
      k_(allocate_floats(cfg.host_storage ? layer_floats_ * cfg.num_layers : 0)),
      v_(allocate_floats(cfg.host_storage ? layer_floats_ * cfg.num_layers : 0)) {}

ops::PagedKV KVCache::layer(int32_t l) const {
  ops::PagedKV kv;
  kv.k = k_.get() + l * layer_floats_;
  kv.v = v_.get() + l * layer_floats_;
  kv.num_pages = cfg_.num_blocks;
  kv.page_size = cfg_.page_size;
  kv.num_kv_heads = cfg_.num_kv_heads;
  kv.head_dim = cfg_.head_dim;
  return kv;
}

int64_t KVCache::slot_offset(const SeqPages& seq, int64_t t) const {
  return seq.flat_slot(t) * cfg_.num_kv_heads * cfg_.head_dim;
}

float* KVCache::k_slot(int32_t l, const SeqPages& seq, int64_t t) {
  return k_.get() + l * layer_floats_ + slot_offset(seq, t);
}

float* KVCache::v_slot(int32_t l, const SeqPages& seq, int64_t t) {
  return v_.get() + l * layer_floats_ + slot_offset(seq, t);
}

void KVCache::copy_token(const SeqPages& seq, int64_t from, int64_t to) {
  if (from == to) return;
  const int64_t n = static_cast<int64_t>(cfg_.num_kv_heads) * cfg_.head_dim;
  for (int32_t l = 0; l < cfg_.num_layers; ++l) {
    std::copy(k_slot(l, seq, from), k_slot(l, seq, from) + n, k_slot(l, seq, to));
    std::copy(v_slot(l, seq, from), v_slot(l, seq, from) + n, v_slot(l, seq, to));
  }
}

}  // namespace sd
