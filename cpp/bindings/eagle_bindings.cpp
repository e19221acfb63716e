// The EAGLE-3 head on numpy arrays, for tests against the torch reference: load a head for a
// target, then run entries of one sequence over a scratch KV cache (EagleSequence), one call
// after another (the KV-cached path) or all at once (Eagle3Head.forward).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "bindings/array_args.h"
#include "bindings/register.h"
#include "bindings/status_to_python.h"
#include "model/eagle_head.h"

namespace py = pybind11;
using sd_py::expect_dim;
using sd_py::f32;
using sd_py::i32;

namespace {


// One sequence of head entries in a private KV cache. `embed` (the target's token embedding
// table, float32 [vocab, H]) is kept alive here; None when the head carries its own.
struct EagleSequence {
  sd::Eagle3Head* head = nullptr;
  py::object embed_ref;
  sd::Matrix table;
  bool has_table = false;
  std::unique_ptr<sd::KVCache> kv;
  std::unique_ptr<sd::SeqPages> pages;
  int64_t capacity = 0;
};

std::unique_ptr<EagleSequence> make_sequence(sd::Eagle3Head& head, const py::object& embed, int64_t capacity,
                                             int32_t page_size) {
  if (capacity <= 0 || page_size <= 0) throw py::value_error("capacity and page_size must be > 0");
  auto s = std::make_unique<EagleSequence>();
  s->head = &head;
  if (!embed.is_none()) {
    auto e = f32(embed, "embed", 2);
    s->embed_ref = e;
    s->table = sd::Matrix{sd::DType::kF32, e.shape(0), e.shape(1), e.data(), false};
    s->has_table = true;
  } else if (!head.has_embeddings()) {
    throw py::value_error("embed: the head carries no embedding table; pass the target's ([vocab, hidden] float32)");
  }
  const int64_t blocks = (capacity + page_size - 1) / page_size + 1;  // + the null block
  s->kv = std::make_unique<sd::KVCache>(head.kv_config(page_size, static_cast<int32_t>(blocks)));
  s->pages = std::make_unique<sd::SeqPages>(page_size);
  s->capacity = capacity;
  return s;
}

// Appends len(token_ids) entries and runs them; returns (logits [T, draft_vocab], hidden [T, H]).
py::tuple sequence_forward(EagleSequence& s, py::handle token_ids, py::object features, py::object hidden,
                           py::object from_hidden, py::object positions, py::object mask) {
  const sd::Eagle3Config& c = s.head->config();
  auto ids = i32(token_ids, "token_ids", 1);
  const int64_t T = ids.shape(0);
  const int64_t start = s.pages->num_tokens();
  if (start + T > s.capacity)
    throw py::value_error("the sequence would hold " + std::to_string(start + T) + " entries, capacity is " +
                          std::to_string(s.capacity));
  sd::EagleBatch b;
  b.token_ids.assign(ids.data(), ids.data() + T);
  py::array_t<float, py::array::c_style> feat, hid;
  if (!features.is_none()) {
    feat = f32(features, "features", 2);
    expect_dim(feat, 0, T, "features", "entries");
    expect_dim(feat, 1, 3 * int64_t{c.target_hidden_size}, "features", "3 x target hidden size");
    b.features = feat.data();
  }
  if (!hidden.is_none()) {
    hid = f32(hidden, "hidden", 2);
    expect_dim(hid, 0, T, "hidden", "entries");
    expect_dim(hid, 1, c.hidden_size, "hidden", "hidden size");
    b.hidden = hid.data();
  }
  if (!from_hidden.is_none()) {
    auto f = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(from_hidden);
    if (!f || f.ndim() != 1 || f.shape(0) != T) throw py::value_error("from_hidden: expected one flag per entry");
    b.from_hidden.assign(f.data(), f.data() + T);
  }
  if (positions.is_none()) {
    for (int64_t t = 0; t < T; ++t) b.positions.push_back(static_cast<int32_t>(start + t));
  } else {
    auto p = i32(positions, "positions", 1);
    expect_dim(p, 0, T, "positions", "entries");
    b.positions.assign(p.data(), p.data() + T);
  }
  if (!mask.is_none()) {
    auto m = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(mask);
    if (!m || m.ndim() != 2 || m.shape(0) != T || m.shape(1) != start + T)
      throw py::value_error("mask: expected shape (" + std::to_string(T) + ", " + std::to_string(start + T) +
                            ") (new entries x all entries)");
    b.custom_mask.assign(m.data(), m.data() + m.size());
    b.mask_indptr = {0, static_cast<int64_t>(m.size())};
  }
  b.qo_indptr = {0, static_cast<int32_t>(T)};
  b.seqs = {s.pages.get()};
  for (int64_t t = 0; t < T; ++t) b.logit_rows.push_back(static_cast<int32_t>(t));

  py::array_t<float> logits({T, static_cast<int64_t>(c.draft_vocab_size)});
  py::array_t<float> out({T, static_cast<int64_t>(c.hidden_size)});
  float* lp = logits.mutable_data();
  float* hp = out.mutable_data();
  throw_if_error(s.pages->append(s.kv->allocator(), T));
  const sd::Matrix* table = s.has_table ? &s.table : nullptr;
  sd::Status st;
  {
    py::gil_scoped_release nogil;
    st = s.head->forward(b, table, *s.kv, lp, hp);
  }
  if (!st.ok()) s.pages->truncate(s.kv->allocator(), start);  // nothing was added
  throw_if_error(st);
  return py::make_tuple(logits, out);
}

}  // namespace

