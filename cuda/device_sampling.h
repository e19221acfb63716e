// RowSampling (spec/verifier.h) on the GPU, for a device model's forward: the processed
// distributions of the logit rows (cuda/sampling.cu), then each group's draft tree walked by the
// lossless verifier (cuda/spec_sampling.cu); only the outcomes come back to the host. Also a
// draft model's RowDraws (sampling/sampler.h): each row's draw and its distribution.
//
// NOT YET RUN ON A GPU: written and compiled without one (docs/cuda.md).
#pragma once
#include <cstdint>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"
#include "cuda/staged_tables.h"
#include "spec/verifier.h"

namespace sd::cuda {

class DeviceRowSampler {
 public:
  // Queues the work on `stream` over logits [rs.num_rows(), vocab] (device memory, rs already
  // validated) and the downloads of its results into this object's host arrays.
  Status enqueue(const RowSampling& rs, const float* logits, int64_t vocab, cudaStream_t stream);
  // After the stream has synchronized: rs->outcomes from the downloaded results.
  void read(RowSampling* rs) const;
  // RowDraws (sampling/sampler.h) over logits [d->configs.size(), vocab]: the `sample` kernel
  // with the rows' keys and counters; tokens and distributions are downloaded into *d (valid
  // once the stream has synchronized).
  Status enqueue_draws(RowDraws* d, const float* logits, int64_t vocab, cudaStream_t stream);

 private:
  // Host staging (kept between calls; the async copies read and write it).
  std::vector<SamplingRow> rows_host_;
  std::vector<int32_t> node_indptr_host_, tokens_host_, parents_host_;
  std::vector<uint64_t> seeds_host_, positions_host_;
  std::vector<float> q_host_;
  int32_t max_accept_ = 1;
  size_t groups_ = 0;

  enum Table { kRows, kNodeIndptr, kTokens, kParents, kSeeds, kPositions, kQ, kNumTables };
  StagedTables tables_;  // the inputs above, one transfer
  StagedTables draw_tables_;  // enqueue_draws' rows
  DeviceBuffer<int32_t> draw_tokens_;
  // The results, in one device array and one download: accepted [G, max_accept], num_accepted
  // [G], next_token [G], then G bonus bytes (in G more int32).
  DeviceBuffer<int32_t> out_;
  PinnedBuffer<int32_t> out_host_;
  DeviceBuffer<float> probs_, workspace_;
};

}  // namespace sd::cuda
