#include "model/weights.h"

#include <cstring>
#include <string>

#include "core/parallel.h"

namespace sd {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

void read_f32_row(const TensorView& t, int64_t row, int64_t cols, float* dst) {
  const int64_t off = row * cols;
  if (t.dtype == "F32") {
    std::memcpy(dst, t.data + off * 4, static_cast<size_t>(cols) * 4);
  } else {
    const uint8_t* src = t.data + off * 2;
    const bool bf16 = t.dtype == "BF16";
    uint16_t h;
    for (int64_t i = 0; i < cols; ++i) {
      std::memcpy(&h, src + 2 * i, 2);
      dst[i] = bf16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  }
}

namespace {

bool is_float_dtype(const std::string& d) { return d == "F32" || d == "F16" || d == "BF16"; }

// Writes n source values in float dtype `target`.
void write_values(const float* src, int64_t n, DType target, uint8_t* dst) {
  switch (target) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      break;
    case DType::kBF16: {
      uint16_t* d = reinterpret_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      break;
    }
    case DType::kF16: {
      uint16_t* d = reinterpret_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      break;
    }
    case DType::kQ8:  // packed block by block in from_tensors
    case DType::kQ4:
      break;
  }
}

// Quantizes one row, 32 columns at a time, into its group (Matrix's kQ8 / kQ4 layout, whose
// offsets place each step's 4 bytes; a kQ4 byte holds step s low and step s + kQ4Loads high).
void pack_quantized_row(const float* row, int64_t cols, int64_t r, DType target, uint8_t* group) {
  for (int64_t col = 0; col < cols; col += kQ8Block) {
    if (target == DType::kQ8) {
      int8_t q[kQ8Block];
      const float scale = quantize_q8_block(row + col, q);
      std::memcpy(group + Matrix::q8_scale_offset(r, col), &scale, 4);
      for (int step = 0; step < kQ8Steps; ++step) {
        uint8_t* dst = group + Matrix::q8_offset(r, col + 4 * step);
        for (int j = 0; j < 4; ++j) dst[j] = static_cast<uint8_t>(q[4 * step + j]) ^ 0x80;
      }
    } else {
      uint8_t q[kQ8Block];
      uint16_t scale, min;
      quantize_q4_block(row + col, q, &scale, &min);
      uint8_t* scales = group + Matrix::q4_scale_offset(r, col);
      std::memcpy(scales, &scale, 2);
      std::memcpy(scales + Matrix::kQ4MinOffset, &min, 2);
      for (int step = 0; step < kQ4Loads; ++step) {
        uint8_t* dst = group + Matrix::q4_offset(r, col + 4 * step);
        for (int j = 0; j < 4; ++j)
          dst[j] = static_cast<uint8_t>(q[4 * step + j] | q[4 * (step + kQ4Loads) + j] << 4);
      }
    }
  }
}

Status require(const Checkpoint& ckpt, const std::string& name, std::vector<int64_t> shape,
               const TensorView** out) {
  const TensorView* t = ckpt.find(name);
  if (!t) return CorruptFile("checkpoint is missing tensor '" + name + "'");
  if (!is_float_dtype(t->dtype))
    return Unsupported("tensor '" + name + "' has dtype " + t->dtype +
                       "; supported weight dtypes: F32, F16, BF16");
  if (t->shape != shape)
    return CorruptFile("tensor '" + name + "' has shape " + shape_str(t->shape) + ", expected " +
                       shape_str(shape) + " from config.json");
  *out = t;
  return Status::Ok();
}

Status load_vector(const Checkpoint& ckpt, const std::string& name, int64_t n, std::vector<float>* out) {
  const TensorView* t = nullptr;
  SD_RETURN_IF_ERROR(require(ckpt, name, {n}, &t));
  out->resize(static_cast<size_t>(n));
  read_f32_row(*t, 0, n, out->data());
  return Status::Ok();
}

}  // namespace

Status OwnedMatrix::from_tensors(const std::vector<const TensorView*>& parts, int64_t cols,
                                 DType target, OwnedMatrix* out, bool pack) {
  const bool packed = pack && cols % kPackCols == 0;
  if (is_quantized(target) && !packed) target = DType::kBF16;
  int64_t rows = 0;
  for (const TensorView* p : parts) rows += p->shape[0];
  Matrix m{target, rows, cols, nullptr, packed};
  out->data_.assign(static_cast<size_t>(m.nbytes()), 0);
  m.data = out->data_.data();
  uint8_t* base = out->data_.data();
  const int64_t esize = dtype_size(target);
  int64_t row0 = 0;
  for (const TensorView* p : parts) {
    parallel_for(p->shape[0], 64, [&](int64_t a, int64_t b) {
      std::vector<float> buf(static_cast<size_t>(cols));
      for (int64_t i = a; i < b; ++i) {
        read_f32_row(*p, i, cols, buf.data());
        const int64_t r = row0 + i;
        if (!packed) {
          write_values(buf.data(), cols, target, base + r * cols * esize);
          continue;
        }
        uint8_t* group = const_cast<uint8_t*>(m.group(r));
        if (m.quantized()) {
          pack_quantized_row(buf.data(), cols, r, target, group);
          continue;
        }
        for (int64_t col = 0; col < cols; col += kPackCols)
          write_values(buf.data() + col, kPackCols, target, group + m.float_offset(r, col));
      }
    });
    row0 += p->shape[0];
  }
  out->m_ = m;
  return Status::Ok();
}

Status resolve_dtype(const std::string& name, const Checkpoint& ckpt, DType* out) {
  if (parse_dtype_name(name, out)) return Status::Ok();
  if (name == "auto") {
    const TensorView* t = ckpt.find("model.embed_tokens.weight");
    if (!t) return CorruptFile("checkpoint is missing tensor 'model.embed_tokens.weight'");
    if (t->dtype == "F32") *out = DType::kF32;
    else if (t->dtype == "BF16") *out = DType::kBF16;
    else if (t->dtype == "F16") *out = DType::kF16;
    else return Unsupported("dtype='auto': checkpoint weights are " + t->dtype + ", supported: F32, F16, BF16");
  } else {
    return InvalidArgument("dtype '" + name + "' is not one of auto, float32, bfloat16, float16, int8, int4");
  }
  return Status::Ok();
}

TensorView gather_rows(const TensorView& t, const std::vector<int32_t>& ids, std::vector<uint8_t>* storage) {
  const int64_t row_bytes = t.nbytes / t.shape[0];
  storage->resize(static_cast<size_t>(row_bytes) * ids.size());
  for (size_t i = 0; i < ids.size(); ++i)
    std::memcpy(storage->data() + i * row_bytes, t.data + ids[i] * row_bytes, static_cast<size_t>(row_bytes));
  TensorView v = t;
  v.shape[0] = static_cast<int64_t>(ids.size());
  v.data = storage->data();
  v.nbytes = row_bytes * v.shape[0];
  return v;
}

Status validate_head_vocab(const std::vector<int32_t>& ids, int64_t vocab_size) {
  if (ids.empty()) return InvalidArgument("the draft vocabulary is empty");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size)
      return InvalidArgument("draft vocabulary token id " + std::to_string(ids[i]) + " is out of range [0, " +
                             std::to_string(vocab_size) + ")");
    if (i > 0 && ids[i] <= ids[i - 1])
      return InvalidArgument("the draft vocabulary must list distinct token ids in increasing order (" +
                             std::to_string(ids[i - 1]) + " before " + std::to_string(ids[i]) + ")");
  }
  return Status::Ok();
}

