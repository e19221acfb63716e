// Fixed-size KV blocks: a free list and a reference count per block. Block 0 is reserved as the
// null block and never handed out. Running out is a returned status, never a crash.
#pragma once
#include <cstdint>
#include <vector>

#include "core/status.h"

namespace sd {

class BlockAllocator {
 public:
  explicit BlockAllocator(int32_t num_blocks);  // usable blocks: 1 .. num_blocks - 1

  // All-or-nothing: on success appends n fresh blocks (ref count 1) to *out.
  Status allocate(int32_t n, std::vector<int32_t>* out);
  void incref(int32_t block);
  void decref(int32_t block);  // returns the block to the free list at zero

  int32_t num_blocks() const { return static_cast<int32_t>(refcount_.size()); }
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t refcount(int32_t block) const { return refcount_.at(block); }

 private:
  std::vector<int32_t> free_;  // a stack: the most recently freed block is reused first
  std::vector<int32_t> refcount_;
};

}  // namespace sd
