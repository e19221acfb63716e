// The Llama-family forward on the GPU (ForwardModel, model/forward_model.h): weights and K/V
// live on the device; the host KVCache it is given only hands out pages (host_storage false),
// so the page tables (BatchPages), the attention plan and the packed tree mask are built on the
// host each forward and uploaded with the token ids, all in one pinned transfer
// (cuda/staged_tables.h). Same math as LlamaModel::forward, layer by
// layer: RMSNorm -> fused qkv GEMM (+ bias) -> RoPE on q and k -> KV append -> paged attention
// (tree masks bit-packed) -> o GEMM + residual -> RMSNorm -> gate_up GEMM -> SiLU * up -> down
// GEMM + residual; then the logit rows: gather, final RMSNorm, LM head, one download (or only
// each row's argmax, or with batch.sample the verification outcomes: cuda/device_sampling.h,
// so a speculative step at T > 0 brings back no logits either). A batch may run a subset of the layers or attend a sparse KV window (the
// self-speculation drafts) and capture layers' outputs into host memory, as on the CPU (an
// EAGLE head drafts on the CPU from those features, with the host copy of the embedding).
// GEMMs: the GEMV kernel for up to 16 rows (decode, small verify batches), cuBLAS tensor cores
// above (activations rounded to the weights' dtype first); GEMV everywhere without libcublas.
// Activations are f32 throughout; K/V are stored in bf16.
//
// CUDA graphs: a forward of up to 16 rows over every layer without feature capture (decode and
// verification steps) replays a graph captured for its shape (rows, logit rows, requests, tree
// mask or not) after its first, eager run; the page tables and the padded attention plan are
// copied in before each replay. SPECDEC_CUDA_GRAPHS=0 turns them off.
//
// NOT YET RUN ON A GPU: written and compiled without one (see docs/cuda.md for the runs owed).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/attention_device.h"
#include "cuda/cublas_loader.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_ops.h"
#include "cuda/device_model.h"
#include "cuda/device_sampling.h"
#include "cuda/mask_bits.h"
#include "cuda/staged_tables.h"
#include "model/batch_pages.h"
#include "model/llama.h"

