// Prefix cache: a radix tree keyed by token ids over whole KV pages (SGLang's RadixAttention
// shape, page-aligned). Each edge holds a multiple of page_size tokens and one block per page;
// the tree holds one reference (BlockAllocator::incref) on every block it caches. A sequence
// that starts with a cached prefix shares those blocks (it increfs them itself) and prefills only
// its suffix. Nodes in use are locked; eviction drops the least recently used unlocked leaves
// and frees the blocks whose last reference was the tree's.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "kv/block_allocator.h"

namespace sd {

class RadixCache {
 public:
  using NodeId = int32_t;
  static constexpr NodeId kRoot = 0;

  RadixCache(int32_t page_size, BlockAllocator* alloc);
  ~RadixCache();  // drops the tree's references (the allocator must outlive the cache)
  RadixCache(const RadixCache&) = delete;
  RadixCache& operator=(const RadixCache&) = delete;

  struct Match {
    std::vector<int32_t> blocks;  // blocks of the matched pages, in order
    int64_t num_tokens = 0;       // blocks.size() * page_size
    NodeId node = kRoot;          // deepest node of the match (lock it while the blocks are used)
  };
  // The longest cached prefix of tokens[0, n) in whole pages. Marks the path as used now (LRU).
  // An edge matched only partly still yields its matching whole pages.
  Match match_prefix(const int32_t* tokens, int64_t n);

  // Caches the whole pages of tokens[0, n): blocks[i] holds tokens [i * P, (i + 1) * P) (extra
  // blocks and a partial last page are ignored). Pages already cached keep their cached block
  // (the caller's copy stays the caller's); each new page's block gets a reference from the
  // tree. Returns the node that ends at the last whole page (kRoot when n < page_size).
  NodeId insert(const int32_t* tokens, int64_t n, const std::vector<int32_t>& blocks);

  // A locked node and its ancestors are never evicted. Locks nest (a count per node).
  void lock(NodeId node);
  void unlock(NodeId node);  // unlocking a node that is not locked is a logic error (throws)

  // Evicts unlocked leaves, least recently used first (a parent whose last child goes becomes a
  // leaf), until at least `blocks` blocks went back to the allocator's free list or nothing
  // evictable is left. Returns the number of blocks freed.
  int32_t evict(int32_t blocks);
  // Evicts until the allocator has at least `blocks` free blocks; whether it has them.
  bool ensure_free(int64_t blocks);
  void clear();  // drops every unlocked node

  int32_t page_size() const { return page_size_; }
  int64_t num_cached_blocks() const { return cached_blocks_; }  // blocks the tree references
  int64_t num_evictable_blocks() const;                          // in unlocked subtrees' leaves-first closure
  int32_t num_nodes() const;                                     // excluding the root

 private:
  struct Node {
    NodeId parent = -1;
    std::vector<int32_t> tokens;  // the edge's tokens (a multiple of page_size)
    std::vector<int32_t> blocks;  // one per page of the edge
    std::map<std::vector<int32_t>, NodeId> children;  // keyed by the child's first page
    int32_t lock_count = 0;
    uint64_t last_used = 0;
    bool alive = false;
  };
  NodeId new_node();
  NodeId split(NodeId node, int64_t pages);  // keeps the first `pages` pages in a new parent
  void remove_leaf(NodeId node, int32_t* freed);
  void check_node(NodeId node, const char* what) const;  // throws std::invalid_argument
  // Whole pages of the edge of `node` equal to tokens[0, max_pages * P).
  int64_t matching_pages(NodeId node, const int32_t* tokens, int64_t max_pages) const;
  void touch_path(NodeId node);  // node and its ancestors used now
  // The evictable-leaf index: erase before changing a node's last_used / lock / children,
  // refresh after.
  void lru_erase(NodeId node);
  void lru_refresh(NodeId node);

  int32_t page_size_;
  BlockAllocator* alloc_;
  std::vector<Node> nodes_;       // nodes_[0] is the root
  std::vector<NodeId> free_ids_;  // recycled node slots
  uint64_t clock_ = 0;
  int64_t cached_blocks_ = 0;
  int64_t locked_blocks_ = 0;  // blocks of nodes with lock_count > 0
  std::set<std::pair<uint64_t, NodeId>> lru_;  // unlocked leaves (not the root) by last_used
};

}  // namespace sd
