// Speculative sampling on the GPU: lossless (multi-draft) rejection sampling of a draft chain or
// tree against the target's processed distributions, one block per request, with the exact
// walk, arithmetic and Philox keying of the CPU verifier (spec/verifier.cpp, verify_sampling):
//   at node `cur` (the root is -1) the residual p starts as the target row of `cur`; children in
//   index order, the s-th child x (drawn from q_x; one-hot when no draft probs) is accepted when
//   q_x(x) > 0 and u * q_x(x) < p(x), u = philox_uniform(accept_stream(seed), pos << 8 | min(s, 255));
//   on rejection p <- norm(max(p - q_x, 0)) (one-hot q: p(x) <- 0, renormalized; back to the
//   row when nothing is left). When no child is accepted the recovered (after a rejection) or
//   bonus (at a leaf) token is the inverse-CDF draw from p at philox_uniform(seed, pos), where pos
//   = position + accepted so far. vLLM's words: accepted, recovered, bonus; padding is -1.
// Per request the work is O(children examined * V / blockDim) per thread; the tree structure is
// scanned by every thread (uniform control flow), O(nodes * depth) index reads, small trees.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/block_utils.cuh"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"
#include "sampling/philox.h"
#include "sampling/rng_streams.h"

namespace sd::cuda {

namespace {

using detail::DrawShared;
using detail::SumOp;

constexpr int kThreads = 512;

// A chain of k drafts: node i's parent is i - 1.
struct ChainNodes {
  const int32_t* tokens;
  int32_t n;
  __device__ int32_t parent(int32_t i) const { return i - 1; }
  __device__ int32_t token(int32_t i) const { return tokens[i]; }
};

// A tree from parent-first parallel arrays (local indexes, -1: child of the root).
struct TreeNodes {
  const int32_t* tokens;
  const int32_t* parents;
  int32_t n;
  __device__ int32_t parent(int32_t i) const { return parents[i]; }
  __device__ int32_t token(int32_t i) const { return tokens[i]; }
};

struct WalkResult {
  int32_t num_accepted;
  int32_t next_token;
  bool bonus;
};

struct WalkShared {
  DrawShared draw;
  double dsum[32];
};

// The CPU's verify_sampling for one request. rows: [1 + n, V] target rows (root first); q:
// [n, V] draft rows or nullptr; p: a [V] scratch row. accepted[0 .. max_accept) receives the
// accepted node indexes (written by thread 0). Called by all threads; returns to all threads.
template <class Nodes>
__device__ WalkResult walk(const Nodes& nodes, const float* rows, const float* q_rows, int64_t V, uint64_t seed,
                           uint64_t position, float* p, int32_t* accepted, int32_t max_accept, WalkShared* sh) {
  const bool one_hot = q_rows == nullptr;
  const uint64_t acc_key = accept_stream(seed);
  int32_t cur = -1, n_acc = 0;
  uint64_t pos = position;
  for (;;) {
    const float* row = rows + static_cast<int64_t>(cur + 1) * V;
    __syncthreads();  // every thread is done reading p (the last acceptance test)
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) p[v] = row[v];
    __syncthreads();
    bool has_child = false, took = false;
    int32_t sibling = 0;
    for (int32_t i = cur + 1; i < nodes.n; ++i) {  // the same walk in every thread
      if (nodes.parent(i) != cur) continue;
      has_child = true;
      const int32_t x = nodes.token(i);
      const float* q = one_hot ? nullptr : q_rows + static_cast<int64_t>(i) * V;
      const float qx = one_hot ? 1.0f : q[x];
      const uint64_t ctr = (pos << 8) | static_cast<uint64_t>(sibling < 255 ? sibling : 255);
      const float u = philox_uniform(acc_key, ctr, 0);
      ++sibling;
      if (qx > 0.0f && u * qx < p[x]) {  // u < min(1, p(x) / q(x))
        if (threadIdx.x == 0 && n_acc < max_accept) accepted[n_acc] = i;
        ++n_acc;
        cur = i;
        ++pos;
        took = true;
        break;
      }
      // Rejected: p <- norm(max(0, p - q)), back to the row when nothing is left.
      __syncthreads();  // every thread has read p[x]
      if (one_hot) {
        if (threadIdx.x == 0) p[x] = 0.0f;
      } else {
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) p[v] = fmaxf(0.0f, p[v] - q[v]);
      }
      __syncthreads();
      double s = 0.0;
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) s += static_cast<double>(p[v]);
      s = detail::block_allreduce(s, SumOp{}, 0.0, sh->dsum);  // all reads of p precede its barrier
      if (s <= 0.0) {
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) p[v] = row[v];
      } else {
        const float inv = static_cast<float>(1.0 / s);
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) p[v] *= inv;
      }
      __syncthreads();
    }
    if (took) continue;
    const int64_t tok = detail::block_draw(p, V, philox_uniform(seed, pos, 0), &sh->draw);
    return WalkResult{n_acc, static_cast<int32_t>(tok), !has_child};
  }
}

