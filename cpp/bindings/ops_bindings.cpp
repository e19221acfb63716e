// specdec_native.ops: the kernels on numpy arrays, for tests and for people who benchmark them.
// Every argument is checked here (dtype, rank, sizes) and a mistake is a ValueError.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>

#include "bindings/array_args.h"
#include "bindings/register.h"
#include "bindings/status_to_python.h"
#include "core/membw.h"
#include "core/parallel.h"
#include "model/weights.h"
#include "ops/ops.h"
#include "sampling/philox.h"
#include "sampling/sampler.h"
#include "spec/lossy_verifier.h"
#include "spec/token_tree.h"
#include "spec/verifier.h"

namespace py = pybind11;
using sd_py::expect_dim;
using sd_py::f32;
using sd_py::i32;

namespace {

// A weight matrix packed into one of the kernel dtypes (int8: blocks of 32 with a scale; int4:
// blocks of 32 with a scale and a minimum).
struct PackedWeight {
  sd::OwnedMatrix m;
};


std::unique_ptr<PackedWeight> pack(py::handle w_obj, const std::string& dtype) {
  auto w = f32(w_obj, "weight", 2);
  sd::TensorView tv;
  tv.name = "weight";
  tv.dtype = "F32";
  tv.shape = {w.shape(0), w.shape(1)};
  tv.data = reinterpret_cast<const uint8_t*>(w.data());
  tv.nbytes = w.nbytes();
  auto p = std::make_unique<PackedWeight>();
  throw_if_error(sd::OwnedMatrix::from_tensors({&tv}, w.shape(1), sd_py::dtype_from_name(dtype), &p->m));
  return p;
}

sd::SamplingConfig sampling(float temperature, int top_k, float top_p, float min_p, uint64_t seed) {
  sd::SamplingConfig c;
  c.temperature = temperature;
  c.top_k = top_k;
  c.top_p = top_p;
  c.min_p = min_p;
  c.seed = seed;
  throw_if_error(c.validate());
  return c;
}

// A draft tree from parallel lists plus the target's probabilities per row ([1 + nodes, vocab]) and,
// optionally, the draft's per node ([nodes, vocab], into tree->q); the tree is validated.
py::array_t<float, py::array::c_style> tree_and_probs(const std::vector<int32_t>& tokens, const std::vector<int32_t>& parents,
                                  py::handle p_obj, const py::object& q_obj, sd::TokenTree* tree) {
  throw_if_error(sd::TokenTree::from_parents(tokens, parents, tree));
  auto p = f32(p_obj, "target_probs", 2);
  expect_dim(p, 0, static_cast<py::ssize_t>(tokens.size()) + 1, "target_probs", "1 + nodes rows");
  const int64_t V = p.shape(1);
  if (!q_obj.is_none()) {
    auto q = f32(q_obj, "draft_probs", 2);
    expect_dim(q, 0, static_cast<py::ssize_t>(tokens.size()), "draft_probs", "one row per node");
    expect_dim(q, 1, V, "draft_probs", "vocab");
    tree->q.assign(q.data(), q.data() + q.size());
  }
  throw_if_error(tree->validate(static_cast<int32_t>(V)));
  return p;
}

// Each row's argmax ([rows, vocab] probabilities).
std::vector<int32_t> row_argmax(const py::array_t<float, py::array::c_style>& p) {
  std::vector<int32_t> best;
  for (py::ssize_t r = 0; r < p.shape(0); ++r) best.push_back(sd::argmax(p.data() + r * p.shape(1), p.shape(1)));
  return best;
}

}  // namespace

