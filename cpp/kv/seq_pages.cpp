#include "kv/seq_pages.h"

#include <stdexcept>

namespace sd {

Status SeqPages::append(BlockAllocator& alloc, int64_t n) {
  if (n < 0) return InvalidArgument("append: negative token count");
  const int64_t need = blocks_needed(n);
  // Clamped, not truncated: a count past int32 can never be served (allocate says so).
  if (need > 0)
    SD_RETURN_IF_ERROR(alloc.allocate(static_cast<int32_t>(need < INT32_MAX ? need : INT32_MAX), &blocks_));
  num_tokens_ += n;
  return Status::Ok();
}

void SeqPages::share_prefix(BlockAllocator& alloc, const std::vector<int32_t>& blocks) {
  if (num_tokens_ != 0) throw std::logic_error("share_prefix on a sequence that already holds tokens");
  for (int32_t b : blocks) alloc.incref(b);
  blocks_ = blocks;
  num_tokens_ = static_cast<int64_t>(blocks.size()) * page_size_;
}

void SeqPages::truncate(BlockAllocator& alloc, int64_t n) {
  if (n < 0) n = 0;
  if (n >= num_tokens_) return;
  const size_t keep = static_cast<size_t>((n + page_size_ - 1) / page_size_);
  while (blocks_.size() > keep) {
    alloc.decref(blocks_.back());
    blocks_.pop_back();
  }
  num_tokens_ = n;
}

}  // namespace sd