__global__ void __launch_bounds__(kThreads) verify_chain_kernel(const float* target_probs, const int32_t* draft_tokens,
                                                                const float* draft_probs, int32_t k, int64_t V,
                                                                const uint64_t* seeds, const uint64_t* positions,
                                                                int32_t* out_tokens, int32_t* num_accepted, float* workspace) {
  __shared__ WalkShared sh;
  __shared__ int32_t acc[256];  // k <= 255 (checked by the entry point)
  const int64_t b = blockIdx.x;
  const ChainNodes nodes{draft_tokens + b * k, k};
  const float* rows = target_probs + b * (k + 1) * V;
  const float* q = draft_probs == nullptr ? nullptr : draft_probs + b * k * V;
  const WalkResult r = walk(nodes, rows, q, V, seeds[b], positions[b], workspace + b * V, acc, k, &sh);
  if (threadIdx.x == 0) {
    int32_t* out = out_tokens + b * (k + 1);
    for (int32_t j = 0; j < r.num_accepted; ++j) out[j] = nodes.token(acc[j]);
    out[r.num_accepted] = r.next_token;
    for (int32_t j = r.num_accepted + 1; j <= k; ++j) out[j] = -1;
    num_accepted[b] = r.num_accepted;
  }
}

__global__ void __launch_bounds__(kThreads) verify_tree_kernel(const int32_t* node_indptr, const int32_t* tokens,
                                                               const int32_t* parents, const float* target_probs,
                                                               const float* draft_probs, int64_t V, const uint64_t* seeds,
                                                               const uint64_t* positions, int32_t max_accept,
                                                               int32_t* accepted, int32_t* num_accepted,
                                                               int32_t* next_token, uint8_t* bonus, float* workspace) {
  __shared__ WalkShared sh;
  const int64_t b = blockIdx.x;
  const int64_t n0 = node_indptr[b];
  const TreeNodes nodes{tokens + n0, parents + n0, node_indptr[b + 1] - static_cast<int32_t>(n0)};
  const float* rows = target_probs + (n0 + b) * V;
  const float* q = draft_probs == nullptr ? nullptr : draft_probs + n0 * V;
  int32_t* acc = accepted + b * max_accept;
  const WalkResult r = walk(nodes, rows, q, V, seeds[b], positions[b], workspace + b * V, acc, max_accept, &sh);
  if (threadIdx.x == 0) {
    for (int32_t j = r.num_accepted; j < max_accept; ++j) acc[j] = -1;
    num_accepted[b] = r.num_accepted;
    next_token[b] = r.next_token;
    bonus[b] = r.bonus ? 1 : 0;
  }
}

Status check_sizes(int64_t B, int64_t V, const char* op) {
  if (B < 0 || B > 0x7fffffff || V <= 0 || V > 0x7fffffff)
    return InvalidArgument(std::string(op) + ": expected 0 <= B < 2^31 requests and 0 < V < 2^31");
  return Status::Ok();
}

}  // namespace

