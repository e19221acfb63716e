#include "model/config.h"

namespace sd {

Status ModelConfig::validate() const {
  auto positive = [](int64_t v) { return v > 0; };
  if (!positive(vocab_size) || !positive(hidden_size) || !positive(intermediate_size) ||
      !positive(num_layers) || !positive(num_heads) || !positive(num_kv_heads) || !positive(head_dim))
    return InvalidArgument(
        "config: vocab_size, hidden_size, intermediate_size, num_hidden_layers, "
        "num_attention_heads, num_key_value_heads and head_dim must all be positive");
  if (num_heads % num_kv_heads != 0)
    return InvalidArgument("config: num_attention_heads (" + std::to_string(num_heads) +
                           ") must be a multiple of num_key_value_heads (" +
                           std::to_string(num_kv_heads) + ")");
  if (head_dim % 2 != 0) return InvalidArgument("config: head_dim must be even for RoPE");
  if (rope_scaling.type != "default" && rope_scaling.type != "llama3")
    return Unsupported("config: rope_scaling type '" + rope_scaling.type +
                       "' is not supported (supported: default, llama3)");
  if (!(rms_norm_eps > 0) || !(rope_theta > 0))
    return InvalidArgument("config: rms_norm_eps and rope_theta must be positive");
  return Status::Ok();
}

}  // namespace sd