Status load_llama_weights(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                          const std::function<void(int, int)>& progress, LlamaWeights* out) {
  const DType target = dtypes.layers, table_dtype = dtypes.tables;
  const bool pack = !dtypes.row_major;
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, D = cfg.head_dim;
  const int64_t q_rows = static_cast<int64_t>(cfg.num_heads) * D;
  const int64_t kv_rows = static_cast<int64_t>(cfg.num_kv_heads) * D;
  const int total = cfg.num_layers + 2;

  if (!dtypes.head_vocab.empty()) SD_RETURN_IF_ERROR(validate_head_vocab(dtypes.head_vocab, cfg.vocab_size));
  const TensorView* embed = nullptr;
  SD_RETURN_IF_ERROR(require(ckpt, "model.embed_tokens.weight", {cfg.vocab_size, H}, &embed));
  SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({embed}, H, table_dtype, &out->embed, pack));
  const TensorView* head = embed;
  if (!cfg.tie_word_embeddings) SD_RETURN_IF_ERROR(require(ckpt, "lm_head.weight", {cfg.vocab_size, H}, &head));
  out->head_vocab = dtypes.head_vocab;
  out->tied = cfg.tie_word_embeddings && out->head_vocab.empty();
  if (!out->head_vocab.empty()) {
    std::vector<uint8_t> rows;
    const TensorView kept = gather_rows(*head, out->head_vocab, &rows);
    SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({&kept}, H, table_dtype, &out->lm_head, pack));
  } else if (!out->tied) {
    SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({head}, H, table_dtype, &out->lm_head, pack));
  }
  SD_RETURN_IF_ERROR(load_vector(ckpt, "model.norm.weight", H, &out->final_norm));
  if (progress) progress(1, total);

  out->layers.resize(static_cast<size_t>(cfg.num_layers));
  for (int l = 0; l < cfg.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights& L = out->layers[static_cast<size_t>(l)];
    const TensorView *q, *k, *v, *o, *gate, *up, *down;
    SD_RETURN_IF_ERROR(require(ckpt, p + "self_attn.q_proj.weight", {q_rows, H}, &q));
    SD_RETURN_IF_ERROR(require(ckpt, p + "self_attn.k_proj.weight", {kv_rows, H}, &k));
    SD_RETURN_IF_ERROR(require(ckpt, p + "self_attn.v_proj.weight", {kv_rows, H}, &v));
    SD_RETURN_IF_ERROR(require(ckpt, p + "self_attn.o_proj.weight", {H, q_rows}, &o));
    SD_RETURN_IF_ERROR(require(ckpt, p + "mlp.gate_proj.weight", {I, H}, &gate));
    SD_RETURN_IF_ERROR(require(ckpt, p + "mlp.up_proj.weight", {I, H}, &up));
    SD_RETURN_IF_ERROR(require(ckpt, p + "mlp.down_proj.weight", {H, I}, &down));
    SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({q, k, v}, H, target, &L.qkv, pack));
    SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({o}, q_rows, target, &L.o, pack));
    SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({gate, up}, H, target, &L.gate_up, pack));
    SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({down}, I, target, &L.down, pack));
    if (cfg.attention_bias) {
      std::vector<float> qb, kb, vb;
      SD_RETURN_IF_ERROR(load_vector(ckpt, p + "self_attn.q_proj.bias", q_rows, &qb));
      SD_RETURN_IF_ERROR(load_vector(ckpt, p + "self_attn.k_proj.bias", kv_rows, &kb));
      SD_RETURN_IF_ERROR(load_vector(ckpt, p + "self_attn.v_proj.bias", kv_rows, &vb));
      L.qkv_bias = qb;
      L.qkv_bias.insert(L.qkv_bias.end(), kb.begin(), kb.end());
      L.qkv_bias.insert(L.qkv_bias.end(), vb.begin(), vb.end());
    }
    SD_RETURN_IF_ERROR(load_vector(ckpt, p + "input_layernorm.weight", H, &L.input_norm));
    SD_RETURN_IF_ERROR(load_vector(ckpt, p + "post_attention_layernorm.weight", H, &L.post_attention_norm));
    if (progress) progress(l + 2, total);
  }
  if (progress) progress(total, total);
  return Status::Ok();
}

}  // namespace sd