Status verify_chain(const float* target_probs, const int32_t* draft_tokens, const float* draft_probs, int64_t B, int32_t k,
                    int64_t V, const uint64_t* seeds, const uint64_t* positions, int32_t* out_tokens,
                    int32_t* num_accepted, float* workspace, cudaStream_t stream) {
  SD_RETURN_IF_ERROR(check_sizes(B, V, "verify_chain"));
  if (k < 0 || k > 255) return InvalidArgument("verify_chain: expected 0 <= k <= 255 drafts, got " + std::to_string(k));
  if (B == 0) return Status::Ok();
  verify_chain_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(target_probs, draft_tokens, draft_probs, k, V, seeds,
                                                                         positions, out_tokens, num_accepted, workspace);
  return check_launch("verify_chain_kernel");
}

Status verify_tree(const int32_t* node_indptr, int64_t B, const int32_t* tokens, const int32_t* parents,
                   const float* target_probs, const float* draft_probs, int64_t V, const uint64_t* seeds,
                   const uint64_t* positions, int32_t max_accept, int32_t* accepted, int32_t* num_accepted,
                   int32_t* next_token, uint8_t* bonus, float* workspace, cudaStream_t stream) {
  SD_RETURN_IF_ERROR(check_sizes(B, V, "verify_tree"));
  if (max_accept < 0) return InvalidArgument("verify_tree: max_accept must be >= 0");
  if (B == 0) return Status::Ok();
  verify_tree_kernel<<<static_cast<unsigned>(B), kThreads, 0, stream>>>(node_indptr, tokens, parents, target_probs,
                                                                        draft_probs, V, seeds, positions, max_accept,
                                                                        accepted, num_accepted, next_token, bonus,
                                                                        workspace);
  return check_launch("verify_tree_kernel");
}

// ---- host wrappers ---------------------------------------------------------------------------

Status verify_chain_host(const float* target_probs, const int32_t* draft_tokens, const float* draft_probs, int64_t B,
                         int32_t k, int64_t V, const uint64_t* seeds, const uint64_t* positions, int32_t* out_tokens,
                         int32_t* num_accepted) {
  SD_RETURN_IF_ERROR(check_sizes(B, V, "verify_chain"));
  if (k < 0 || k > 255) return InvalidArgument("verify_chain: expected 0 <= k <= 255 drafts, got " + std::to_string(k));
  const size_t Bs = static_cast<size_t>(B), ks = static_cast<size_t>(k), Vs = static_cast<size_t>(V);
  for (size_t i = 0; i < Bs * ks; ++i)
    if (draft_tokens[i] < 0 || draft_tokens[i] >= V)
      return InvalidArgument("draft_tokens: token " + std::to_string(draft_tokens[i]) + " is out of range [0, " +
                             std::to_string(V) + ")");
  DeviceBuffer<float> dp, dq, dws;
  DeviceBuffer<int32_t> dtok, dout, dnum;
  DeviceBuffer<uint64_t> dseed, dpos;
  SD_RETURN_IF_ERROR(dp.upload(target_probs, Bs * (ks + 1) * Vs));
  if (draft_probs != nullptr) SD_RETURN_IF_ERROR(dq.upload(draft_probs, Bs * ks * Vs));
  SD_RETURN_IF_ERROR(dtok.upload(draft_tokens, Bs * ks));
  SD_RETURN_IF_ERROR(dseed.upload(seeds, Bs));
  SD_RETURN_IF_ERROR(dpos.upload(positions, Bs));
  SD_RETURN_IF_ERROR(dout.alloc(Bs * (ks + 1)));
  SD_RETURN_IF_ERROR(dnum.alloc(Bs));
  SD_RETURN_IF_ERROR(dws.alloc(Bs * Vs));
  SD_RETURN_IF_ERROR(verify_chain(dp.get(), dtok.get(), draft_probs != nullptr ? dq.get() : nullptr, B, k, V, dseed.get(),
                                  dpos.get(), dout.get(), dnum.get(), dws.get(), nullptr));
  SD_RETURN_IF_ERROR(sync(nullptr, "verify_chain"));
  SD_RETURN_IF_ERROR(dout.download(out_tokens, Bs * (ks + 1)));
  return dnum.download(num_accepted, Bs);
}

