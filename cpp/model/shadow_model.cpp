#include "model/shadow_model.h"

namespace sd {

Status ShadowModel::bind(const KVCache& kv) {
  if (kv.config().host_storage)
    return InvalidArgument("shadow model: the cache has host storage (expected one made by kv_config)");
  if (bound_ == &kv) return Status::Ok();
  if (bound_ != nullptr) return InvalidArgument("shadow model: a different KV cache than before (one per model)");
  KVCacheConfig c = kv.config();
  c.host_storage = true;
  mirror_.reset(new KVCache(c));
  bound_ = &kv;
  return Status::Ok();
}

Status ShadowModel::forward(const ForwardBatch& batch, KVCache& kv, float* logits) {
  SD_RETURN_IF_ERROR(bind(kv));
  return inner_->forward(batch, *mirror_, logits);
}

Status ShadowModel::copy_tokens(KVCache& kv, const SeqPages& seq, const std::vector<int64_t>& from,
                                const std::vector<int64_t>& to) {
  SD_RETURN_IF_ERROR(bind(kv));
  return inner_->copy_tokens(*mirror_, seq, from, to);
}

Status create_shadow_model(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                           const std::function<void(int, int)>& progress, std::unique_ptr<ForwardModel>* out) {
  std::unique_ptr<LlamaModel> inner;
  SD_RETURN_IF_ERROR(LlamaModel::create(cfg, ckpt, dtypes, progress, &inner));
  *out = std::make_unique<ShadowModel>(std::move(inner));
  return Status::Ok();
}

}  // namespace sd
