#include "kv/radix_cache.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace sd {

RadixCache::RadixCache(int32_t page_size, BlockAllocator* alloc) : page_size_(page_size), alloc_(alloc) {
  if (page_size <= 0) throw std::invalid_argument("page_size must be > 0, got " + std::to_string(page_size));
  if (alloc == nullptr) throw std::invalid_argument("RadixCache needs a block allocator");
  nodes_.emplace_back();
  nodes_[kRoot].alive = true;
}

RadixCache::~RadixCache() {
  for (size_t id = 1; id < nodes_.size(); ++id) {
    if (!nodes_[id].alive) continue;
    // A block freed behind the tree's back is skipped: a destructor must not throw.
    for (int32_t b : nodes_[id].blocks)
      if (alloc_->refcount(b) > 0) alloc_->decref(b);
  }
}

RadixCache::NodeId RadixCache::new_node() {
  NodeId id;
  if (!free_ids_.empty()) {
    id = free_ids_.back();
    free_ids_.pop_back();
    nodes_[id] = Node();
  } else {
    id = static_cast<NodeId>(nodes_.size());
    nodes_.emplace_back();
  }
  nodes_[id].alive = true;
  return id;
}

void RadixCache::check_node(NodeId node, const char* what) const {
  if (node < 0 || node >= static_cast<NodeId>(nodes_.size()) || !nodes_[node].alive)
    throw std::invalid_argument(std::string(what) + ": unknown node id " + std::to_string(node));
}

int64_t RadixCache::matching_pages(NodeId node, const int32_t* tokens, int64_t max_pages) const {
  const Node& nd = nodes_[node];
  const int64_t pages = std::min(static_cast<int64_t>(nd.blocks.size()), max_pages);
  int64_t k = 0;
  while (k < pages && std::equal(tokens + k * page_size_, tokens + (k + 1) * page_size_,
                                 nd.tokens.begin() + k * page_size_))
    ++k;
  return k;
}

RadixCache::NodeId RadixCache::split(NodeId node, int64_t pages) {
  const NodeId top = new_node();  // may reallocate nodes_: take references after
  Node& t = nodes_[top];
  Node& nd = nodes_[node];
  const int64_t cut = pages * page_size_;
  t.parent = nd.parent;
  t.tokens.assign(nd.tokens.begin(), nd.tokens.begin() + cut);
  t.blocks.assign(nd.blocks.begin(), nd.blocks.begin() + pages);
  nd.tokens.erase(nd.tokens.begin(), nd.tokens.begin() + cut);
  nd.blocks.erase(nd.blocks.begin(), nd.blocks.begin() + pages);
  // The upper part inherits the locks and the use time; `node` keeps its id, lock, last_used
  // and children, so its place in the LRU index is unchanged.
  t.lock_count = nd.lock_count;
  t.last_used = nd.last_used;
  std::vector<int32_t> key(t.tokens.begin(), t.tokens.begin() + page_size_);
  nodes_[t.parent].children[key] = top;
  t.children.emplace(std::vector<int32_t>(nd.tokens.begin(), nd.tokens.begin() + page_size_), node);
  nd.parent = top;
  return top;
}

void RadixCache::touch_path(NodeId node) {
  ++clock_;
  for (NodeId x = node; x >= 0; x = nodes_[x].parent) {
    lru_erase(x);
    nodes_[x].last_used = clock_;
    lru_refresh(x);
  }
}

void RadixCache::lru_erase(NodeId node) { lru_.erase({nodes_[node].last_used, node}); }

void RadixCache::lru_refresh(NodeId node) {
  const Node& nd = nodes_[node];
  if (node != kRoot && nd.alive && nd.children.empty() && nd.lock_count == 0)
    lru_.insert({nd.last_used, node});
}

RadixCache::Match RadixCache::match_prefix(const int32_t* tokens, int64_t n) {
  Match m;
  NodeId cur = kRoot;
  int64_t pos = 0;
  while (n - pos >= page_size_) {
    const auto& children = nodes_[cur].children;
    auto it = children.find(std::vector<int32_t>(tokens + pos, tokens + pos + page_size_));
    if (it == children.end()) break;
    NodeId c = it->second;
    const int64_t edge = static_cast<int64_t>(nodes_[c].blocks.size());
    const int64_t k = matching_pages(c, tokens + pos, (n - pos) / page_size_);
    if (k < edge) c = split(c, k);  // the returned node ends exactly at the match
    const auto& b = nodes_[c].blocks;
    m.blocks.insert(m.blocks.end(), b.begin(), b.end());
    pos += k * page_size_;
    cur = c;
    if (k < edge) break;
  }
  m.num_tokens = pos;
  m.node = cur;
  touch_path(cur);
  return m;
}

