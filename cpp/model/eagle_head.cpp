#include "model/eagle_head.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "io/json.h"
#include "io/safetensors.h"
#include "model/scratch.h"
#include "ops/ops.h"

namespace sd {

namespace {

constexpr const char* kArchitecture = "LlamaForCausalLMEagle3";
constexpr const char* kEmbed = "embed_tokens.weight";

std::string list_str(const std::vector<std::string>& names) {
  std::string r = "[";
  for (size_t i = 0; i < names.size(); ++i) r += (i ? ", '" : "'") + names[i] + "'";
  return r + "]";
}

// A JSON value as the error messages show it.
std::string describe(const json::Value* v) {
  if (!v) return "nothing";
  if (v->is_integer()) return std::to_string(v->integer);
  if (v->is_number()) {
    std::ostringstream os;
    os << v->number;
    return os.str();
  }
  if (v->is_string()) return "'" + v->string + "'";
  if (v->is_bool()) return v->boolean ? "true" : "false";
  return v->type_str();
}

bool absent(const json::Value* v) { return v == nullptr || v->is_null(); }

Status positive_int(const json::Value* v, const std::string& src, const std::string& key, int32_t* out) {
  if (!v || !v->is_integer() || v->integer <= 0 || v->integer > INT32_MAX)
    return InvalidArgument(src + ": " + key + " must be a positive integer, got " + describe(v));
  *out = static_cast<int32_t>(v->integer);
  return Status::Ok();
}

Status positive_number(const json::Value* v, const std::string& src, const std::string& key, double* out) {
  if (!v || !v->is_number() || !(v->number > 0))
    return InvalidArgument(src + ": " + key + " must be a positive number, got " + describe(v));
  *out = v->number;
  return Status::Ok();
}

// config.json -> Eagle3Config, with the checks of eagle/config.py (Eagle3Config.from_dict).
// aux_layer_ids stays empty when the file names none (the target's defaults apply).
Status parse_config(const json::Value& d, const std::string& src, Eagle3Config* cfg) {
  if (!d.is_object()) return InvalidArgument(src + ": expected a JSON object");
  const json::Value* archs = d.find("architectures");
  bool arch_ok = false;
  if (archs && archs->is_array())
    for (const json::Value& a : archs->array) arch_ok = arch_ok || (a.is_string() && a.string == kArchitecture);
  if (!arch_ok)
    return InvalidArgument(src + ": architectures must contain '" + kArchitecture + "', got " +
                           (archs && archs->is_array() && !archs->array.empty() ? describe(&archs->array[0])
                                                                                : describe(archs)));
  std::vector<std::string> missing;
  for (const char* k : {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                        "vocab_size", "draft_vocab_size", "rms_norm_eps"})
    if (!d.find(k)) missing.push_back(k);
  if (!missing.empty()) return InvalidArgument(src + ": missing required keys " + list_str(missing));

  const json::Value* layers = d.find("num_hidden_layers");
  if (layers && !(layers->is_integer() && layers->integer == 1))
    return InvalidArgument(src + ": only one-layer EAGLE-3 heads are supported, got num_hidden_layers=" +
                           describe(layers));
  const json::Value* tied = d.find("tie_word_embeddings");
  if (tied && tied->is_bool() && tied->boolean)
    return InvalidArgument(src + ": tie_word_embeddings=true (lm_head = the embedding table) is not supported");
  const json::Value* bias = d.find("attention_bias");
  if (bias && bias->is_bool() && bias->boolean)
    return InvalidArgument(src + ": attention_bias=true is not supported");
  const json::Value* scaling = d.find("rope_scaling");
  if (!absent(scaling) && !(scaling->is_object() && scaling->object.empty()))
    return InvalidArgument(src + ": rope_scaling is not supported (only plain RoPE), got " + describe(scaling));
  const json::Value* act = d.find("hidden_act");
  if (act && !(act->is_string() && act->string == "silu"))
    return InvalidArgument(src + ": hidden_act " + describe(act) + " is not supported (only 'silu')");

  Eagle3Config c;
  SD_RETURN_IF_ERROR(positive_int(d.find("hidden_size"), src, "hidden_size", &c.hidden_size));
  SD_RETURN_IF_ERROR(positive_int(d.find("intermediate_size"), src, "intermediate_size", &c.intermediate_size));
  SD_RETURN_IF_ERROR(positive_int(d.find("num_attention_heads"), src, "num_attention_heads", &c.num_heads));
  SD_RETURN_IF_ERROR(positive_int(d.find("num_key_value_heads"), src, "num_key_value_heads", &c.num_kv_heads));
  SD_RETURN_IF_ERROR(positive_int(d.find("vocab_size"), src, "vocab_size", &c.vocab_size));
  SD_RETURN_IF_ERROR(positive_int(d.find("draft_vocab_size"), src, "draft_vocab_size", &c.draft_vocab_size));
  const json::Value* hd = d.find("head_dim");
  if (absent(hd)) {
    if (c.hidden_size % c.num_heads != 0)
      return InvalidArgument(src + ": hidden_size must be a multiple of num_attention_heads when head_dim is not given");
    c.head_dim = c.hidden_size / c.num_heads;
  } else {
    SD_RETURN_IF_ERROR(positive_int(hd, src, "head_dim", &c.head_dim));
  }
  const json::Value* th = d.find("target_hidden_size");
  if (absent(th)) c.target_hidden_size = c.hidden_size;
  else SD_RETURN_IF_ERROR(positive_int(th, src, "target_hidden_size", &c.target_hidden_size));
  if (c.head_dim % 2 != 0)
    return InvalidArgument(src + ": head_dim must be even (rotary embedding), got " + std::to_string(c.head_dim));
  if (c.num_heads % c.num_kv_heads != 0)
    return InvalidArgument(src + ": num_attention_heads (" + std::to_string(c.num_heads) +
                           ") must be a multiple of num_key_value_heads (" + std::to_string(c.num_kv_heads) + ")");
  if (c.draft_vocab_size > c.vocab_size)
    return InvalidArgument(src + ": draft_vocab_size (" + std::to_string(c.draft_vocab_size) +
                           ") exceeds vocab_size (" + std::to_string(c.vocab_size) + ")");
  double eps = 0;
  SD_RETURN_IF_ERROR(positive_number(d.find("rms_norm_eps"), src, "rms_norm_eps", &eps));
  c.rms_norm_eps = static_cast<float>(eps);
  const json::Value* theta = d.find("rope_theta");
  const json::Value* params = d.find("rope_parameters");
  if (absent(theta) && params && params->is_object()) theta = params->find("rope_theta");
  if (!absent(theta)) SD_RETURN_IF_ERROR(positive_number(theta, src, "rope_theta", &c.rope_theta));

  const json::Value* eagle = d.find("eagle_config");
  if (!absent(eagle) && !eagle->is_object()) return InvalidArgument(src + ": eagle_config must be an object");
  const json::Value* use_aux = absent(eagle) ? nullptr : eagle->find("use_aux_hidden_state");
  if (use_aux && use_aux->is_bool() && !use_aux->boolean)
    return InvalidArgument(src + ": eagle_config.use_aux_hidden_state=false is not supported");
  const json::Value* aux = absent(eagle) ? nullptr : eagle->find("eagle_aux_hidden_state_layer_ids");
  if (absent(aux)) aux = d.find("eagle_aux_hidden_state_layer_ids");
  if (!absent(aux)) {
    bool ok = aux->is_array() && aux->array.size() == 3;
    for (size_t i = 0; ok && i < aux->array.size(); ++i) {
      const json::Value& v = aux->array[i];
      ok = v.is_integer() && v.integer >= 0 && v.integer <= INT32_MAX;
      if (ok) c.aux_layer_ids.push_back(static_cast<int32_t>(v.integer));
    }
    if (!ok)
      return InvalidArgument(src + ": eagle_aux_hidden_state_layer_ids must be three non-negative layer indices");
  }
  *cfg = c;
  return Status::Ok();
}

// check_compatible() of eagle/config.py: the head fits this target.
Status check_target(Eagle3Config* c, const ModelConfig& target, bool has_embed, const std::string& dir) {
  const Status st = target.validate();
  if (!st.ok()) return InvalidArgument("target " + st.message());
  if (c->target_hidden_size != target.hidden_size)
    return InvalidArgument(dir + ": hidden size mismatch: the head's fc expects target hidden states of size " +
                           std::to_string(c->target_hidden_size) + " (3 x " + std::to_string(c->target_hidden_size) +
                           " in), the target has " + std::to_string(target.hidden_size));
  if (c->vocab_size != target.vocab_size)
    return InvalidArgument(dir + ": vocab size mismatch: the head was built for a " + std::to_string(c->vocab_size) +
                           "-token vocabulary, the target has " + std::to_string(target.vocab_size));
  if (!has_embed && c->hidden_size != target.hidden_size)
    return InvalidArgument(dir + ": hidden size mismatch: the head (hidden_size " + std::to_string(c->hidden_size) +
                           ") embeds tokens with the target's table (hidden size " +
                           std::to_string(target.hidden_size) + ") and carries no " + kEmbed + " of its own");
  const int32_t N = target.num_layers;
  if (c->aux_layer_ids.empty())
    for (int32_t i : {1, N / 2 - 1, N - 4}) c->aux_layer_ids.push_back(std::min(std::max(i, 0), N - 1));
  for (int32_t id : c->aux_layer_ids)
    if (id >= N) {
      std::string ids;
      for (int32_t x : c->aux_layer_ids) ids += (ids.empty() ? "" : ", ") + std::to_string(x);
      return InvalidArgument(dir + ": aux layer ids [" + ids + "] out of range for a " + std::to_string(N) +
                             "-layer target (valid: 0.." + std::to_string(N - 1) + ")");
    }
  return Status::Ok();
}

// A float tensor as f32 (a norm weight).
void to_f32(const TensorView& t, std::vector<float>* out) {
  out->resize(static_cast<size_t>(t.numel()));
  read_f32_row(t, 0, t.numel(), out->data());
}

Status read_file(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return InvalidArgument(path + ": cannot be opened");
  std::ostringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return Status::Ok();
}

}  // namespace

Status Eagle3Head::load(const std::string& dir, const ModelConfig& target, DType dtype,
                       std::unique_ptr<Eagle3Head>* out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return InvalidArgument(dir + ": not a directory (an EAGLE-3 head is a directory with config.json and "
                           "model.safetensors)");
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  const std::string weights_path = (fs::path(dir) / "model.safetensors").string();
  if (!fs::is_regular_file(cfg_path, ec)) return InvalidArgument(dir + ": missing config.json");
  std::string text;
  SD_RETURN_IF_ERROR(read_file(cfg_path, &text));
  json::Value root;
  const Status parsed = json::parse(text.data(), text.size(), &root);
  if (!parsed.ok()) return InvalidArgument(cfg_path + ": not valid JSON (" + parsed.message() + ")");
  std::unique_ptr<Eagle3Head> m(new Eagle3Head());
  SD_RETURN_IF_ERROR(parse_config(root, cfg_path, &m->cfg_));
  Eagle3Config& c = m->cfg_;

  if (!fs::is_regular_file(weights_path, ec)) {
    bool other = false;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      other = other || e.path().extension() == ".bin" || name.find(".index.json") != std::string::npos;
    }
    return InvalidArgument(dir + ": missing model.safetensors" +
                           (other ? " (sharded and .bin heads are not supported)" : ""));
  }
  std::unique_ptr<Checkpoint> ckpt;
  const Status opened = Checkpoint::open({weights_path}, &ckpt);
  if (!opened.ok()) return InvalidArgument(weights_path + ": unreadable safetensors file (" + opened.message() + ")");
  m->has_embed_ = ckpt->find(kEmbed) != nullptr;
  SD_RETURN_IF_ERROR(check_target(&c, target, m->has_embed_, dir));

