// Model weights in the dtype the kernels read: loaded from a Checkpoint, converted (f32, bf16,
// f16) or quantized to int8 blocks of 32 at load time. q/k/v and gate/up are fused row-wise so
// one matmul computes each group.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"
#include "ops/matrix.h"

namespace sd {

class OwnedMatrix {
 public:
  const Matrix& view() const { return m_; }
  // Builds rows = sum of the parts' rows, each part a [r_i, cols] tensor, in dtype `target`,
  // packed when `pack` and cols % 32 == 0. kQ8 / kQ4 need packing; otherwise the matrix falls
  // back to bf16.
  static Status from_tensors(const std::vector<const TensorView*>& parts, int64_t cols,
                             DType target, OwnedMatrix* out, bool pack = true);

 private:
  Matrix m_;
  std::vector<uint8_t> data_;
};

struct LayerWeights {
  OwnedMatrix qkv;      // [(H + 2 * Hkv) * head_dim, hidden]
  OwnedMatrix o;        // [hidden, H * head_dim]
  OwnedMatrix gate_up;  // [2 * intermediate, hidden]
  OwnedMatrix down;     // [hidden, intermediate]
  std::vector<float> qkv_bias;  // empty without attention bias
  std::vector<float> input_norm, post_attention_norm;
};

struct LlamaWeights {
  OwnedMatrix embed;    // [vocab, hidden]
  OwnedMatrix lm_head;  // empty when tied: use embed; [head_vocab.size(), hidden] with a head_vocab
  bool tied = false;
  std::vector<int32_t> head_vocab;  // the token of each lm_head row; empty: every token in order
  std::vector<float> final_norm;
  std::vector<LayerWeights> layers;

  const Matrix& head() const { return tied ? embed.view() : lm_head.view(); }
};

// Row `row` of a float tensor (F32, F16 or BF16) with `cols` columns, as f32.
void read_f32_row(const TensorView& t, int64_t row, int64_t cols, float* dst);
// "[a, b]": a shape in error messages.
std::string shape_str(const std::vector<int64_t>& shape);

// "auto" resolves to the checkpoint's own floating dtype (f32, bf16 or f16).
Status resolve_dtype(const std::string& name, const Checkpoint& ckpt, DType* out);

// The dtypes of a model's decoder layers and of its embedding and LM head ("tables"), and
// which rows of the LM head it keeps.
struct WeightDTypes {
  DType layers = DType::kF32;
  DType tables = DType::kF32;
  bool row_major = false;  // plain [rows, cols] matrices (a device model uploads them as they are)
  // Non-empty (sorted, distinct token ids): the LM head keeps only these rows, a draft's reduced
  // vocabulary (FR-Spec); the logits of every other token are -inf.
  std::vector<int32_t> head_vocab;
  // A model whose logits are served: int4 layers keep int8 tables (as GGUF's Q4_K_M keeps its
  // output tensor at 6 bits): the logits are the most sensitive matmul and a small share of
  // the bytes.
  static WeightDTypes for_target(DType d) { return {d, d == DType::kQ4 ? DType::kQ8 : d, false, {}}; }
  // A draft only proposes (verification keeps the output exact), and its LM head is a large
  // share of its bytes (Qwen2.5 0.5B: 136M of 494M weights), so it is quantized like the rest.
  static WeightDTypes for_draft(DType d, std::vector<int32_t> vocab = {}) { return {d, d, false, std::move(vocab)}; }
};

// The rows `ids` of a [rows, ...] tensor, copied into `storage` (which the view points into).
TensorView gather_rows(const TensorView& t, const std::vector<int32_t>& ids, std::vector<uint8_t>* storage);
// InvalidArgument unless `ids` is a non-empty sorted list of distinct ids in [0, vocab_size).
Status validate_head_vocab(const std::vector<int32_t>& ids, int64_t vocab_size);

Status load_llama_weights(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                          const std::function<void(int, int)>& progress, LlamaWeights* out);

}  // namespace sd
