// A ForwardModel that keeps its K/V away from the engine's cache, as a device model does: the
// engine's KVCache (no host storage) only hands out pages, and this model mirrors them in a
// private host cache of the same geometry, then runs the CPU model there. Registered as device
// "shadow" by tests only (_core._register_shadow_device): on the CPU it checks that the engine
// and every drafter reach the K/V only through the model, which a GPU model relies on.
#pragma once
#include <functional>
#include <memory>

#include "model/llama.h"

namespace sd {

class ShadowModel final : public ForwardModel {
 public:
  explicit ShadowModel(std::unique_ptr<LlamaModel> inner) : inner_(std::move(inner)) {}

  Status forward(const ForwardBatch& batch, KVCache& kv, float* logits) override;
  Status copy_tokens(KVCache& kv, const SeqPages& seq, const std::vector<int64_t>& from,
                     const std::vector<int64_t>& to) override;
  const ModelConfig& config() const override { return inner_->config(); }
  DType dtype() const override { return inner_->dtype(); }
  std::string device() const override { return "shadow"; }
  const Matrix* host_embedding() const override { return inner_->host_embedding(); }
  int64_t weight_bytes_per_token(const std::vector<int32_t>& layers) const override {
    return inner_->weight_bytes_per_token(layers);
  }
  using ForwardModel::weight_bytes_per_token;

 private:
  // The private cache for `kv` (made at the first call; one cache per model, as on a device).
  Status bind(const KVCache& kv);

  std::unique_ptr<LlamaModel> inner_;
  const KVCache* bound_ = nullptr;
  std::unique_ptr<KVCache> mirror_;
};

Status create_shadow_model(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                           const std::function<void(int, int)>& progress, std::unique_ptr<ForwardModel>* out);

}  // namespace sd
