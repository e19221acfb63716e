// One sequence's KV pages: its block list and token count. append() grows it (allocating blocks
// as needed, all-or-nothing), truncate() is the rollback after a rejected draft, release() frees
// everything (a block shared with another holder is freed by its last one). Token t lives in
// block blocks()[t / page_size] at slot t % page_size.
#pragma once
#include <cstdint>
#include <vector>

#include "kv/block_allocator.h"

namespace sd {

class SeqPages {
 public:
  explicit SeqPages(int32_t page_size) : page_size_(page_size) {}

  Status append(BlockAllocator& alloc, int64_t n);
  void truncate(BlockAllocator& alloc, int64_t n);  // keep the first n tokens (n <= num_tokens)
  void release(BlockAllocator& alloc) { truncate(alloc, 0); }
  // Starts an empty sequence with whole pages another holder computed (a prefix-cache hit):
  // takes a reference on each block. Those pages are never written: appends go past them.
  void share_prefix(BlockAllocator& alloc, const std::vector<int32_t>& blocks);

  int64_t num_tokens() const { return num_tokens_; }
  int32_t page_size() const { return page_size_; }
  const std::vector<int32_t>& blocks() const { return blocks_; }
  // Token t's slot in the cache's flat slot numbering (block * page_size + offset in the block).
  int64_t flat_slot(int64_t t) const {
    return static_cast<int64_t>(blocks_[static_cast<size_t>(t / page_size_)]) * page_size_ + t % page_size_;
  }
  // Tokens held by the last block (FlashInfer's kv_last_page_len); 0 when empty.
  int32_t last_page_len() const {
    return num_tokens_ == 0 ? 0 : static_cast<int32_t>((num_tokens_ - 1) % page_size_ + 1);
  }
  // Blocks needed to hold n more tokens.
  int64_t blocks_needed(int64_t n) const {
    const int64_t total = (num_tokens_ + n + page_size_ - 1) / page_size_;
    return total - static_cast<int64_t>(blocks_.size());
  }

 private:
  int32_t page_size_;
  int64_t num_tokens_ = 0;
  std::vector<int32_t> blocks_;
};

}  // namespace sd
