// Sparse attention over a paged cache as a different page list (StreamingLLM's attention sinks
// plus a recent window, the draft of MagicDec's self-speculation): a query attends the pages that
// hold the first `sink_tokens` tokens and the pages that hold the last `window_tokens`, both
// rounded out to whole pages, and nothing else. No KV is copied: the list names the sequence's own
// blocks, and the last page keeps its kv_last_page_len.
#pragma once
#include <cstdint>
#include <vector>

#include "kv/seq_pages.h"

namespace sd {

struct KVWindow {
  int32_t sink_tokens = 0;
  int64_t window_tokens = 0;  // 0: dense (every page)
  bool active() const { return window_tokens > 0; }
};

// Appends the blocks of `seq` a query attends under `w` to *blocks and returns how many of the
// sequence's pages they are. Kept: pages [0, ceil(sink / P)) and [floor((n - window) / P), pages)
// for n tokens of page size P; every page when those ranges meet.
int64_t append_window_pages(const SeqPages& seq, const KVWindow& w, std::vector<int32_t>* blocks);

}  // namespace sd
