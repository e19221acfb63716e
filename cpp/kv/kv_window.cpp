#include "kv/kv_window.h"

#include <algorithm>

namespace sd {

int64_t append_window_pages(const SeqPages& seq, const KVWindow& w, std::vector<int32_t>* blocks) {
  const std::vector<int32_t>& all = seq.blocks();
  const int64_t pages = static_cast<int64_t>(all.size()), P = seq.page_size(), n = seq.num_tokens();
  const int64_t sink_pages = std::min<int64_t>(pages, (w.sink_tokens + P - 1) / P);
  const int64_t window_first = !w.active() || n <= w.window_tokens ? 0 : (n - w.window_tokens) / P;
  if (window_first <= sink_pages) {
    blocks->insert(blocks->end(), all.begin(), all.end());
    return pages;
  }
  blocks->insert(blocks->end(), all.begin(), all.begin() + sink_pages);
  blocks->insert(blocks->end(), all.begin() + window_first, all.end());
  return sink_pages + pages - window_first;
}

}  // namespace sd