  // The tensors and their shapes (eagle/checkpoint.py expected_shapes).
  const int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  const int64_t q_rows = int64_t{c.num_heads} * D, kv_rows = int64_t{c.num_kv_heads} * D;
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"fc.weight", {H, 3 * int64_t{c.target_hidden_size}}},
      {"midlayer.input_layernorm.weight", {H}},
      {"midlayer.hidden_norm.weight", {H}},
      {"midlayer.post_attention_layernorm.weight", {H}},
      {"midlayer.self_attn.q_proj.weight", {q_rows, 2 * H}},
      {"midlayer.self_attn.k_proj.weight", {kv_rows, 2 * H}},
      {"midlayer.self_attn.v_proj.weight", {kv_rows, 2 * H}},
      {"midlayer.self_attn.o_proj.weight", {H, q_rows}},
      {"midlayer.mlp.gate_proj.weight", {I, H}},
      {"midlayer.mlp.up_proj.weight", {I, H}},
      {"midlayer.mlp.down_proj.weight", {H, I}},
      {"norm.weight", {H}},
      {"lm_head.weight", {c.draft_vocab_size, H}},
      {"d2t", {c.draft_vocab_size}},
      {"t2d", {c.vocab_size}},
      {kEmbed, {c.vocab_size, H}},  // optional
  };
  std::vector<std::string> missing, unexpected;
  std::set<std::string> known;
  for (const auto& e : expected) {
    known.insert(e.first);
    if (e.first != kEmbed && !ckpt->find(e.first)) missing.push_back(e.first);
  }
  if (!missing.empty()) return InvalidArgument(weights_path + ": missing tensors " + list_str(missing));
  for (const std::string& n : ckpt->names())
    if (!known.count(n)) unexpected.push_back(n);
  if (!unexpected.empty()) return InvalidArgument(weights_path + ": unexpected tensors " + list_str(unexpected));
  for (const auto& e : expected) {
    const TensorView* t = ckpt->find(e.first);
    if (!t) continue;
    if (t->shape != e.second)
      return InvalidArgument(weights_path + ": tensor " + e.first + " has shape " + shape_str(t->shape) +
                             ", expected " + shape_str(e.second) + " from config.json");
    bool dtype_ok = t->dtype == "F32" || t->dtype == "BF16" || t->dtype == "F16";
    std::string want = "F32, BF16 or F16";
    if (e.first == "t2d") {
      dtype_ok = t->dtype == "BOOL";
      want = "BOOL";
    } else if (e.first == "d2t") {
      dtype_ok = t->dtype == "I64" || t->dtype == "I32";
      want = "I64";
    }
    if (!dtype_ok)
      return InvalidArgument(weights_path + ": tensor " + e.first + " has dtype " + t->dtype + ", expected " + want);
  }

  // The vocabulary map: draft id d is target id d + d2t[d]; t2d marks exactly those ids.
  const TensorView* d2t = ckpt->find("d2t");
  const TensorView* t2d = ckpt->find("t2d");
  m->d2t_target_.resize(static_cast<size_t>(c.draft_vocab_size));
  std::vector<uint8_t> seen(static_cast<size_t>(c.vocab_size), 0);
  int64_t marked = 0;
  for (int64_t i = 0; i < c.vocab_size; ++i) marked += t2d->data[i] != 0;
  bool agree = marked == c.draft_vocab_size;
  for (int64_t dd = 0; dd < c.draft_vocab_size; ++dd) {
    int64_t off = 0;
    if (d2t->dtype == "I64") {
      std::memcpy(&off, d2t->data + dd * 8, 8);
    } else {
      int32_t o32;
      std::memcpy(&o32, d2t->data + dd * 4, 4);
      off = o32;
    }
    const int64_t tid = off >= -c.vocab_size && off <= c.vocab_size ? dd + off : -1;
    if (tid < 0 || tid >= c.vocab_size)
      return InvalidArgument(weights_path + ": d2t maps draft ids outside the target vocabulary [0, " +
                             std::to_string(c.vocab_size) + ")");
    agree = agree && t2d->data[tid] != 0 && !seen[static_cast<size_t>(tid)];
    seen[static_cast<size_t>(tid)] = 1;
    m->d2t_target_[static_cast<size_t>(dd)] = static_cast<int32_t>(tid);
  }
  if (!agree)
    return InvalidArgument(weights_path + ": d2t and t2d disagree (t2d must mark exactly the " +
                           std::to_string(c.draft_vocab_size) + " distinct target ids that d2t maps to)");

  // Weights: the matrices in `dtype`, q/k/v and gate/up fused row-wise; the norms in f32.
  auto t = [&](const std::string& name) { return ckpt->find(name); };
  m->dtype_ = dtype;
  SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({t("fc.weight")}, 3 * int64_t{c.target_hidden_size}, dtype, &m->fc_));
  SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({t("midlayer.self_attn.q_proj.weight"), t("midlayer.self_attn.k_proj.weight"),
                                                t("midlayer.self_attn.v_proj.weight")},
                                               2 * H, dtype, &m->qkv_w_));
  SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({t("midlayer.self_attn.o_proj.weight")}, q_rows, dtype, &m->o_));
  SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({t("midlayer.mlp.gate_proj.weight"), t("midlayer.mlp.up_proj.weight")},
                                               H, dtype, &m->gate_up_w_));
  SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({t("midlayer.mlp.down_proj.weight")}, I, dtype, &m->down_));
  SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({t("lm_head.weight")}, H, dtype, &m->lm_head_));
  if (m->has_embed_) SD_RETURN_IF_ERROR(OwnedMatrix::from_tensors({t(kEmbed)}, H, dtype, &m->embed_));
  to_f32(*t("midlayer.input_layernorm.weight"), &m->input_norm_);
  to_f32(*t("midlayer.hidden_norm.weight"), &m->hidden_norm_);
  to_f32(*t("midlayer.post_attention_layernorm.weight"), &m->post_attention_norm_);
  to_f32(*t("norm.weight"), &m->final_norm_);

  // RoPE as the torch head computes it: 1 / theta ** (arange(0, D, 2) / D) in float64.
  m->inv_freq_.resize(static_cast<size_t>(D / 2));
  for (int64_t i = 0; i < D / 2; ++i)
    m->inv_freq_[static_cast<size_t>(i)] =
        static_cast<float>(1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(D)));
  *out = std::move(m);
  return Status::Ok();
}

