// Where a ForwardModel is made: "cpu" builds a LlamaModel here; other devices build through a
// factory that their extension registers at import (the CUDA extension registers "cuda" from
// specdec_native.cuda; the core never links CUDA).
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "core/status.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/forward_model.h"
#include "model/weights.h"

namespace sd {

using ModelFactory = Status (*)(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                                const std::function<void(int, int)>& progress, std::unique_ptr<ForwardModel>* out);

// An extension hands its factory to the core's Python module as a PyCapsule of this name
// (_core._register_model_factory): the two modules link separate copies of the core's code.
inline constexpr const char* kModelFactoryCapsule = "specdec_native.ModelFactory";

// Replaces any factory registered for `device` before.
void register_model_factory(const std::string& device, ModelFactory factory);
bool has_model_factory(const std::string& device);

// "cpu", or a registered device ("cuda" from the CUDA extension; "shadow", a test device,
// model/shadow_model.h). InvalidArgument for any other name; Unsupported for "cuda" when its
// extension is not loaded (no GPU, or a CPU-only build).
Status create_model(const std::string& device, const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                    const std::function<void(int, int)>& progress, std::unique_ptr<ForwardModel>* out);

}  // namespace sd