void register_eagle(py::module_& m) {
  py::class_<EagleSequence>(m, "EagleSequence",
                            "Entries of one sequence in a private KV cache of the EAGLE-3 head.")
      .def("forward", &sequence_forward, py::arg("token_ids"), py::arg("features") = py::none(),
           py::arg("hidden") = py::none(), py::arg("from_hidden") = py::none(), py::arg("positions") = py::none(),
           py::arg("mask") = py::none(),
           "Appends and runs len(token_ids) entries (int32). Each entry's h is fc(features[t]) "
           "(float32 [T, 3 x target hidden]) or hidden[t] (float32 [T, H]) where from_hidden[t]; "
           "positions default to the entries' indices; mask: optional [T, entries so far + T] bools "
           "(default causal). Returns (logits [T, draft_vocab], h' [T, H] before the final norm).")
      .def(
          "truncate",
          [](EagleSequence& s, int64_t n) {
            if (n < 0 || n > s.pages->num_tokens()) throw py::value_error("truncate: n out of range");
            s.pages->truncate(s.kv->allocator(), n);
          },
          py::arg("n"), "Keeps the first n entries (rollback).")
      .def_property_readonly("num_tokens", [](const EagleSequence& s) { return s.pages->num_tokens(); });

  py::class_<sd::Eagle3Head>(m, "Eagle3Head", "The EAGLE-3 draft head (LlamaForCausalLMEagle3) in C++.")
      .def_static(
          "load",
          [](const std::string& dir, const sd::ModelConfig& target, const std::string& dtype) {
            const sd::DType dt = sd_py::dtype_from_name(dtype);
            std::unique_ptr<sd::Eagle3Head> h;
            sd::Status st;
            {
              py::gil_scoped_release nogil;
              st = sd::Eagle3Head::load(dir, target, dt, &h);
            }
            throw_if_error(st);
            return h;
          },
          py::arg("dir"), py::arg("target_config"), py::arg("dtype") = "float32",
          "Loads a head directory (config.json + model.safetensors) for a target (ModelConfig).")
      .def("sequence", &make_sequence, py::arg("embed") = py::none(), py::arg("capacity") = 256,
           py::arg("page_size") = 16, py::keep_alive<0, 1>(),
           "A fresh sequence; embed: the target's token embedding table (float32 [vocab, H]).")
      .def(
          "forward",
          [](sd::Eagle3Head& h, py::handle token_ids, py::object features, py::object hidden,
             py::object from_hidden, py::object positions, py::object embed) {
            const int64_t T = i32(token_ids, "token_ids", 1).shape(0);
            auto s = make_sequence(h, embed, T > 0 ? T : 1, 16);
            return sequence_forward(*s, token_ids, features, hidden, from_hidden, positions, py::none());
          },
          py::arg("token_ids"), py::arg("features") = py::none(), py::arg("hidden") = py::none(),
          py::arg("from_hidden") = py::none(), py::arg("positions") = py::none(), py::arg("embed") = py::none(),
          "One causal pass of a whole sequence over a fresh KV cache (see EagleSequence.forward).")
      .def_property_readonly("hidden_size", [](const sd::Eagle3Head& h) { return h.config().hidden_size; })
      .def_property_readonly("target_hidden_size", [](const sd::Eagle3Head& h) { return h.config().target_hidden_size; })
      .def_property_readonly("intermediate_size", [](const sd::Eagle3Head& h) { return h.config().intermediate_size; })
      .def_property_readonly("num_heads", [](const sd::Eagle3Head& h) { return h.config().num_heads; })
      .def_property_readonly("num_kv_heads", [](const sd::Eagle3Head& h) { return h.config().num_kv_heads; })
      .def_property_readonly("head_dim", [](const sd::Eagle3Head& h) { return h.config().head_dim; })
      .def_property_readonly("vocab_size", [](const sd::Eagle3Head& h) { return h.config().vocab_size; })
      .def_property_readonly("draft_vocab_size", [](const sd::Eagle3Head& h) { return h.config().draft_vocab_size; })
      .def_property_readonly("rms_norm_eps", [](const sd::Eagle3Head& h) { return h.config().rms_norm_eps; })
      .def_property_readonly("rope_theta", [](const sd::Eagle3Head& h) { return h.config().rope_theta; })
      .def_property_readonly("aux_layer_ids", [](const sd::Eagle3Head& h) { return h.config().aux_layer_ids; })
      .def_property_readonly("has_embeddings", &sd::Eagle3Head::has_embeddings)
      .def_property_readonly("dtype", [](const sd::Eagle3Head& h) { return std::string(sd::dtype_name(h.dtype())); })
      .def_property_readonly("draft_to_target", [](const sd::Eagle3Head& h) { return h.draft_to_target(); },
                             "Target id of each draft id (d + d2t[d]).");
}
