// The CUDA ForwardModel's factory (cuda/device_llama.cu), registered with the core as "cuda"
// (model/device_registry.h) when specdec_native.cuda picks the GPU. Plain C++: the module's
// .cpp files include it without the CUDA headers.
#pragma once
#include <functional>
#include <memory>

#include "core/status.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/forward_model.h"
#include "model/weights.h"

namespace sd::cuda {

// A Llama-family model whose weights (bf16; f16, int8 or int4 layers when asked) and K/V (bf16)
// live on the current GPU.
Status create_device_llama(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                           const std::function<void(int, int)>& progress, std::unique_ptr<ForwardModel>* out);

}  // namespace sd::cuda
