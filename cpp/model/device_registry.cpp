#include "model/device_registry.h"

#include <map>
#include <mutex>

#include "model/llama.h"

namespace sd {
namespace {

std::mutex& registry_mutex() {
  static std::mutex mu;
  return mu;
}

std::map<std::string, ModelFactory>& registry() {
  static std::map<std::string, ModelFactory> factories;
  return factories;
}

Status create_cpu_model(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                        const std::function<void(int, int)>& progress, std::unique_ptr<ForwardModel>* out) {
  std::unique_ptr<LlamaModel> m;
  SD_RETURN_IF_ERROR(LlamaModel::create(cfg, ckpt, dtypes, progress, &m));
  *out = std::move(m);
  return Status::Ok();
}

}  // namespace

void register_model_factory(const std::string& device, ModelFactory factory) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry()[device] = factory;
}

bool has_model_factory(const std::string& device) {
  if (device == "cpu") return true;
  std::lock_guard<std::mutex> lock(registry_mutex());
  return registry().count(device) > 0;
}

Status create_model(const std::string& device, const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                    const std::function<void(int, int)>& progress, std::unique_ptr<ForwardModel>* out) {
  if (device == "cpu") return create_cpu_model(cfg, ckpt, dtypes, progress, out);
  ModelFactory factory = nullptr;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = registry().find(device);
    if (it != registry().end()) factory = it->second;
  }
  if (factory == nullptr && device != "cuda")
    return InvalidArgument("device must be 'cpu' or 'cuda', got '" + device + "'");
  if (factory == nullptr)
    return Unsupported("device 'cuda': the CUDA extension is not loaded (this build has no CUDA extension, or no "
                       "GPU is visible); use device='cpu' or 'auto'");
  return factory(cfg, ckpt, dtypes, progress, out);
}

}  // namespace sd