Status verify_tree_host(const int32_t* node_indptr, int64_t B, const int32_t* tokens, const int32_t* parents,
                        const float* target_probs, const float* draft_probs, int64_t V, const uint64_t* seeds,
                        const uint64_t* positions, int32_t max_accept, int32_t* accepted, int32_t* num_accepted,
                        int32_t* next_token, uint8_t* bonus) {
  SD_RETURN_IF_ERROR(check_sizes(B, V, "verify_tree"));
  if (node_indptr[0] != 0) return InvalidArgument("node_indptr[0] must be 0");
  for (int64_t b = 0; b < B; ++b) {
    const int32_t n0 = node_indptr[b], n1 = node_indptr[b + 1];
    if (n1 < n0) return InvalidArgument("node_indptr must be non-decreasing");
    for (int32_t i = n0; i < n1; ++i) {
      const int32_t local = i - n0, par = parents[i];
      if (par < -1 || par >= local)
        return InvalidArgument("parents: node " + std::to_string(local) + " of request " + std::to_string(b) +
                               " has parent " + std::to_string(par) + " (expected -1 or an earlier node)");
      if (tokens[i] < 0 || tokens[i] >= V)
        return InvalidArgument("tokens: token " + std::to_string(tokens[i]) + " is out of range [0, " +
                               std::to_string(V) + ")");
    }
  }
  const size_t Bs = static_cast<size_t>(B), N = static_cast<size_t>(node_indptr[B]), Vs = static_cast<size_t>(V),
               A = static_cast<size_t>(max_accept);
  DeviceBuffer<int32_t> dind, dtok, dpar, dacc, dnum, dnext;
  DeviceBuffer<uint8_t> dbonus;
  DeviceBuffer<float> dp, dq, dws;
  DeviceBuffer<uint64_t> dseed, dpos;
  SD_RETURN_IF_ERROR(dind.upload(node_indptr, Bs + 1));
  SD_RETURN_IF_ERROR(dtok.upload(tokens, N));
  SD_RETURN_IF_ERROR(dpar.upload(parents, N));
  SD_RETURN_IF_ERROR(dp.upload(target_probs, (N + Bs) * Vs));
  if (draft_probs != nullptr) SD_RETURN_IF_ERROR(dq.upload(draft_probs, N * Vs));
  SD_RETURN_IF_ERROR(dseed.upload(seeds, Bs));
  SD_RETURN_IF_ERROR(dpos.upload(positions, Bs));
  SD_RETURN_IF_ERROR(dacc.alloc(Bs * A));
  SD_RETURN_IF_ERROR(dnum.alloc(Bs));
  SD_RETURN_IF_ERROR(dnext.alloc(Bs));
  SD_RETURN_IF_ERROR(dbonus.alloc(Bs));
  SD_RETURN_IF_ERROR(dws.alloc(Bs * Vs));
  SD_RETURN_IF_ERROR(verify_tree(dind.get(), B, dtok.get(), dpar.get(), dp.get(), draft_probs != nullptr ? dq.get() : nullptr,
                                 V, dseed.get(), dpos.get(), max_accept, dacc.get(), dnum.get(), dnext.get(), dbonus.get(),
                                 dws.get(), nullptr));
  SD_RETURN_IF_ERROR(sync(nullptr, "verify_tree"));
  SD_RETURN_IF_ERROR(dacc.download(accepted, Bs * A));
  SD_RETURN_IF_ERROR(dnum.download(num_accepted, Bs));
  SD_RETURN_IF_ERROR(dnext.download(next_token, Bs));
  return dbonus.download(bonus, Bs);
}

}  // namespace sd::cuda