void register_ops(py::module_& parent) {
  py::module_ m = parent.def_submodule("ops", "CPU kernels on numpy arrays");
  m.def("cpu_isa", &sd::ops::cpu_isa, "The CPU kernel set in use: 'avx512', 'avx2' or 'portable'.");
  m.def("available_cpu_isas", &sd::ops::available_cpu_isas,
        "The CPU kernel sets this machine can run, best last.");
  m.def(
      "set_cpu_isa",
      [](const std::string& name) {
        std::string prev;
        throw_if_error(sd::ops::set_cpu_isa(name, &prev));
        return prev;
      },
      py::arg("name"), "Use CPU kernel set `name` (or 'best'); returns the previous one.");
  m.def("set_num_threads", &sd::set_num_threads, py::arg("n"));
  m.def("num_threads", &sd::num_threads);
  m.def(
      "measure_read_bandwidth",
      [](int64_t nbytes, int repeats) {
        py::gil_scoped_release nogil;
        return sd::measure_read_bandwidth(nbytes, repeats);
      },
      py::arg("nbytes") = int64_t{1} << 30, py::arg("repeats") = 5,
      "Read bandwidth (bytes/s) with the core's threads: the decode roofline.");

  py::class_<PackedWeight>(m, "PackedWeight")
      .def(py::init(&pack), py::arg("weight"), py::arg("dtype") = "float32",
           "Packs a float32 [out, in] matrix into a kernel dtype (int8: Q8 blocks of 32).")
      .def_property_readonly("dtype", [](const PackedWeight& p) { return sd::dtype_name(p.m.view().dtype); })
      .def_property_readonly("shape", [](const PackedWeight& p) { return py::make_tuple(p.m.view().rows, p.m.view().cols); })
      .def_property_readonly("nbytes", [](const PackedWeight& p) { return p.m.view().nbytes(); });

  m.def(
      "matmul",
      [](py::handle x_obj, const PackedWeight& w, py::object bias_obj) {
        auto x = f32(x_obj, "x", 2);
        const sd::Matrix& W = w.m.view();
        expect_dim(x, 1, W.cols, "x", "in_features");
        py::array_t<float> bias;
        if (!bias_obj.is_none()) {
          bias = f32(bias_obj, "bias", 1);
          expect_dim(bias, 0, W.rows, "bias", "out_features");
        }
        py::array_t<float> y({x.shape(0), static_cast<py::ssize_t>(W.rows)});
        {
          py::gil_scoped_release nogil;
          sd::ops::matmul(W, x.data(), x.shape(0), W.cols, y.mutable_data(), W.rows,
                          bias_obj.is_none() ? nullptr : bias.data());
        }
        return y;
      },
      py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), "y = x @ weight.T + bias");

  m.def(
      "rmsnorm",
      [](py::handle x_obj, py::handle w_obj, float eps) {
        auto x = f32(x_obj, "x", 2);
        auto w = f32(w_obj, "weight", 1);
        expect_dim(w, 0, x.shape(1), "weight", "hidden size");
        py::array_t<float> y({x.shape(0), x.shape(1)});
        sd::ops::rmsnorm(x.data(), w.data(), eps, x.shape(0), x.shape(1), y.mutable_data());
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
        if (x.shape(2) % 2 != 0) throw py::value_error("x: head_dim must be even");
        expect_dim(inv, 0, x.shape(2) / 2, "inv_freq", "head_dim / 2");
        py::array_t<float> y({x.shape(0), x.shape(1), x.shape(2)});
        std::copy(x.data(), x.data() + x.size(), y.mutable_data());
        sd::ops::rope(y.mutable_data(), pos.data(), x.shape(0), x.shape(1), x.shape(2),
                      x.shape(1) * x.shape(2), inv.data());
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
        sd::ops::silu_mul(gu.data(), gu.shape(0), I, y.mutable_data());
        return y;
      },
      py::arg("gate_up"), "silu(gate_up[:, :I]) * gate_up[:, I:]");

  m.def(
      "embedding",
      [](py::handle ids_obj, const PackedWeight& table) {
        auto ids = i32(ids_obj, "ids", 1);
        const sd::Matrix& T = table.m.view();
        for (py::ssize_t i = 0; i < ids.size(); ++i)
          if (ids.data()[i] < 0 || ids.data()[i] >= T.rows)
            throw py::value_error("ids: token id " + std::to_string(ids.data()[i]) + " is out of range [0, " +
                                  std::to_string(T.rows) + ")");
        py::array_t<float> y({ids.shape(0), static_cast<py::ssize_t>(T.cols)});
        sd::ops::embedding(T, ids.data(), ids.shape(0), y.mutable_data());
        return y;
      },
      py::arg("ids"), py::arg("table"));

  m.def(
      "paged_attention",
      [](py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle qo_obj, py::handle kvp_obj,
         py::handle kvi_obj, py::handle last_obj, py::object mask_obj, py::object mask_indptr_obj,
         py::object scale_obj) {
        auto q = f32(q_obj, "q", 3);            // [total_q, qo_heads, head_dim]
        auto k = f32(k_obj, "k_cache", 4);      // [pages, page_size, kv_heads, head_dim]
        auto v = f32(v_obj, "v_cache", 4);
        auto qo = i32(qo_obj, "qo_indptr", 1);
        auto kvp = i32(kvp_obj, "kv_indptr", 1);
        auto kvi = i32(kvi_obj, "kv_indices", 1);
        auto last = i32(last_obj, "kv_last_page_len", 1);
        for (int a = 0; a < 4; ++a) expect_dim(v, a, k.shape(a), "v_cache", "the k_cache size");
        expect_dim(q, 2, k.shape(3), "q", "head_dim");
        const py::ssize_t B = qo.shape(0) - 1;
        if (B < 0) throw py::value_error("qo_indptr: expected batch + 1 entries");
        expect_dim(kvp, 0, B + 1, "kv_indptr", "batch + 1");
        expect_dim(last, 0, B, "kv_last_page_len", "batch");
        if (qo.data()[B] != q.shape(0))
          throw py::value_error("qo_indptr[-1] must equal the number of queries " + std::to_string(q.shape(0)));
        if (kvp.data()[B] > kvi.shape(0) || kvp.data()[0] < 0)
          throw py::value_error("kv_indptr must index into kv_indices");
        py::array_t<uint8_t, py::array::c_style> mask;
        py::array_t<int64_t, py::array::c_style> mask_indptr;
        if (!mask_obj.is_none()) {
          mask = sd_py::checked<bool>(mask_obj, "custom_mask", 1, "bool").attr("view")("uint8")
                     .cast<py::array_t<uint8_t, py::array::c_style>>();
          if (mask_indptr_obj.is_none()) throw py::value_error("custom_mask needs mask_indptr");
          mask_indptr = sd_py::checked<int64_t>(mask_indptr_obj, "mask_indptr", 1, "int64");
          expect_dim(mask_indptr, 0, B + 1, "mask_indptr", "batch + 1");
          if (mask_indptr.data()[B] > mask.shape(0) || mask_indptr.data()[0] < 0)
            throw py::value_error("mask_indptr must index into custom_mask");
        }
        sd::ops::PagedKV kv;
        kv.k = k.data();
        kv.v = v.data();
        kv.num_pages = static_cast<int32_t>(k.shape(0));
        kv.page_size = static_cast<int32_t>(k.shape(1));
        kv.num_kv_heads = static_cast<int32_t>(k.shape(2));
        kv.head_dim = static_cast<int32_t>(k.shape(3));
        const float scale = scale_obj.is_none() ? 1.0f / std::sqrt(static_cast<float>(kv.head_dim))
                                                : scale_obj.cast<float>();
        py::array_t<float> out({q.shape(0), q.shape(1), q.shape(2)});
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::ops::paged_attention(q.data(), qo.data(), static_cast<int32_t>(B), kv, kvp.data(),
                                        kvi.data(), last.data(), mask_obj.is_none() ? nullptr : mask.data(),
                                        mask_obj.is_none() ? nullptr : mask_indptr.data(),
                                        static_cast<int32_t>(q.shape(1)), scale, out.mutable_data());
        }
        throw_if_error(st);
        return out;
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("qo_indptr"), py::arg("kv_indptr"),
      py::arg("kv_indices"), py::arg("kv_last_page_len"), py::arg("custom_mask") = py::none(),
      py::arg("mask_indptr") = py::none(), py::arg("sm_scale") = py::none(),
      "Attention of ragged queries over a paged KV cache (FlashInfer's CSR page table, NHD layout).");

  m.def(
      "processed_probs",
      [](py::handle logits_obj, float temperature, int top_k, float top_p, float min_p) {
        auto logits = f32(logits_obj, "logits", 1);
        const sd::SamplingConfig c = sampling(temperature, top_k, top_p, min_p, 0);
        py::array_t<float> p(logits.shape(0));
        sd::processed_probs(logits.data(), logits.shape(0), c, p.mutable_data());
        return p;
      },
      py::arg("logits"), py::arg("temperature") = 1.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
      py::arg("min_p") = 0.0f, "The distribution sampling draws from, after temperature/top-k/top-p/min-p.");

  m.def(
      "sample",
      [](py::handle logits_obj, float temperature, int top_k, float top_p, float min_p, uint64_t seed,
         uint64_t counter) {
        auto logits = f32(logits_obj, "logits", 1);
        const sd::SamplingConfig c = sampling(temperature, top_k, top_p, min_p, seed);
        std::vector<float> scratch;
        return sd::sample_token(logits.data(), logits.shape(0), c, counter, &scratch);
      },
      py::arg("logits"), py::arg("temperature") = 1.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
      py::arg("min_p") = 0.0f, py::arg("seed") = 0, py::arg("counter") = 0);

  m.def(
      "verify_tree",
      [](const std::vector<int32_t>& tokens, const std::vector<int32_t>& parents, py::handle p_obj,
         py::object q_obj, uint64_t seed, uint64_t position) {
        sd::TokenTree tree;
        auto p = tree_and_probs(tokens, parents, p_obj, q_obj, &tree);
        std::vector<float> scratch;
        const sd::VerifyOutcome v = sd::verify_sampling(tree, p.data(), p.shape(1), seed, position, &scratch);
        return py::make_tuple(v.accepted, v.next_token, v.bonus);
      },
      py::arg("tokens"), py::arg("parents"), py::arg("target_probs"), py::arg("draft_probs") = py::none(),
      py::arg("seed") = 0, py::arg("position") = 0,
      "Lossless verification of a draft tree: returns (accepted node indexes, next token, bonus). "
      "draft_probs: the distribution each node was drawn from (None: deterministic drafts).");

  m.def(
      "typical_accept_tree",
      [](const std::vector<int32_t>& tokens, const std::vector<int32_t>& parents, py::handle p_obj, float epsilon,
         float delta, bool greedy, uint64_t seed, uint64_t position) {
        sd::AcceptanceConfig c;
        c.typical_epsilon = epsilon;
        c.typical_delta = delta;
        throw_if_error(c.validate());
        sd::TokenTree tree;
        auto p = tree_and_probs(tokens, parents, p_obj, py::none(), &tree);
        const std::vector<int32_t> best = greedy ? row_argmax(p) : std::vector<int32_t>();
        const sd::VerifyOutcome v = sd::verify_typical(tree, p.data(), p.shape(1), epsilon, delta,
                                                       greedy ? best.data() : nullptr, seed, position);
        return py::make_tuple(v.accepted, v.next_token, v.bonus);
      },
      py::arg("tokens"), py::arg("parents"), py::arg("target_probs"), py::arg("epsilon") = 0.09f,
      py::arg("delta") = 0.3f, py::arg("greedy") = false, py::arg("seed") = 0, py::arg("position") = 0,
      "Typical acceptance (lossy, Medusa): a node is accepted when p(x) > min(epsilon, delta exp(-H(p))), "
      "first accepted child in order. Returns (accepted node indexes, next token, bonus); greedy: the next "
      "token is the row's argmax, else drawn from the row.");

  m.def(
      "cascade_verify_chain",
      [](const std::vector<int32_t>& tokens, py::handle p_obj, py::object q_obj, const std::string& rule,
         float alpha, bool greedy, uint64_t seed, uint64_t position) {
        sd::AcceptanceConfig c;
        throw_if_error(sd::parse_cascade_rule(rule, &c.cascade_rule));
        c.cascade_alpha = alpha;
        throw_if_error(c.validate());
        std::vector<int32_t> parents(tokens.size());
        for (size_t i = 0; i < tokens.size(); ++i) parents[i] = static_cast<int32_t>(i) - 1;
        sd::TokenTree tree;
        auto p = tree_and_probs(tokens, parents, p_obj, q_obj, &tree);
        const int64_t V = p.shape(1);
        const std::vector<int32_t> best = greedy ? row_argmax(p) : std::vector<int32_t>();
        std::vector<float> scratch;
        std::vector<uint8_t> deferred;
        const sd::VerifyOutcome v = sd::verify_cascade(tree, p.data(), V, c.cascade_rule, alpha,
                                                       greedy ? best.data() : nullptr, seed, position, &scratch, &deferred);
        std::vector<bool> d(deferred.begin(), deferred.end());
        return py::make_tuple(v.accepted, v.next_token, v.bonus, d);
      },
      py::arg("tokens"), py::arg("target_probs"), py::arg("draft_probs") = py::none(), py::arg("rule") = "chow",
      py::arg("alpha") = 0.1f, py::arg("greedy") = false, py::arg("seed") = 0, py::arg("position") = 0,
      "Speculative-cascade verification of a chain (lossy): returns (accepted node indexes, next token, "
      "bonus, deferral decision per examined position). draft_probs None: one-hot on each draft.");

  m.def(
      "cascade_defer",
      [](py::handle p_obj, py::handle q_obj, const std::string& rule, float alpha) {
        sd::AcceptanceConfig c;
        throw_if_error(sd::parse_cascade_rule(rule, &c.cascade_rule));
        c.cascade_alpha = alpha;
        throw_if_error(c.validate());
        auto p = f32(p_obj, "p", 1);
        auto q = f32(q_obj, "q", 1);
        expect_dim(q, 0, p.shape(0), "q", "len(p)");
        return sd::cascade_defer(c.cascade_rule, alpha, p.data(), q.data(), p.shape(0));
      },
      py::arg("p"), py::arg("q"), py::arg("rule"), py::arg("alpha"),
      "The cascade's deferral decision for one position (True: use the target's p).");

  m.def("entropy", [](py::handle p_obj) {
    auto p = f32(p_obj, "p", 1);
    return sd::entropy(p.data(), p.shape(0));
  }, py::arg("p"), "Entropy in nats (float64) of a distribution.");

  m.def("philox_uniform", &sd::philox_uniform, py::arg("seed"), py::arg("counter"), py::arg("lane") = 0);
  m.def("philox4x32", [](uint64_t seed, uint64_t counter) {
    uint32_t r[4];
    sd::philox4x32_10(seed, counter, r);
    return py::make_tuple(r[0], r[1], r[2], r[3]);
  });
}