RadixCache::NodeId RadixCache::insert(const int32_t* tokens, int64_t n, const std::vector<int32_t>& blocks) {
  const int64_t pages = n > 0 ? n / page_size_ : 0;
  if (static_cast<int64_t>(blocks.size()) < pages)
    throw std::invalid_argument("insert: " + std::to_string(pages) + " whole pages but only " +
                                std::to_string(blocks.size()) + " blocks");
  NodeId cur = kRoot;
  int64_t i = 0;  // pages placed so far
  while (i < pages) {
    const int32_t* page = tokens + i * page_size_;
    auto it = nodes_[cur].children.find(std::vector<int32_t>(page, page + page_size_));
    if (it == nodes_[cur].children.end()) {
      // The rest is new: one leaf, and the tree's reference on each of its blocks (all or none).
      int64_t j = i;
      try {
        for (; j < pages; ++j) alloc_->incref(blocks[j]);
      } catch (...) {
        while (j-- > i) alloc_->decref(blocks[j]);
        throw;
      }
      const NodeId leaf = new_node();
      Node& nd = nodes_[leaf];
      nd.parent = cur;
      nd.tokens.assign(page, tokens + pages * page_size_);
      nd.blocks.assign(blocks.begin() + i, blocks.begin() + pages);
      lru_erase(cur);  // no longer a leaf
      nodes_[cur].children.emplace(std::vector<int32_t>(page, page + page_size_), leaf);
      cached_blocks_ += pages - i;
      cur = leaf;
      break;
    }
    NodeId c = it->second;
    const int64_t edge = static_cast<int64_t>(nodes_[c].blocks.size());
    const int64_t k = matching_pages(c, page, pages - i);
    if (k < edge) c = split(c, k);
    cur = c;
    i += k;
  }
  touch_path(cur);
  return cur;
}

void RadixCache::lock(NodeId node) {
  check_node(node, "lock");
  for (NodeId x = node; x >= 0; x = nodes_[x].parent) {
    Node& nd = nodes_[x];
    if (nd.lock_count++ == 0) {
      lru_erase(x);
      locked_blocks_ += static_cast<int64_t>(nd.blocks.size());
    }
  }
}

void RadixCache::unlock(NodeId node) {
  check_node(node, "unlock");
  if (nodes_[node].lock_count <= 0)
    throw std::logic_error("unlock of a node that is not locked: " + std::to_string(node));
  // Every lock counted on the whole path, so the ancestors' counts are >= this one's.
  for (NodeId x = node; x >= 0; x = nodes_[x].parent) {
    Node& nd = nodes_[x];
    if (--nd.lock_count == 0) {
      locked_blocks_ -= static_cast<int64_t>(nd.blocks.size());
      lru_refresh(x);
    }
  }
}

void RadixCache::remove_leaf(NodeId node, int32_t* freed) {
  lru_erase(node);
  Node& nd = nodes_[node];
  for (int32_t b : nd.blocks) {
    const int32_t rc = alloc_->refcount(b);
    if (rc <= 0) continue;  // freed behind the tree's back: nothing of ours to drop
    if (rc == 1) ++*freed;
    alloc_->decref(b);
  }
  cached_blocks_ -= static_cast<int64_t>(nd.blocks.size());
  const NodeId parent = nd.parent;
  nodes_[parent].children.erase(std::vector<int32_t>(nd.tokens.begin(), nd.tokens.begin() + page_size_));
  nodes_[node] = Node();  // alive = false
  free_ids_.push_back(node);
  lru_refresh(parent);  // may have become a leaf
}

bool RadixCache::ensure_free(int64_t blocks) {
  const int64_t missing = blocks - alloc_->num_free();
  if (missing > 0) evict(static_cast<int32_t>(std::min<int64_t>(missing, INT32_MAX)));
  return alloc_->num_free() >= blocks;
}

int32_t RadixCache::evict(int32_t blocks) {
  int32_t freed = 0;
  while (freed < blocks && !lru_.empty()) remove_leaf(lru_.begin()->second, &freed);
  return freed;
}

void RadixCache::clear() {
  int32_t freed = 0;
  while (!lru_.empty()) remove_leaf(lru_.begin()->second, &freed);
}

int64_t RadixCache::num_evictable_blocks() const { return cached_blocks_ - locked_blocks_; }

int32_t RadixCache::num_nodes() const {
  return static_cast<int32_t>(nodes_.size() - 1 - free_ids_.size());
}

}  // namespace sd