namespace sd::cuda {

namespace {

// Batch invariance, which T = 0 token identity between speculative and autoregressive decoding
// rests on: a row's arithmetic must not depend on what else is in the forward.
//  - GEMMs of up to kGemvMaxRows rows run the GEMV, whose per-row sums do not depend on the row
//    count (decode, and verification at small batch: 16 rows is a 15-node tree at batch 1);
//    cuBLAS above (prefill, large batches) rounds its inputs to bf16 and picks its own
//    algorithm per shape, so rows computed there are not bit-identical to GEMV rows.
//  - Attention splits every request's keys at the same fixed chunk boundaries (the plan would
//    otherwise size chunks by the batch's total work).
constexpr int64_t kGemvMaxRows = 16;
constexpr int32_t kAttnChunk = 256;
constexpr DType kKVDType = DType::kBF16;

// A row-major [rows, cols] weight: bf16 / f16 (2 bytes each), or int8 / int4 with f32 scales
// (and int4 mins) per 32 columns of a row (the GEMV's kQ8 / kQ4 layouts, cuda/attention_ops.h).
struct DeviceMatrix {
  DeviceBuffer<uint8_t> data;
  DeviceBuffer<float> scales;  // kQ8: [rows, cols / 32]; kQ4: [rows, cols / 32, 2] (scale, min)
  DType dtype = DType::kBF16;
  int64_t rows = 0, cols = 0;
};

// m: row-major from the loader, bf16 / f16 (uploaded as is) or f32 (quantized to int8 / int4
// here when `dtype` is kQ8 / kQ4).
Status upload_matrix(const Matrix& m, DType dtype, DeviceMatrix* out) {
  out->dtype = dtype;
  out->rows = m.rows;
  out->cols = m.cols;
  const size_t n = static_cast<size_t>(m.rows * m.cols);
  if (!m.packed && is_quantized(dtype) && m.dtype == DType::kF32) {
    if (m.cols % 32 != 0)
      return Unsupported(std::string("device 'cuda': ") + dtype_name(dtype) +
                         " weights need in_features divisible by 32, a matrix has " + std::to_string(m.cols));
    std::vector<uint8_t> q;
    std::vector<float> scales;
    quantize_device_rows(dtype, static_cast<const float*>(m.data), m.rows, m.cols, &q, &scales);
    SD_RETURN_IF_ERROR(out->scales.upload(scales));
    return out->data.upload(q);
  }
  if (m.packed || m.dtype != dtype || (dtype != DType::kBF16 && dtype != DType::kF16))
    return Status(StatusCode::kInternal, "device model: unexpected weight layout from the loader");
  return out->data.upload(static_cast<const uint8_t*>(m.data), n * 2);
}

struct DeviceLayer {
  DeviceMatrix qkv, o, gate_up, down;
  DeviceBuffer<float> qkv_bias, input_norm, post_attention_norm;
};

class DeviceLlama final : public ForwardModel {
 public:
  static Status create(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                       const std::function<void(int, int)>& progress, std::unique_ptr<ForwardModel>* out);
  ~DeviceLlama() override {
    for (auto& g : graphs_)
      if (g.second.exec != nullptr) cudaGraphExecDestroy(g.second.exec);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  Status forward(const ForwardBatch& batch, KVCache& kv, float* logits) override;
  Status copy_tokens(KVCache& kv, const SeqPages& seq, const std::vector<int64_t>& from,
                     const std::vector<int64_t>& to) override;
  const ModelConfig& config() const override { return cfg_; }
  DType dtype() const override { return dtype_; }
  std::string device() const override { return "cuda"; }
  // A host copy (row-major, the tables' dtype) for an EAGLE head, which drafts on the CPU.
  const Matrix* host_embedding() const override { return &host_embed_.view(); }
  int64_t weight_bytes_per_token(const std::vector<int32_t>& layers) const override;
  using ForwardModel::weight_bytes_per_token;
  int64_t max_kv_blocks(int32_t page_size) const override;

 private:
  DeviceLlama() = default;
  // The device K/V for `kv` (allocated on its first forward; one cache per model).
  Status bind_cache(const KVCache& kv);
  Status reserve_activations(int64_t T, int64_t R);
  // Y[M, N] = X[M, K] W^T (+ bias).
  Status linear(const float* X, int64_t M, const DeviceMatrix& W, const float* bias, float* Y);
  Status decoder_layer(int32_t l, int64_t T, bool masked);
  // The forward's kernels from the embedding to the LM head's logits_ (what a graph captures);
  // the batch's tables are on the device already.
  Status enqueue_model(const ForwardBatch& batch, int64_t T, int64_t R, bool masked);
  // Replays g (plan_ padded to it and uploaded), capturing it first when it is new, outgrown by
  // the plan, or its buffers have moved.
  struct StepGraph;
  Status replay(StepGraph& g, bool outgrown, const ForwardBatch& batch, int64_t T, int64_t R, bool masked);
  // The device addresses a captured forward reads and writes (weights and K/V aside, which
  // do not move).
  std::vector<const void*> graph_buffers() const;
  void* k_layer(int32_t l) const { return k_cache_.get() + l * layout_.layer_elems(); }
  void* v_layer(int32_t l) const { return v_cache_.get() + l * layout_.layer_elems(); }

  ModelConfig cfg_;
  DType dtype_ = DType::kBF16;
  DeviceMatrix embed_, lm_head_;
  OwnedMatrix host_embed_;
  bool tied_ = false;
  DeviceBuffer<float> final_norm_, inv_freq_;
  std::vector<DeviceLayer> layers_;
  cudaStream_t stream_ = nullptr;
  int num_sms_ = 0;
  bool cublas_ = false;

  const KVCache* cache_ = nullptr;
  KVLayout layout_;
  DeviceBuffer<uint16_t> k_cache_, v_cache_;  // [layer][slot][kv_head][head_dim] bf16

  // Per forward: the host-built tables and their device copies.
  BatchPages pages_;
  std::vector<int64_t> slots_host_, mask_indptr_host_;
  std::vector<uint8_t> mask_host_;
  AttentionPlan plan_;
  AttentionWorkspace ws_;
  // Every per-forward table in one transfer (cuda/staged_tables.h), in this order.
  enum Table { kIds, kPositions, kSlots, kKvIndptr, kKvIndices, kLogitRows, kMask, kMaskIndptr, kPlanItems,
               kPlanPartBase, kPlanMerge, kNumTables };
  StagedTables tables_;
  template <class T>
  T* table(Table t) const { return tables_.device<T>(t); }
  // Copies the batch's tables and plan_ in (one transfer) and points ws_ at the plan's.
  Status upload_tables(const ForwardBatch& batch);
  DeviceBuffer<int32_t> argmax_;
  PinnedBuffer<int32_t> argmax_host_;  // batch.argmax lands here first
  DeviceBuffer<int64_t> copy_src_, copy_dst_;
  // Activations (f32) and the half-precision copy of a GEMM's input.
  DeviceBuffer<float> x_, xn_, qkv_, q_, k_new_, v_new_, attn_, gate_up_, act_, rows_, logits_;
  DeviceBuffer<uint16_t> half_in_;
  DeviceRowSampler sampler_;  // batch.sample, batch.draw

  // A captured forward for one (rows, logit rows, requests, masked) shape.
  struct StepGraph {
    cudaGraphExec_t exec = nullptr;
    int64_t items = 0, merges = 0, slots = 0;  // the attention plan's padded sizes
    std::vector<const void*> buffers;          // graph_buffers() at capture
    int64_t forwards = 0;
  };
  bool use_graphs_ = true;
  std::map<std::tuple<int64_t, int64_t, int32_t, bool>, StepGraph> graphs_;
};


Status DeviceLlama::create(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                           const std::function<void(int, int)>& progress, std::unique_ptr<ForwardModel>* out) {
  if (!dtypes.head_vocab.empty())
    return Unsupported("device 'cuda': a reduced draft vocabulary (draft_vocab) runs on the CPU for now");
  if (cfg.head_dim != 64 && cfg.head_dim != 128)
    return Unsupported("device 'cuda': the attention kernel takes head_dim 64 or 128, the model has " +
                       std::to_string(cfg.head_dim));
  // f32 checkpoints run in bf16. int8 / int4: the layers are quantized here from f32 rows (the
  // GEMV's layouts), the embedding and LM head stay bf16 (the gather reads 16-bit tables).
  const bool quantized = is_quantized(dtypes.layers);
  const DType tables = dtypes.layers == DType::kF16 ? DType::kF16 : DType::kBF16;
  const DType layers = quantized ? dtypes.layers : tables;
  LlamaWeights host;
  SD_RETURN_IF_ERROR(load_llama_weights(cfg, ckpt, WeightDTypes{quantized ? DType::kF32 : tables, tables, true, {}},
                                        progress, &host));

  std::unique_ptr<DeviceLlama> m(new DeviceLlama());
  m->cfg_ = cfg;
  m->dtype_ = layers;
  m->tied_ = host.tied;
  SD_RETURN_IF_ERROR(upload_matrix(host.embed.view(), tables, &m->embed_));
  if (!host.tied) SD_RETURN_IF_ERROR(upload_matrix(host.lm_head.view(), tables, &m->lm_head_));
  m->host_embed_ = std::move(host.embed);
  SD_RETURN_IF_ERROR(m->final_norm_.upload(host.final_norm));
  SD_RETURN_IF_ERROR(m->inv_freq_.upload(rope_inv_freq(cfg)));
  m->layers_.resize(host.layers.size());
  for (size_t l = 0; l < host.layers.size(); ++l) {
    LayerWeights& h = host.layers[l];
    DeviceLayer& g = m->layers_[l];
    SD_RETURN_IF_ERROR(upload_matrix(h.qkv.view(), layers, &g.qkv));
    SD_RETURN_IF_ERROR(upload_matrix(h.o.view(), layers, &g.o));
    SD_RETURN_IF_ERROR(upload_matrix(h.gate_up.view(), layers, &g.gate_up));
    SD_RETURN_IF_ERROR(upload_matrix(h.down.view(), layers, &g.down));
    if (!h.qkv_bias.empty()) SD_RETURN_IF_ERROR(g.qkv_bias.upload(h.qkv_bias));
    SD_RETURN_IF_ERROR(g.input_norm.upload(h.input_norm));
    SD_RETURN_IF_ERROR(g.post_attention_norm.upload(h.post_attention_norm));
    h = LayerWeights();  // the host copy is no longer needed
  }
  int dev = 0;
  SD_RETURN_IF_ERROR(check(cudaGetDevice(&dev), "cudaGetDevice"));
  SD_RETURN_IF_ERROR(check(cudaDeviceGetAttribute(&m->num_sms_, cudaDevAttrMultiProcessorCount, dev),
                           "cudaDeviceGetAttribute"));
  SD_RETURN_IF_ERROR(check(cudaStreamCreateWithFlags(&m->stream_, cudaStreamNonBlocking), "cudaStreamCreate"));
  std::string cublas_path;
  m->cublas_ = cublas_load(&cublas_path).ok();
  const char* graphs = std::getenv("SPECDEC_CUDA_GRAPHS");
  m->use_graphs_ = graphs == nullptr || std::strcmp(graphs, "0") != 0;
  *out = std::move(m);
  return Status::Ok();
}

int64_t DeviceLlama::weight_bytes_per_token(const std::vector<int32_t>& layers) const {
  auto bytes = [](const DeviceMatrix& w) { return static_cast<int64_t>(w.data.bytes() + w.scales.bytes()); };
  int64_t n = bytes(tied_ ? embed_ : lm_head_);
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (!layers.empty() && std::find(layers.begin(), layers.end(), static_cast<int32_t>(l)) == layers.end()) continue;
    const DeviceLayer& g = layers_[l];
    n += bytes(g.qkv) + bytes(g.o) + bytes(g.gate_up) + bytes(g.down);
  }
  return n;
}

int64_t DeviceLlama::max_kv_blocks(int32_t page_size) const {
  size_t free_bytes = 0, total = 0;
  if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) return 0;
  // K and V of one block in every layer; 20% of the free memory is left for activations, the
  // attention workspace, cuBLAS and a draft model (whose own cache has as many blocks).
  const int64_t block = 2 * static_cast<int64_t>(cfg_.num_layers) * page_size * cfg_.num_kv_heads * cfg_.head_dim *
                        static_cast<int64_t>(dtype_size(kKVDType));
  return static_cast<int64_t>(0.8 * static_cast<double>(free_bytes)) / block;
}

Status DeviceLlama::bind_cache(const KVCache& kv) {
  const KVCacheConfig& c = kv.config();
  if (cache_ == &kv) return Status::Ok();
  if (cache_ != nullptr) return InvalidArgument("device model: forward got a different KV cache than before (one cache per model)");
  if (c.num_layers != cfg_.num_layers || c.num_kv_heads != cfg_.num_kv_heads || c.head_dim != cfg_.head_dim)
    return InvalidArgument("device model: the KV cache does not have the model's shape (use kv_config)");
  layout_.num_pages = c.num_blocks;
  layout_.page_size = c.page_size;
  layout_.num_kv_heads = c.num_kv_heads;
  layout_.head_dim = c.head_dim;
  const size_t elems = static_cast<size_t>(layout_.layer_elems() * c.num_layers);
  const Status k = k_cache_.alloc_zeroed(elems), v = k.ok() ? v_cache_.alloc_zeroed(elems) : k;
  if (!v.ok()) {
    k_cache_.reset();
    return Status(StatusCode::kOutOfBlocks,
                  "device model: cannot allocate the GPU KV cache (" + std::to_string(2 * elems * 2 >> 20) +
                      " MiB for " + std::to_string(c.num_blocks) + " blocks): lower num_blocks or max_model_len (" +
                      v.message() + ")");
  }
  cache_ = &kv;
  return Status::Ok();
}

Status DeviceLlama::reserve_activations(int64_t T, int64_t R) {
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, D = cfg_.head_dim;
  const int64_t nq = cfg_.num_heads, nkv = cfg_.num_kv_heads;
  const auto n = [](int64_t a, int64_t b) { return static_cast<size_t>(a * b); };
  SD_RETURN_IF_ERROR(x_.reserve(n(T, H)));
  SD_RETURN_IF_ERROR(xn_.reserve(n(T, H)));
  SD_RETURN_IF_ERROR(qkv_.reserve(n(T, (nq + 2 * nkv) * D)));
  SD_RETURN_IF_ERROR(q_.reserve(n(T, nq * D)));
  SD_RETURN_IF_ERROR(k_new_.reserve(n(T, nkv * D)));
  SD_RETURN_IF_ERROR(v_new_.reserve(n(T, nkv * D)));
  SD_RETURN_IF_ERROR(attn_.reserve(n(T, nq * D)));
  SD_RETURN_IF_ERROR(gate_up_.reserve(n(T, 2 * I)));
  SD_RETURN_IF_ERROR(act_.reserve(n(T, I)));
  SD_RETURN_IF_ERROR(half_in_.reserve(n(T, std::max({H, I, nq * D}))));
  SD_RETURN_IF_ERROR(rows_.reserve(n(std::max<int64_t>(R, 1), H)));
  return logits_.reserve(n(std::max<int64_t>(R, 1), cfg_.vocab_size));
}

Status DeviceLlama::linear(const float* X, int64_t M, const DeviceMatrix& W, const float* bias, float* Y) {
  // int8 / int4 weights: the GEMV at every M (cuBLAS takes bf16 / f16 here).
  if (M <= kGemvMaxRows || !cublas_ || is_quantized(W.dtype))
    return gemv(W.dtype, X, M, W.data.get(), W.scales.get(), W.rows, W.cols, bias, Y, stream_);
  SD_RETURN_IF_ERROR(to_half(W.dtype, X, M * W.cols, half_in_.get(), stream_));
  return gemm_cublas(W.dtype, half_in_.get(), M, W.data.get(), W.rows, W.cols, bias, Y, stream_);
}

Status DeviceLlama::decoder_layer(int32_t l, int64_t T, bool masked) {
  const DeviceLayer& g = layers_[static_cast<size_t>(l)];
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, D = cfg_.head_dim;
  const int64_t nq = cfg_.num_heads, nkv = cfg_.num_kv_heads, qkv_w = (nq + 2 * nkv) * D;
  const float eps = cfg_.rms_norm_eps;

  SD_RETURN_IF_ERROR(rmsnorm(x_.get(), g.input_norm.get(), eps, T, H, xn_.get(), stream_));
  SD_RETURN_IF_ERROR(linear(xn_.get(), T, g.qkv, g.qkv_bias.get(), qkv_.get()));
  const int32_t* positions = table<int32_t>(kPositions);
  SD_RETURN_IF_ERROR(rope(qkv_.get(), positions, T, nq, D, qkv_w, inv_freq_.get(), stream_));
  SD_RETURN_IF_ERROR(rope(qkv_.get() + nq * D, positions, T, nkv, D, qkv_w, inv_freq_.get(), stream_));
  // Split the fused rows: q [T, nq D], k and v [T, nkv D].
  auto split = [&](float* dst, int64_t col0, int64_t width) {
    const size_t bytes = static_cast<size_t>(width) * sizeof(float);
    return check(cudaMemcpy2DAsync(dst, bytes, qkv_.get() + col0, static_cast<size_t>(qkv_w) * sizeof(float), bytes,
                                   static_cast<size_t>(T), cudaMemcpyDeviceToDevice, stream_),
                 "split qkv");
  };
  SD_RETURN_IF_ERROR(split(q_.get(), 0, nq * D));
  SD_RETURN_IF_ERROR(split(k_new_.get(), nq * D, nkv * D));
  SD_RETURN_IF_ERROR(split(v_new_.get(), (nq + nkv) * D, nkv * D));
  SD_RETURN_IF_ERROR(kv_append(kKVDType, k_layer(l), v_layer(l), layout_, k_new_.get(), v_new_.get(), table<int64_t>(kSlots), T,
                               nullptr, stream_));

  PagedKVDevice kv;
  kv.k = k_layer(l);
  kv.v = v_layer(l);
  kv.dtype = kKVDType;
  kv.num_pages = layout_.num_pages;
  kv.page_size = layout_.page_size;
  kv.num_kv_heads = layout_.num_kv_heads;
  kv.head_dim = layout_.head_dim;
  PagedAttentionIO io;
  io.q = q_.get();
  io.out = attn_.get();
  io.io_dtype = DType::kF32;
  io.kv_indptr = table<int32_t>(kKvIndptr);
  io.kv_indices = table<int32_t>(kKvIndices);
  io.packed_mask = masked ? table<uint8_t>(kMask) : nullptr;
  io.mask_byte_indptr = masked ? table<int64_t>(kMaskIndptr) : nullptr;
  io.sm_scale = 1.0f / std::sqrt(static_cast<float>(D));
  SD_RETURN_IF_ERROR(paged_attention(plan_, ws_, kv, io, stream_));

  SD_RETURN_IF_ERROR(linear(attn_.get(), T, g.o, nullptr, xn_.get()));
  SD_RETURN_IF_ERROR(add_inplace(x_.get(), xn_.get(), T * H, stream_));
  SD_RETURN_IF_ERROR(rmsnorm(x_.get(), g.post_attention_norm.get(), eps, T, H, xn_.get(), stream_));
  SD_RETURN_IF_ERROR(linear(xn_.get(), T, g.gate_up, nullptr, gate_up_.get()));
  SD_RETURN_IF_ERROR(silu_mul(gate_up_.get(), T, I, act_.get(), stream_));
  SD_RETURN_IF_ERROR(linear(act_.get(), T, g.down, nullptr, xn_.get()));
  return add_inplace(x_.get(), xn_.get(), T * H, stream_);
}

Status DeviceLlama::forward(const ForwardBatch& batch, KVCache& kv, float* logits) {
  SD_RETURN_IF_ERROR(validate_forward_batch(batch, cfg_, logits));
  const int64_t T = static_cast<int64_t>(batch.token_ids.size());
  const int64_t R = static_cast<int64_t>(batch.logit_rows.size());
  const int32_t B = static_cast<int32_t>(batch.seqs.size());
  if (T == 0) return Status::Ok();
  const bool masked = !batch.custom_mask.empty();
  SD_RETURN_IF_ERROR(bind_cache(kv));
  static const std::vector<int64_t> kNoMask;
  SD_RETURN_IF_ERROR(pages_.build(batch.seqs, batch.qo_indptr, masked ? batch.mask_indptr : kNoMask, batch.window,
                                  "forward"));
  // Graph shapes all share activations sized for kGemvMaxRows rows.
  const bool graph = use_graphs_ && T <= kGemvMaxRows && batch.layers.empty() && batch.capture_layers.empty();
  SD_RETURN_IF_ERROR(reserve_activations(graph ? kGemvMaxRows : T, graph ? kGemvMaxRows : R));
  pages_.new_token_slots(&slots_host_);
  if (masked) pack_mask_bits(batch.custom_mask.data(), batch.mask_indptr.data(), B, &mask_host_, &mask_indptr_host_);
  SD_RETURN_IF_ERROR(plan_paged_attention(batch.qo_indptr.data(), pages_.kv_indptr().data(),
                                          pages_.kv_last_page_len().data(), B, layout_.page_size, cfg_.num_heads,
                                          cfg_.num_kv_heads, cfg_.head_dim, !masked, kAttnChunk, num_sms_, &plan_));
  // A graph's replay (not a shape's first forward, which runs eagerly: module loading, kernel
  // attributes) pads the plan to the graph's sizes, grown first when the plan outgrew them.
  StepGraph* g = graph ? &graphs_[std::make_tuple(T, R, B, masked)] : nullptr;
  bool outgrown = false;
  if (g != nullptr && g->forwards++ == 0) g = nullptr;
  if (g != nullptr) {
    const int64_t items = static_cast<int64_t>(plan_.items.size()), merges = static_cast<int64_t>(plan_.merge.size() / 3);
    outgrown = g->exec == nullptr || items > g->items || merges > g->merges || plan_.num_slots > g->slots;
    if (outgrown) {  // room for the context to grow: twice the work items and partial slots
      g->items = std::max(g->items, 2 * items);
      g->merges = std::max(g->merges, merges > 0 ? T : 0);
      g->slots = std::max(g->slots, 2 * plan_.num_slots);
    }
    pad_attention_plan(&plan_, g->items, g->merges, g->slots);
  }
  SD_RETURN_IF_ERROR(upload_tables(batch));
  if (g != nullptr) SD_RETURN_IF_ERROR(replay(*g, outgrown, batch, T, R, masked));
  else SD_RETURN_IF_ERROR(enqueue_model(batch, T, R, masked));

  const int64_t V = cfg_.vocab_size;
  if (R > 0) {
    if (batch.argmax != nullptr) {  // greedy verification: R ids come back instead of R x V floats
      SD_RETURN_IF_ERROR(argmax_.reserve(static_cast<size_t>(R)));
      SD_RETURN_IF_ERROR(argmax_host_.reserve(static_cast<size_t>(R)));
      SD_RETURN_IF_ERROR(argmax(logits_.get(), R, V, argmax_.get(), stream_));
      SD_RETURN_IF_ERROR(check(cudaMemcpyAsync(argmax_host_.get(), argmax_.get(), static_cast<size_t>(R) * sizeof(int32_t),
                                               cudaMemcpyDeviceToHost, stream_),
                               "argmax D2H"));
    }
    if (batch.sample != nullptr) SD_RETURN_IF_ERROR(sampler_.enqueue(*batch.sample, logits_.get(), V, stream_));
    if (batch.draw != nullptr) SD_RETURN_IF_ERROR(sampler_.enqueue_draws(batch.draw, logits_.get(), V, stream_));
    if (logits != nullptr)
      SD_RETURN_IF_ERROR(check(cudaMemcpyAsync(logits, logits_.get(), static_cast<size_t>(R * V) * sizeof(float),
                                               cudaMemcpyDeviceToHost, stream_),
                               "logits D2H"));
  }
  SD_RETURN_IF_ERROR(sync(stream_, "forward"));
  if (batch.argmax != nullptr && R > 0) std::copy_n(argmax_host_.get(), R, batch.argmax);
  if (batch.sample != nullptr) sampler_.read(batch.sample);
  return Status::Ok();
}

Status DeviceLlama::enqueue_model(const ForwardBatch& batch, int64_t T, int64_t R, bool masked) {
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size;
  SD_RETURN_IF_ERROR(embedding(embed_.dtype, embed_.data.get(), V, H, table<int32_t>(kIds), T, x_.get(), nullptr, stream_));
  // The layers to run (all, or the self-speculation draft's subset); captured outputs go
  // straight to the host buffer, row t holding the capture layers side by side.
  const int32_t num_run = batch.layers.empty() ? cfg_.num_layers : static_cast<int32_t>(batch.layers.size());
  const int64_t C = static_cast<int64_t>(batch.capture_layers.size());
  for (int32_t li = 0; li < num_run; ++li) {
    const int32_t l = batch.layers.empty() ? li : batch.layers[static_cast<size_t>(li)];
    SD_RETURN_IF_ERROR(decoder_layer(l, T, masked));
    for (int64_t j = 0; j < C; ++j)
      if (batch.capture_layers[static_cast<size_t>(j)] == l)
        SD_RETURN_IF_ERROR(check(cudaMemcpy2DAsync(batch.captured + j * H, C * H * sizeof(float), x_.get(),
                                                   H * sizeof(float), H * sizeof(float), static_cast<size_t>(T),
                                                   cudaMemcpyDeviceToHost, stream_),
                                 "captured features D2H"));
  }
  if (R == 0) return Status::Ok();
  // Gather the logit rows (the embedding gather over x as an f32 table), norm, LM head.
  SD_RETURN_IF_ERROR(embedding(DType::kF32, x_.get(), T, H, table<int32_t>(kLogitRows), R, rows_.get(), nullptr, stream_));
  SD_RETURN_IF_ERROR(rmsnorm(rows_.get(), final_norm_.get(), cfg_.rms_norm_eps, R, H, rows_.get(), stream_));
  return linear(rows_.get(), R, tied_ ? embed_ : lm_head_, nullptr, logits_.get());
}

Status DeviceLlama::upload_tables(const ForwardBatch& batch) {
  // Per-token and per-request tables get room for a graph's largest step (16 rows) at once, so
  // that the shapes' graphs share their addresses; the page table and mask grow with 2x headroom.
  const size_t rows = static_cast<size_t>(kGemvMaxRows) + 1;
  std::vector<StagedTables::Table> t(kNumTables);
  t[kIds] = StagedTables::of(batch.token_ids, rows);
  t[kPositions] = StagedTables::of(batch.positions, rows);
  t[kSlots] = StagedTables::of(slots_host_, rows);
  t[kKvIndptr] = StagedTables::of(pages_.kv_indptr(), rows);
  t[kKvIndices] = StagedTables::of(pages_.kv_indices());
  t[kLogitRows] = StagedTables::of(batch.logit_rows, rows);
  const bool masked = !batch.custom_mask.empty();
  t[kMask] = masked ? StagedTables::of(mask_host_) : StagedTables::Table{nullptr, 0, 0};
  t[kMaskIndptr] = masked ? StagedTables::of(mask_indptr_host_, rows) : StagedTables::Table{nullptr, 0, 0};
  t[kPlanItems] = StagedTables::of(plan_.items);
  t[kPlanPartBase] = StagedTables::of(plan_.part_base, rows);
  t[kPlanMerge] = StagedTables::of(plan_.merge);
  SD_RETURN_IF_ERROR(tables_.upload(t, stream_));
  return ws_.use(plan_, table<AttnWorkItem>(kPlanItems), table<int32_t>(kPlanPartBase), table<int32_t>(kPlanMerge));
}

std::vector<const void*> DeviceLlama::graph_buffers() const {
  std::vector<const void*> b = {x_.get(),    xn_.get(),      qkv_.get(),     q_.get(),    k_new_.get(),
                                v_new_.get(), attn_.get(),   gate_up_.get(), act_.get(),  rows_.get(),
                                logits_.get(), half_in_.get(), ws_.part_o.get(), ws_.part_lse.get()};
  for (int t = 0; t < kNumTables; ++t) b.push_back(table<uint8_t>(static_cast<Table>(t)));
  return b;
}

Status DeviceLlama::replay(StepGraph& g, bool outgrown, const ForwardBatch& batch, int64_t T, int64_t R, bool masked) {
  std::vector<const void*> buffers = graph_buffers();
  if (outgrown || buffers != g.buffers) {
    if (g.exec != nullptr) cudaGraphExecDestroy(g.exec);
    g.exec = nullptr;
    SD_RETURN_IF_ERROR(check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture"));
    const Status run = enqueue_model(batch, T, R, masked);
    cudaGraph_t graph = nullptr;
    const Status end = check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
    Status inst = run.ok() && end.ok() ? check(cudaGraphInstantiate(&g.exec, graph, 0), "cudaGraphInstantiate") : Status::Ok();
    if (graph != nullptr) cudaGraphDestroy(graph);
    for (const Status& st : {run, end, inst})
      if (!st.ok())
        return Status(st.code(), "device model: capturing the CUDA graph of a " + std::to_string(T) +
                                     "-row forward failed (SPECDEC_CUDA_GRAPHS=0 runs without graphs): " + st.message());
    g.buffers = std::move(buffers);
  }
  return check(cudaGraphLaunch(g.exec, stream_), "cudaGraphLaunch");
}

Status DeviceLlama::copy_tokens(KVCache& kv, const SeqPages& seq, const std::vector<int64_t>& from,
                                const std::vector<int64_t>& to) {
  SD_RETURN_IF_ERROR(validate_copy_tokens(seq, from, to));
  std::vector<int64_t> src, dst;  // the moves (a token already in place, as along a chain, is skipped)
  for (size_t i = 0; i < from.size(); ++i)
    if (from[i] != to[i]) src.push_back(seq.flat_slot(from[i])), dst.push_back(seq.flat_slot(to[i]));
  if (src.empty()) return Status::Ok();
  SD_RETURN_IF_ERROR(bind_cache(kv));
  SD_RETURN_IF_ERROR(copy_src_.write_async(src, stream_));
  SD_RETURN_IF_ERROR(copy_dst_.write_async(dst, stream_));
  // No sync: the next forward runs after it on the same stream (and reports its faults).
  return kv_copy_slots(kKVDType, k_cache_.get(), v_cache_.get(), cfg_.num_layers, layout_, copy_src_.get(),
                       copy_dst_.get(), static_cast<int64_t>(src.size()), stream_);
}

}  // namespace

Status create_device_llama(const ModelConfig& cfg, const Checkpoint& ckpt, WeightDTypes dtypes,
                           const std::function<void(int, int)>& progress, std::unique_ptr<ForwardModel>* out) {
  return DeviceLlama::create(cfg, ckpt, dtypes, progress, out);
}

}  // namespace sd::cuda
