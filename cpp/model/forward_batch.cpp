#include "model/forward_batch.h"

#include <algorithm>
#include <string>

namespace sd {

Status validate_forward_batch(const ForwardBatch& batch, const ModelConfig& cfg, const float* logits) {
  const int64_t T = static_cast<int64_t>(batch.token_ids.size());
  const int32_t B = static_cast<int32_t>(batch.seqs.size());
  if (static_cast<int64_t>(batch.positions.size()) != T ||
      static_cast<int32_t>(batch.qo_indptr.size()) != B + 1 || batch.qo_indptr[B] != T)
    return InvalidArgument("forward: positions/qo_indptr do not match the token count");
  for (int32_t id : batch.token_ids)
    if (id < 0 || id >= cfg.vocab_size)
      return InvalidArgument("token id " + std::to_string(id) + " is out of range [0, " +
                             std::to_string(cfg.vocab_size) + ")");
  for (int32_t r : batch.logit_rows)
    if (r < 0 || r >= T) return InvalidArgument("forward: logit row out of range");
  if (logits == nullptr && batch.argmax == nullptr && batch.sample == nullptr && batch.draw == nullptr &&
      !batch.logit_rows.empty())
    return InvalidArgument("forward: logit rows asked for without a logits, argmax, sample or draw output");
  if (batch.draw != nullptr) SD_RETURN_IF_ERROR(batch.draw->validate(static_cast<int64_t>(batch.logit_rows.size())));
  if (batch.sample != nullptr)
    SD_RETURN_IF_ERROR(batch.sample->validate(static_cast<int64_t>(batch.logit_rows.size()), cfg.vocab_size));
  if (!batch.capture_layers.empty() && batch.captured == nullptr) return InvalidArgument("forward: capture_layers needs an output buffer");
  for (int32_t l : batch.capture_layers)
    if (l < 0 || l >= cfg.num_layers ||
        (!batch.layers.empty() && !std::binary_search(batch.layers.begin(), batch.layers.end(), l)))
      return InvalidArgument("forward: captured layer " + std::to_string(l) + " does not run in this forward");
  for (size_t i = 0; i < batch.layers.size(); ++i)
    if (batch.layers[i] < 0 || batch.layers[i] >= cfg.num_layers || (i > 0 && batch.layers[i] <= batch.layers[i - 1]))
      return InvalidArgument("forward: layers must be ascending indices in [0, " + std::to_string(cfg.num_layers) + ")");
  return Status::Ok();
}

Status validate_copy_tokens(const SeqPages& seq, const std::vector<int64_t>& from, const std::vector<int64_t>& to) {
  if (from.size() != to.size()) return InvalidArgument("copy_tokens: from and to differ in length");
  for (size_t i = 0; i < from.size(); ++i)
    if (std::min(from[i], to[i]) < 0 || std::max(from[i], to[i]) >= seq.num_tokens())
      return InvalidArgument("copy_tokens: token index outside the sequence");
  return Status::Ok();
}

}  // namespace sd
