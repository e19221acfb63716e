#include "kv/block_allocator.h"

#include <stdexcept>
#include <string>

namespace sd {

BlockAllocator::BlockAllocator(int32_t num_blocks) : refcount_(num_blocks > 0 ? num_blocks : 1, 0) {
  for (int32_t b = num_blocks - 1; b >= 1; --b) free_.push_back(b);
}

Status BlockAllocator::allocate(int32_t n, std::vector<int32_t>* out) {
  if (n < 0) return InvalidArgument("allocate: negative block count");
  if (n > num_free())
    return OutOfBlocks("out of KV blocks: need " + std::to_string(n) + ", " +
                       std::to_string(num_free()) + " free of " + std::to_string(num_blocks() - 1));
  for (int32_t i = 0; i < n; ++i) {
    const int32_t b = free_.back();
    free_.pop_back();
    refcount_[b] = 1;
    out->push_back(b);
  }
  return Status::Ok();
}

void BlockAllocator::incref(int32_t block) {
  if (block <= 0 || block >= num_blocks() || refcount_[block] <= 0)
    throw std::logic_error("incref of a block that is not allocated: " + std::to_string(block));
  ++refcount_[block];
}

void BlockAllocator::decref(int32_t block) {
  if (block <= 0 || block >= num_blocks() || refcount_[block] <= 0)
    throw std::logic_error("decref of a block that is not allocated: " + std::to_string(block));
  if (--refcount_[block] == 0) free_.push_back(block);
}

}  // namespace sd
