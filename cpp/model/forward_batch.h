// One forward call's inputs: the sequences, their new tokens (already appended to their
// SeqPages), RoPE positions, optional tree masks, and what to compute (logit rows, layers,
// sparse window, captured hidden states). Shared by every ForwardModel (model/forward_model.h).
#pragma once
#include <cstdint>
#include <vector>

#include "core/status.h"
#include "kv/kv_window.h"
#include "kv/seq_pages.h"
#include "model/config.h"
#include "spec/verifier.h"

namespace sd {

struct ForwardBatch {
  std::vector<int32_t> token_ids;  // [T], all sequences' new tokens, request after request
  std::vector<int32_t> positions;  // [T], RoPE positions (depth in the tree for drafts)
  std::vector<int32_t> qo_indptr;  // [B + 1]
  std::vector<const SeqPages*> seqs;  // [B]; each already holds its new tokens at its end
  // Optional tree masks in FlashInfer's layout: request b has qo_len x kv_len bools (row-major)
  // at custom_mask[mask_indptr[b]]. Empty: causal.
  std::vector<uint8_t> custom_mask;
  std::vector<int64_t> mask_indptr;
  std::vector<int32_t> logit_rows;  // which of the T tokens need logits
  // Greedy verification needs only each logit row's argmax: when set, argmax[i] receives row
  // logit_rows[i]'s argmax (the lowest index among equal maxima) and the forward's `logits`
  // may be nullptr (a device model then downloads the ids alone).
  int32_t* argmax = nullptr;
  // Lossless sampling where the logits are: when set, the logit rows are verified group by group
  // (spec/verifier.h RowSampling) into sample->outcomes and `logits` may be nullptr (a device
  // model then downloads the outcomes alone).
  RowSampling* sample = nullptr;
  // Draws from every logit row where the logits are (sampling/sampler.h RowDraws); `logits` may
  // then be nullptr. For a draft model's sampled chains.
  RowDraws* draw = nullptr;
  // Self-speculation drafts run a cheaper version of the same model over the same cache:
  std::vector<int32_t> layers;  // the decoder layers to run, ascending (empty: all); others are skipped
  KVWindow window;              // sparse attention (sinks + recent pages); not with a custom mask
  // Feature capture (EAGLE-3 heads read the target's hidden states): the residual stream after
  // each of these decoder layers, for every token, into captured[T x capture_layers.size() x H]
  // (row t holds the layers' outputs side by side, in this order). Each layer must run.
  std::vector<int32_t> capture_layers;
  float* captured = nullptr;
};

// The checks every model runs first: shapes agree, ids and logit rows in range, an output for
// the logit rows (`logits` or batch.argmax), captured and run layers valid.
Status validate_forward_batch(const ForwardBatch& batch, const ModelConfig& cfg, const float* logits);

// ForwardModel::copy_tokens' checks: from and to pair up, every index inside `seq`.
Status validate_copy_tokens(const SeqPages& seq, const std::vector<int64_t>& from, const std::vector<int64_t>& to);

}  // namespace sd
