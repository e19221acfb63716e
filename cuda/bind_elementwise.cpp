// Python entry points of the element-wise, KV, sampling and speculative-sampling CUDA kernels
// (host arrays in, host arrays out: each call uploads, runs, synchronizes and downloads).
// Signatures mirror the CPU references in specdec_native.ops (rmsnorm, rope, silu_mul,
// embedding, processed_probs, sample, verify_tree) so tests can call both with the same
// arguments; sampling and verification also take batches (2-D logits, per-row parameters).
// Every shape and dtype is checked here: a mistake is a ValueError naming the argument.
// Only inline code from cpp/ is used: the _cuda module does not link the core's sources.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "bindings/array_args.h"
#include "bindings/status_to_python.h"
#include "cuda/bind_register.h"
#include "cuda/cuda_ops.h"
#include "sampling/sampler.h"

namespace py = pybind11;
using sd_py::expect_dim;
using sd_py::f32;
using sd_py::i32;

namespace sd_cuda_py {

namespace {

// KV storage / table dtypes the CUDA kernels take.
sd::DType float_dtype(const std::string& name, const char* what) {
  const sd::DType t = sd_py::dtype_from_name(name);
  if (t != sd::DType::kF32 && t != sd::DType::kBF16 && t != sd::DType::kF16)
    throw py::value_error(std::string(what) + ": dtype must be float32, bfloat16 or float16; got '" + name + "'");
  return t;
}

py::array_t<int64_t, py::array::c_style> i64(const py::handle& o, const char* name, int ndim) {
  return sd_py::checked<int64_t>(o, name, ndim, "int64");
}

// A scalar (broadcast) or one value per row.
template <class T>
std::vector<T> per_row(const py::object& o, py::ssize_t B, const char* name) {
  py::array_t<T, py::array::c_style | py::array::forcecast> a;
  try {
    a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(o);
  } catch (const py::error_already_set&) {
  }
  if (!a) throw py::value_error(std::string(name) + ": expected a number or a 1-d array of numbers");
  if (a.ndim() == 0) return std::vector<T>(static_cast<size_t>(B), *a.data());
  if (a.ndim() == 1 && a.shape(0) == B) return std::vector<T>(a.data(), a.data() + B);
  throw py::value_error(std::string(name) + ": expected a scalar or " + std::to_string(B) + " values (one per row), got shape " +
                        sd_py::shape_of(a));
}

// The CPU sampler's checks and messages.
void validate(const sd::cuda::SamplingRow& r) {
  sd::SamplingConfig c;
  c.temperature = r.temperature;
  c.top_k = r.top_k;
  c.top_p = r.top_p;
  c.min_p = r.min_p;
  throw_if_error(c.validate());
}

// Logits as [B, V] (a 1-d array is one row); *one_row tells which came.
py::array_t<float, py::array::c_style> logits_rows(py::handle obj, bool* one_row) {
  auto a = f32(obj, "logits", -1);
  if (a.ndim() != 1 && a.ndim() != 2)
    throw py::value_error("logits: expected a 1-d [vocab] or 2-d [batch, vocab] array, got shape " + sd_py::shape_of(a));
  if (a.shape(a.ndim() - 1) == 0) throw py::value_error("logits: the vocabulary is empty");
  *one_row = a.ndim() == 1;
  return a;
}

std::vector<sd::cuda::SamplingRow> sampling_rows(py::ssize_t B, const py::object& temperature, const py::object& top_k,
                                                 const py::object& top_p, const py::object& min_p, const py::object& seed,
                                                 const py::object& counter) {
  const auto t = per_row<float>(temperature, B, "temperature");
  const auto k = per_row<int64_t>(top_k, B, "top_k");
  const auto p = per_row<float>(top_p, B, "top_p");
  const auto m = per_row<float>(min_p, B, "min_p");
  const auto s = per_row<uint64_t>(seed, B, "seed");
  const auto c = per_row<uint64_t>(counter, B, "counter");
  std::vector<sd::cuda::SamplingRow> rows(static_cast<size_t>(B));
  for (size_t b = 0; b < rows.size(); ++b) {
    if (k[b] < 0) throw py::value_error("top_k must be >= 0 (0 disables it), got " + std::to_string(k[b]));
    rows[b] = sd::cuda::SamplingRow{t[b], static_cast<int32_t>(std::min<int64_t>(k[b], INT32_MAX)), p[b], m[b], s[b], c[b]};
    validate(rows[b]);
  }
  return rows;
}

// Checks a batch of parent-first trees (CSR over requests); returns the deepest depth.
int32_t check_trees(const int32_t* indptr, py::ssize_t B, const int32_t* tokens, const int32_t* parents, py::ssize_t n_nodes,
                    int64_t V) {
  if (indptr[0] != 0) throw py::value_error("node_indptr[0] must be 0");
  if (indptr[B] != n_nodes)
    throw py::value_error("node_indptr[-1] must equal the number of nodes " + std::to_string(n_nodes) + ", got " +
                          std::to_string(indptr[B]));
  int32_t deepest = 0;
  std::vector<int32_t> depth;
  for (py::ssize_t b = 0; b < B; ++b) {
    if (indptr[b + 1] < indptr[b]) throw py::value_error("node_indptr must be non-decreasing");
    const int32_t n0 = indptr[b], n = indptr[b + 1] - n0;
    depth.assign(static_cast<size_t>(n), 0);
    for (int32_t i = 0; i < n; ++i) {
      const int32_t par = parents[n0 + i], tok = tokens[n0 + i];
      if (par < -1 || par >= i)
        throw py::value_error("parents: node " + std::to_string(i) + (B > 1 ? " of request " + std::to_string(b) : "") +
                              " has parent " + std::to_string(par) + " (expected -1 or an earlier node)");
      if (tok < 0 || tok >= V)
        throw py::value_error("tokens: token " + std::to_string(tok) + " is out of range [0, " + std::to_string(V) + ")");
      depth[static_cast<size_t>(i)] = par < 0 ? 1 : depth[static_cast<size_t>(par)] + 1;
      deepest = std::max(deepest, depth[static_cast<size_t>(i)]);
    }
  }
  return deepest;
}

struct TreeBatchOut {
  std::vector<int32_t> accepted, num_accepted, next_token;
  std::vector<uint8_t> bonus;
  int32_t max_accept = 0;
};

// Verifies B trees (CSR) on the device; target_probs [nodes + B, V], draft_probs [nodes, V] or None.
TreeBatchOut run_trees(const int32_t* indptr, py::ssize_t B, const int32_t* tokens, const int32_t* parents,
                       py::ssize_t n_nodes, py::handle p_obj, const py::object& q_obj, const std::vector<uint64_t>& seeds,
                       const std::vector<uint64_t>& positions) {
  auto p = f32(p_obj, "target_probs", 2);
  expect_dim(p, 0, n_nodes + B, "target_probs", "1 + nodes rows per request");
  const int64_t V = p.shape(1);
  if (V == 0) throw py::value_error("target_probs: the vocabulary is empty");
  py::array_t<float, py::array::c_style> q;
  if (!q_obj.is_none()) {
    q = f32(q_obj, "draft_probs", 2);
    expect_dim(q, 0, n_nodes, "draft_probs", "one row per node");
    expect_dim(q, 1, V, "draft_probs", "vocab");
  }
  TreeBatchOut out;
  out.max_accept = std::max(1, check_trees(indptr, B, tokens, parents, n_nodes, V));
  out.accepted.resize(static_cast<size_t>(B * out.max_accept));
  out.num_accepted.resize(static_cast<size_t>(B));
  out.next_token.resize(static_cast<size_t>(B));
  out.bonus.resize(static_cast<size_t>(B));
  sd::Status st;
  {
    py::gil_scoped_release nogil;
    st = sd::cuda::verify_tree_host(indptr, B, tokens, parents, p.data(), q_obj.is_none() ? nullptr : q.data(), V,
                                    seeds.data(), positions.data(), out.max_accept, out.accepted.data(),
                                    out.num_accepted.data(), out.next_token.data(), out.bonus.data());
  }
  throw_if_error(st);
  return out;
}

}  // namespace

void register_elementwise(py::module_& m) {
  m.def(
      "rmsnorm",
      [](py::handle x_obj, py::handle w_obj, float eps) {
        auto x = f32(x_obj, "x", 2);
        auto w = f32(w_obj, "weight", 1);
        expect_dim(w, 0, x.shape(1), "weight", "hidden size");
        if (x.shape(1) == 0) throw py::value_error("x: the hidden size is 0");
        py::array_t<float> y({x.shape(0), x.shape(1)});
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::rmsnorm_host(x.data(), w.data(), eps, x.shape(0), x.shape(1), y.mutable_data());
        }
        throw_if_error(st);
        return y;
      },
      py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-6f);