KVCacheConfig Eagle3Head::kv_config(int32_t page_size, int32_t num_blocks) const {
  KVCacheConfig c;
  c.num_layers = 1;
  c.num_kv_heads = cfg_.num_kv_heads;
  c.head_dim = cfg_.head_dim;
  c.page_size = page_size;
  c.num_blocks = num_blocks;
  return c;
}

Status Eagle3Head::forward(const EagleBatch& batch, const Matrix* target_embed, KVCache& kv, float* logits,
                           float* hidden_out) {
  const int64_t T = static_cast<int64_t>(batch.token_ids.size());
  const int32_t B = static_cast<int32_t>(batch.seqs.size());
  const int64_t H = cfg_.hidden_size, D = cfg_.head_dim, I = cfg_.intermediate_size;
  const int64_t F = 3 * int64_t{cfg_.target_hidden_size};
  const int64_t nq = cfg_.num_heads, nkv = cfg_.num_kv_heads;
  const int64_t qkv_w = (nq + 2 * nkv) * D;

  if (static_cast<int64_t>(batch.positions.size()) != T ||
      static_cast<int32_t>(batch.qo_indptr.size()) != B + 1 || batch.qo_indptr[B] != T)
    return InvalidArgument("eagle forward: positions/qo_indptr do not match the token count");
  const Matrix* table = has_embed_ ? &embed_.view() : target_embed;
  if (!table) return InvalidArgument("eagle forward: no embedding table (pass the target's)");
  if (table->rows != cfg_.vocab_size || table->cols != H)
    return InvalidArgument("eagle forward: the embedding table is [" + std::to_string(table->rows) + ", " +
                           std::to_string(table->cols) + "], expected [" + std::to_string(cfg_.vocab_size) +
                           ", " + std::to_string(H) + "]");
  const KVCacheConfig& kc = kv.config();
  if (kc.num_layers < 1 || kc.num_kv_heads != nkv || kc.head_dim != D)
    return InvalidArgument("eagle forward: the KV cache does not have the head's shape (use kv_config)");
  for (int32_t id : batch.token_ids)
    if (id < 0 || id >= cfg_.vocab_size)
      return InvalidArgument("token id " + std::to_string(id) + " is out of range [0, " +
                             std::to_string(cfg_.vocab_size) + ")");
  if (!batch.from_hidden.empty() && static_cast<int64_t>(batch.from_hidden.size()) != T)
    return InvalidArgument("eagle forward: from_hidden must be empty or have one flag per entry");
  // rows_: the entries whose h is fc(features).
  rows_.clear();
  for (int64_t t = 0; t < T; ++t) {
    const bool own = batch.from_hidden.empty() ? batch.features == nullptr : batch.from_hidden[static_cast<size_t>(t)] != 0;
    if (!own) rows_.push_back(static_cast<int32_t>(t));
  }
  const int64_t nf = static_cast<int64_t>(rows_.size());
  if (nf > 0 && !batch.features) return InvalidArgument("eagle forward: entries take target features but none were given");
  if (nf < T && !batch.hidden) return InvalidArgument("eagle forward: entries take hidden states but none were given");
  const int64_t R = static_cast<int64_t>(batch.logit_rows.size());
  for (int32_t r : batch.logit_rows)
    if (r < 0 || r >= T) return InvalidArgument("eagle forward: logit row out of range");
  if (R > 0 && !logits) return InvalidArgument("eagle forward: logit rows requested but no logits buffer");
  static const std::vector<int64_t> kNoMask;
  SD_RETURN_IF_ERROR(pages_.build(batch.seqs, batch.qo_indptr, batch.custom_mask.empty() ? kNoMask : batch.mask_indptr,
                                  KVWindow(), "eagle forward"));
  if (T == 0) return Status::Ok();

  grow(e_, T * H);
  grow(h_, T * H);
  grow(x2_, T * 2 * H);
  grow(qkv_, T * qkv_w);
  grow(q_, T * nq * D);
  grow(attn_, T * nq * D);
  grow(tmp_, T * H);
  grow(gate_up_, T * 2 * I);
  grow(act_, T * I);
  const float eps = cfg_.rms_norm_eps;

  // h_ [T, H]: the input state of each entry, which is also the residual stream.
  if (nf == T) {
    ops::matmul(fc_.view(), batch.features, T, F, h_.data(), H, nullptr);
  } else {
    if (nf > 0) {  // gather the feature rows, project them, scatter the results
      grow(feat_, nf * F);
      for (int64_t i = 0; i < nf; ++i)
        std::copy(batch.features + rows_[static_cast<size_t>(i)] * F,
                  batch.features + (rows_[static_cast<size_t>(i)] + 1) * F, feat_.data() + i * F);
      ops::matmul(fc_.view(), feat_.data(), nf, F, tmp_.data(), H, nullptr);
    }
    for (int64_t t = 0, i = 0; t < T; ++t) {
      const float* src = i < nf && rows_[static_cast<size_t>(i)] == t ? tmp_.data() + (i++) * H : batch.hidden + t * H;
      std::copy(src, src + H, h_.data() + t * H);
    }
  }

  // x2_ [T, 2H] = [input_layernorm(embed(x)) ; hidden_norm(h)].
  ops::embedding(*table, batch.token_ids.data(), T, e_.data());
  ops::rmsnorm(e_.data(), input_norm_.data(), eps, T, H, e_.data());
  ops::rmsnorm(h_.data(), hidden_norm_.data(), eps, T, H, tmp_.data());
  for (int64_t t = 0; t < T; ++t) {
    std::copy(e_.data() + t * H, e_.data() + (t + 1) * H, x2_.data() + t * 2 * H);
    std::copy(tmp_.data() + t * H, tmp_.data() + (t + 1) * H, x2_.data() + t * 2 * H + H);
  }

  // Attention: q/k/v from x2_, RoPE, K and V into the head's one KV layer.
  ops::matmul(qkv_w_.view(), x2_.data(), T, 2 * H, qkv_.data(), qkv_w, nullptr);
  ops::rope(qkv_.data(), batch.positions.data(), T, nq, D, qkv_w, inv_freq_.data());
  ops::rope(qkv_.data() + nq * D, batch.positions.data(), T, nkv, D, qkv_w, inv_freq_.data());
  pages_.scatter_qkv(qkv_.data(), nq, nkv, D, 0, kv, q_.data());
  SD_RETURN_IF_ERROR(pages_.attend(q_.data(), kv, 0, batch.custom_mask, batch.mask_indptr, static_cast<int32_t>(nq), attn_.data()));
  ops::matmul(o_.view(), attn_.data(), T, nq * D, tmp_.data(), H, nullptr);
  add_inplace(h_.data(), tmp_.data(), T * H);

  // MLP (e_ is free again: the post-attention-normed input).
  ops::rmsnorm(h_.data(), post_attention_norm_.data(), eps, T, H, e_.data());
  ops::matmul(gate_up_w_.view(), e_.data(), T, H, gate_up_.data(), 2 * I, nullptr);
  ops::silu_mul(gate_up_.data(), T, I, act_.data());
  ops::matmul(down_.view(), act_.data(), T, I, tmp_.data(), H, nullptr);
  add_inplace(h_.data(), tmp_.data(), T * H);

  if (hidden_out) std::copy(h_.data(), h_.data() + T * H, hidden_out);
  if (R == 0) return Status::Ok();
  grow(last_, R * H);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t row = batch.logit_rows[static_cast<size_t>(r)];
    std::copy(h_.data() + row * H, h_.data() + (row + 1) * H, last_.data() + r * H);
  }
  ops::rmsnorm(last_.data(), final_norm_.data(), eps, R, H, last_.data());
  ops::matmul(lm_head_.view(), last_.data(), R, H, logits, cfg_.draft_vocab_size, nullptr);
  return Status::Ok();
}

}  // namespace sd
