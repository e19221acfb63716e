#include "spec/token_tree.h"

#include <algorithm>
#include <set>
#include <string>

namespace sd {

int32_t TokenTree::max_depth() const {
  int32_t d = 0;
  for (int32_t x : depth) d = std::max(d, x);
  return d;
}

int32_t TokenTree::add(int32_t tok, int32_t parent_node) {
  token.push_back(tok);
  parent.push_back(parent_node);
  depth.push_back(parent_node < 0 ? 1 : depth[static_cast<size_t>(parent_node)] + 1);
  return size() - 1;
}

Status TokenTree::from_parents(const std::vector<int32_t>& tokens, const std::vector<int32_t>& parents,
                               TokenTree* out) {
  if (tokens.size() != parents.size())
    return InvalidArgument("tokens and parents must have the same length, got " + std::to_string(tokens.size()) +
                           " and " + std::to_string(parents.size()));
  *out = TokenTree();
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (parents[i] < -1 || parents[i] >= static_cast<int32_t>(i))
      return InvalidArgument("parents[" + std::to_string(i) + "] = " + std::to_string(parents[i]) +
                             " must be -1 (the root) or an earlier node");
    out->add(tokens[i], parents[i]);
  }
  return Status::Ok();
}

std::vector<int32_t> TokenTree::children(int32_t node) const {
  std::vector<int32_t> out;
  for (int32_t i = 0; i < size(); ++i)
    if (parent[static_cast<size_t>(i)] == node) out.push_back(i);
  return out;
}

Status TokenTree::validate(int32_t vocab) const {
  for (int32_t i = 0; i < size(); ++i) {
    const int32_t p = parent[static_cast<size_t>(i)];
    if (p < -1 || p >= i) return InvalidArgument("token tree: node " + std::to_string(i) + " has parent " + std::to_string(p) + " (parents must come first)");
    if (token[static_cast<size_t>(i)] < 0 || token[static_cast<size_t>(i)] >= vocab)
      return InvalidArgument("token tree: token id " + std::to_string(token[static_cast<size_t>(i)]) + " is out of range");
  }
  if (!q.empty() && static_cast<int64_t>(q.size()) != static_cast<int64_t>(size()) * vocab)
    return InvalidArgument("token tree: q must hold one distribution per node");
  if (!confidence.empty() && confidence.size() != token.size())
    return InvalidArgument("token tree: confidence must hold one value per node");
  return Status::Ok();
}

void TokenTree::append_mask(int64_t prefix, std::vector<uint8_t>* out) const {
  const int64_t n = size(), kv_len = prefix + 1 + n;
  const size_t base = out->size();
  out->resize(base + static_cast<size_t>((n + 1) * kv_len), 0);
  uint8_t* m = out->data() + base;
  for (int64_t r = 0; r <= n; ++r) std::fill(m + r * kv_len, m + r * kv_len + prefix + 1, 1);
  for (int64_t i = 0; i < n; ++i) {
    uint8_t* row = m + (i + 1) * kv_len;
    for (int64_t a = i; a >= 0; a = parent[static_cast<size_t>(a)]) row[prefix + 1 + a] = 1;
  }
}

void TokenTree::append_node_mask(int64_t prefix, int32_t first, int32_t end, std::vector<uint8_t>* out) const {
  const int64_t kv_len = prefix + end;
  const size_t base = out->size();
  out->resize(base + static_cast<size_t>((end - first) * kv_len), 0);
  uint8_t* m = out->data() + base;
  for (int32_t i = first; i < end; ++i) {
    uint8_t* row = m + (i - first) * kv_len;
    std::fill(row, row + prefix, 1);
    for (int32_t a = i; a >= 0; a = parent[static_cast<size_t>(a)]) row[prefix + a] = 1;
  }
}

Status validate_tree_choices(const std::vector<std::vector<int32_t>>& choices, int32_t max_nodes) {
  if (choices.empty()) return InvalidArgument("tree choices: empty list");
  if (static_cast<int32_t>(choices.size()) > max_nodes)
    return InvalidArgument("tree choices: " + std::to_string(choices.size()) + " nodes, at most " + std::to_string(max_nodes));
  std::set<std::vector<int32_t>> seen;
  for (const auto& c : choices) {
    if (c.empty()) return InvalidArgument("tree choices: a choice is an empty path");
    for (int32_t r : c)
      if (r < 0) return InvalidArgument("tree choices: child ranks must be >= 0");
    if (!seen.insert(c).second) return InvalidArgument("tree choices: duplicate path");
  }
  for (const auto& c : choices) {
    if (c.size() > 1 && !seen.count(std::vector<int32_t>(c.begin(), c.end() - 1)))
      return InvalidArgument("tree choices: a path's parent path is missing");
    if (c.back() > 0) {
      std::vector<int32_t> sib = c;
      sib.back() -= 1;
      if (!seen.count(sib)) return InvalidArgument("tree choices: child rank " + std::to_string(c.back()) + " needs rank " + std::to_string(c.back() - 1) + " too");
    }
  }
  return Status::Ok();
}

}  // namespace sd