  m.def(
      "rope",
      [](py::handle x_obj, py::handle pos_obj, py::handle inv_obj) {
        auto x = f32(x_obj, "x", 3);  // [T, heads, head_dim]
        auto pos = i32(pos_obj, "positions", 1);
        auto inv = f32(inv_obj, "inv_freq", 1);
        expect_dim(pos, 0, x.shape(0), "positions", "tokens");
        if (x.shape(2) == 0 || x.shape(2) % 2 != 0) throw py::value_error("x: head_dim must be even and > 0");
        expect_dim(inv, 0, x.shape(2) / 2, "inv_freq", "head_dim / 2");
        py::array_t<float> y({x.shape(0), x.shape(1), x.shape(2)});
        std::copy(x.data(), x.data() + x.size(), y.mutable_data());
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::rope_host(y.mutable_data(), pos.data(), x.shape(0), x.shape(1), x.shape(2), inv.data());
        }
        throw_if_error(st);
        return y;
      },
      py::arg("x"), py::arg("positions"), py::arg("inv_freq"),
      "Rotate-half RoPE of x [tokens, heads, head_dim] at the given positions.");

  m.def(
      "silu_mul",
      [](py::handle gu_obj) {
        auto gu = f32(gu_obj, "gate_up", 2);
        if (gu.shape(1) % 2 != 0) throw py::value_error("gate_up: the last axis must be 2 * intermediate");
        const py::ssize_t I = gu.shape(1) / 2;
        py::array_t<float> y({gu.shape(0), I});
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::silu_mul_host(gu.data(), gu.shape(0), I, y.mutable_data());
        }
        throw_if_error(st);
        return y;
      },
      py::arg("gate_up"), "silu(gate_up[:, :I]) * gate_up[:, I:]");

  m.def(
      "embedding",
      [](py::handle ids_obj, py::handle table_obj, const std::string& dtype) {
        auto ids = i32(ids_obj, "ids", 1);
        auto table = f32(table_obj, "table", 2);
        const sd::DType dt = float_dtype(dtype, "table");
        if (table.shape(1) == 0) throw py::value_error("table: expected at least one column");
        py::array_t<float> y({ids.shape(0), table.shape(1)});
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::embedding_host(dt, table.data(), table.shape(0), table.shape(1), ids.data(), ids.shape(0),
                                        y.mutable_data());
        }
        throw_if_error(st);  // an id out of range (found on the device) is a ValueError
        return y;
      },
      py::arg("ids"), py::arg("table"), py::arg("dtype") = "float32",
      "out[t] = table[ids[t]]; table float32 [rows, cols], stored on the device as `dtype` (float32, bfloat16, "
      "float16). Ids are checked on the device.");

  m.def(
      "kv_append",
      [](py::handle k_cache_obj, py::handle v_cache_obj, py::handle k_obj, py::handle v_obj, py::handle slots_obj,
         const std::string& dtype) {
        auto kc = f32(k_cache_obj, "k_cache", 4);  // [pages, page_size, kv_heads, head_dim]
        auto vc = f32(v_cache_obj, "v_cache", 4);
        auto k = f32(k_obj, "k", 3);  // [T, kv_heads, head_dim]
        auto v = f32(v_obj, "v", 3);
        auto slots = i64(slots_obj, "slot_mapping", 1);
        const sd::DType dt = float_dtype(dtype, "kv cache");
        for (int a = 0; a < 4; ++a) expect_dim(vc, a, kc.shape(a), "v_cache", "the k_cache size");
        for (int a = 0; a < 4; ++a)
          if (kc.shape(a) == 0) throw py::value_error("k_cache: every axis must be > 0, got shape " + sd_py::shape_of(kc));
        expect_dim(k, 1, kc.shape(2), "k", "kv_heads");
        expect_dim(k, 2, kc.shape(3), "k", "head_dim");
        for (int a = 0; a < 3; ++a) expect_dim(v, a, k.shape(a), "v", "the k size");
        expect_dim(slots, 0, k.shape(0), "slot_mapping", "one slot per row of k");
        sd::cuda::KVLayout L;
        L.num_pages = static_cast<int32_t>(kc.shape(0));
        L.page_size = static_cast<int32_t>(kc.shape(1));
        L.num_kv_heads = static_cast<int32_t>(kc.shape(2));
        L.head_dim = static_cast<int32_t>(kc.shape(3));
        py::array_t<float> ko({kc.shape(0), kc.shape(1), kc.shape(2), kc.shape(3)});
        py::array_t<float> vo({kc.shape(0), kc.shape(1), kc.shape(2), kc.shape(3)});
        std::copy(kc.data(), kc.data() + kc.size(), ko.mutable_data());
        std::copy(vc.data(), vc.data() + vc.size(), vo.mutable_data());
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::kv_append_host(dt, ko.mutable_data(), vo.mutable_data(), L, k.data(), v.data(), slots.data(),
                                        k.shape(0));
        }
        throw_if_error(st);
        return py::make_tuple(ko, vo);
      },
      py::arg("k_cache"), py::arg("v_cache"), py::arg("k"), py::arg("v"), py::arg("slot_mapping"),
      py::arg("dtype") = "float32",
      "Writes rows k, v [T, kv_heads, head_dim] into flat slots (page * page_size + slot; < 0: skipped) of the paged "
      "caches [pages, page_size, kv_heads, head_dim] stored as `dtype`; returns the new (k_cache, v_cache) as float32.");

  m.def(
      "kv_copy_slots",
      [](py::handle k_cache_obj, py::handle v_cache_obj, py::handle src_obj, py::handle dst_obj, const std::string& dtype) {
        auto kc = f32(k_cache_obj, "k_cache", 5);  // [layers, pages, page_size, kv_heads, head_dim]
        auto vc = f32(v_cache_obj, "v_cache", 5);
        auto src = i64(src_obj, "src", 1);
        auto dst = i64(dst_obj, "dst", 1);
        const sd::DType dt = float_dtype(dtype, "kv cache");
        for (int a = 0; a < 5; ++a) expect_dim(vc, a, kc.shape(a), "v_cache", "the k_cache size");
        for (int a = 0; a < 5; ++a)
          if (kc.shape(a) == 0) throw py::value_error("k_cache: every axis must be > 0, got shape " + sd_py::shape_of(kc));
        expect_dim(dst, 0, src.shape(0), "dst", "len(src)");
        sd::cuda::KVLayout L;
        L.num_pages = static_cast<int32_t>(kc.shape(1));
        L.page_size = static_cast<int32_t>(kc.shape(2));
        L.num_kv_heads = static_cast<int32_t>(kc.shape(3));
        L.head_dim = static_cast<int32_t>(kc.shape(4));
        std::vector<py::ssize_t> shape(kc.shape(), kc.shape() + 5);
        py::array_t<float> ko(shape), vo(shape);
        std::copy(kc.data(), kc.data() + kc.size(), ko.mutable_data());
        std::copy(vc.data(), vc.data() + vc.size(), vo.mutable_data());
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::kv_copy_slots_host(dt, ko.mutable_data(), vo.mutable_data(), static_cast<int32_t>(kc.shape(0)), L,
                                            src.data(), dst.data(), src.shape(0));
        }
        throw_if_error(st);
        return py::make_tuple(ko, vo);
      },
      py::arg("k_cache"), py::arg("v_cache"), py::arg("src"), py::arg("dst"), py::arg("dtype") = "float32",
      "For i in order: flat slot dst[i] <- slot src[i] in every layer's K and V (the accepted-path compaction); caches "
      "[layers, pages, page_size, kv_heads, head_dim] stored as `dtype`; returns the new (k_cache, v_cache).");

  m.def(
      "argmax",
      [](py::handle logits_obj) -> py::object {
        bool one;
        auto x = logits_rows(logits_obj, &one);
        const py::ssize_t B = one ? 1 : x.shape(0), V = x.shape(x.ndim() - 1);
        py::array_t<int32_t> out(B);
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::argmax_host(x.data(), B, V, out.mutable_data());
        }
        throw_if_error(st);
        if (one) return py::int_(out.data()[0]);
        return std::move(out);
      },
      py::arg("logits"), "The first index of each row's maximum (int for 1-d logits, int32 [batch] for 2-d).");

  m.def(
      "processed_probs",
      [](py::handle logits_obj, py::object temperature, py::object top_k, py::object top_p, py::object min_p) {
        bool one;
        auto x = logits_rows(logits_obj, &one);
        const py::ssize_t B = one ? 1 : x.shape(0), V = x.shape(x.ndim() - 1);
        const auto rows = sampling_rows(B, temperature, top_k, top_p, min_p, py::int_(0), py::int_(0));
        py::array_t<float> out = one ? py::array_t<float>(V) : py::array_t<float>({B, V});
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::sample_host(x.data(), B, V, rows.data(), out.mutable_data(), nullptr);
        }
        throw_if_error(st);
        return out;
      },
      py::arg("logits"), py::arg("temperature") = 1.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
      py::arg("min_p") = 0.0f,
      "The distribution sampling draws from (temperature, top-k, top-p, min-p), per row; parameters are scalars or "
      "one value per row.");

  m.def(
      "sample",
      [](py::handle logits_obj, py::object temperature, py::object top_k, py::object top_p, py::object min_p,
         py::object seed, py::object counter) -> py::object {
        bool one;
        auto x = logits_rows(logits_obj, &one);
        const py::ssize_t B = one ? 1 : x.shape(0), V = x.shape(x.ndim() - 1);
        const auto rows = sampling_rows(B, temperature, top_k, top_p, min_p, seed, counter);
        py::array_t<int32_t> out(B);
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::sample_host(x.data(), B, V, rows.data(), nullptr, out.mutable_data());
        }
        throw_if_error(st);
        if (one) return py::int_(out.data()[0]);
        return std::move(out);
      },
      py::arg("logits"), py::arg("temperature") = 1.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
      py::arg("min_p") = 0.0f, py::arg("seed") = 0, py::arg("counter") = 0,
      "A token drawn like specdec_native.ops.sample (Philox at (seed, counter)); 2-d logits draw one per row, with "
      "scalar or per-row parameters, seeds and counters.");

  m.def(
      "verify_tree",
      [](const std::vector<int32_t>& tokens, const std::vector<int32_t>& parents, py::handle p_obj, py::object q_obj,
         uint64_t seed, uint64_t position) {
        if (parents.size() != tokens.size())
          throw py::value_error("parents: expected one parent per token (" + std::to_string(tokens.size()) + "), got " +
                                std::to_string(parents.size()));
        const int32_t indptr[2] = {0, static_cast<int32_t>(tokens.size())};
        const std::vector<uint64_t> s{seed}, pos{position};
        const TreeBatchOut o = run_trees(indptr, 1, tokens.data(), parents.data(), static_cast<py::ssize_t>(tokens.size()),
                                         p_obj, q_obj, s, pos);
        std::vector<int32_t> acc(o.accepted.begin(), o.accepted.begin() + o.num_accepted[0]);
        return py::make_tuple(acc, o.next_token[0], o.bonus[0] != 0);
      },
      py::arg("tokens"), py::arg("parents"), py::arg("target_probs"), py::arg("draft_probs") = py::none(),
      py::arg("seed") = 0, py::arg("position") = 0,
      "Like specdec_native.ops.verify_tree, on the GPU: (accepted node indexes, next token, bonus).");

  m.def(
      "verify_trees",
      [](py::handle indptr_obj, py::handle tokens_obj, py::handle parents_obj, py::handle p_obj, py::object q_obj,
         py::object seeds, py::object positions) {
        auto indptr = i32(indptr_obj, "node_indptr", 1);
        auto tokens = i32(tokens_obj, "tokens", 1);
        auto parents = i32(parents_obj, "parents", 1);
        if (indptr.shape(0) < 1) throw py::value_error("node_indptr: expected batch + 1 entries");
        expect_dim(parents, 0, tokens.shape(0), "parents", "one parent per token");
        const py::ssize_t B = indptr.shape(0) - 1;
        const auto s = per_row<uint64_t>(seeds, B, "seeds");
        const auto pos = per_row<uint64_t>(positions, B, "positions");
        const TreeBatchOut o = run_trees(indptr.data(), B, tokens.data(), parents.data(), tokens.shape(0), p_obj, q_obj, s, pos);
        py::array_t<int32_t> acc({B, static_cast<py::ssize_t>(o.max_accept)});
        std::copy(o.accepted.begin(), o.accepted.end(), acc.mutable_data());
        py::array_t<bool> bonus(B);
        for (py::ssize_t b = 0; b < B; ++b) bonus.mutable_data()[b] = o.bonus[static_cast<size_t>(b)] != 0;
        return py::make_tuple(acc, py::array_t<int32_t>(B, o.num_accepted.data()), py::array_t<int32_t>(B, o.next_token.data()),
                              bonus);
      },
      py::arg("node_indptr"), py::arg("tokens"), py::arg("parents"), py::arg("target_probs"),
      py::arg("draft_probs") = py::none(), py::arg("seeds") = 0, py::arg("positions") = 0,
      "A batch of trees (CSR: request b owns nodes node_indptr[b]:node_indptr[b+1] with local parents, and target rows "
      "node_indptr[b]+b : node_indptr[b+1]+b+1, root first). Returns (accepted [batch, max depth] padded with -1, "
      "num_accepted, next_token, bonus).");

  m.def(
      "verify_chain",
      [](py::handle p_obj, py::handle draft_obj, py::object q_obj, py::object seeds, py::object positions) {
        auto p = f32(p_obj, "target_probs", 3);  // [B, k + 1, V]
        auto d = i32(draft_obj, "draft_tokens", 2);
        const py::ssize_t B = p.shape(0), V = p.shape(2);
        expect_dim(d, 0, B, "draft_tokens", "batch");
        expect_dim(p, 1, d.shape(1) + 1, "target_probs", "k + 1 rows per request");
        if (V == 0) throw py::value_error("target_probs: the vocabulary is empty");
        const py::ssize_t k = d.shape(1);
        if (k > 255) throw py::value_error("draft_tokens: at most 255 drafts per request, got " + std::to_string(k));
        py::array_t<float, py::array::c_style> q;
        if (!q_obj.is_none()) {
          q = f32(q_obj, "draft_probs", 3);
          expect_dim(q, 0, B, "draft_probs", "batch");
          expect_dim(q, 1, k, "draft_probs", "k");
          expect_dim(q, 2, V, "draft_probs", "vocab");
        }
        for (py::ssize_t i = 0; i < d.size(); ++i)
          if (d.data()[i] < 0 || d.data()[i] >= V)
            throw py::value_error("draft_tokens: token " + std::to_string(d.data()[i]) + " is out of range [0, " +
                                  std::to_string(V) + ")");
        const auto s = per_row<uint64_t>(seeds, B, "seeds");
        const auto pos = per_row<uint64_t>(positions, B, "positions");
        py::array_t<int32_t> out({B, k + 1});
        py::array_t<int32_t> num(B);
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::verify_chain_host(p.data(), d.data(), q_obj.is_none() ? nullptr : q.data(), B,
                                           static_cast<int32_t>(k), V, s.data(), pos.data(), out.mutable_data(),
                                           num.mutable_data());
        }
        throw_if_error(st);
        return py::make_tuple(out, num);
      },
      py::arg("target_probs"), py::arg("draft_tokens"), py::arg("draft_probs") = py::none(), py::arg("seeds") = 0,
      py::arg("positions") = 0,
      "Rejection sampling of B draft chains (vLLM's rejection sampler): target_probs [B, k+1, V], draft_tokens [B, k], "
      "draft_probs [B, k, V] or None (one-hot). Returns (output tokens [B, k+1]: accepted drafts, then the recovered or "
      "bonus token, padded with -1; num_accepted [B]). Same random numbers as ops.verify_tree on each chain.");
}

}  // namespace sd_cuda_py
