// Python face of the engine: configs, Engine construction (weights load without the GIL),
// continuous batching (add_request / abort_request from any thread, step() without the GIL) and
// generate(), which runs requests to completion in C++ with the GIL released, taking it back
// only to call the per-token callback.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <exception>

#include "bindings/register.h"
#include "bindings/status_to_python.h"
#include "engine/engine.h"
#include "model/device_registry.h"
#include "model/shadow_model.h"

namespace py = pybind11;

namespace {

// A Python error raised inside a callback the core called: kept, and rethrown once the core
// has returned.
struct PyErrorSlot {
  std::exception_ptr error;
  void rethrow() {
    if (error) std::rethrow_exception(error);
  }
};

// A load-progress callback for the core: takes the GIL, calls `progress(done, total)`, and keeps
// the first Python error in `slot` (empty when progress is None).
std::function<void(int, int)> progress_callback(const py::object& progress, PyErrorSlot& slot) {
  if (progress.is_none()) return {};
  return [&progress, &slot](int done, int total) {
    py::gil_scoped_acquire gil;
    if (slot.error) return;
    try {
      progress(done, total);
    } catch (...) {
      slot.error = std::current_exception();
    }
  };
}

}  // namespace

void register_engine(py::module_& m) {
  m.def(
      "_register_model_factory",
      [](const std::string& device, const py::capsule& factory) {
        if (factory.name() == nullptr || std::string(factory.name()) != sd::kModelFactoryCapsule)
          throw py::value_error(std::string("expected a capsule named ") + sd::kModelFactoryCapsule);
        sd::register_model_factory(device, reinterpret_cast<sd::ModelFactory>(factory.get_pointer()));
      },
      py::arg("device"), py::arg("factory"),
      "Registers a device extension's model factory (specdec_native.cuda does this for 'cuda').");
  m.def("has_model_factory", &sd::has_model_factory, py::arg("device"));
  m.def(
      "_register_shadow_device", [] { sd::register_model_factory("shadow", &sd::create_shadow_model); },
      "Tests only: device 'shadow' runs the CPU model over a private mirror of the engine's KV pages, "
      "with the engine's cache holding no storage, as for a GPU model.");
  py::class_<sd::RopeScaling>(m, "RopeScaling")
      .def(py::init<>())
      .def_readwrite("type", &sd::RopeScaling::type)
      .def_readwrite("factor", &sd::RopeScaling::factor)
      .def_readwrite("low_freq_factor", &sd::RopeScaling::low_freq_factor)
      .def_readwrite("high_freq_factor", &sd::RopeScaling::high_freq_factor)
      .def_readwrite("original_max_position_embeddings", &sd::RopeScaling::original_max_position_embeddings);

  py::class_<sd::ModelConfig>(m, "ModelConfig")
      .def(py::init<>())
      .def_readwrite("architecture", &sd::ModelConfig::architecture)
      .def_readwrite("vocab_size", &sd::ModelConfig::vocab_size)
      .def_readwrite("hidden_size", &sd::ModelConfig::hidden_size)
      .def_readwrite("intermediate_size", &sd::ModelConfig::intermediate_size)
      .def_readwrite("num_layers", &sd::ModelConfig::num_layers)
      .def_readwrite("num_heads", &sd::ModelConfig::num_heads)
      .def_readwrite("num_kv_heads", &sd::ModelConfig::num_kv_heads)
      .def_readwrite("head_dim", &sd::ModelConfig::head_dim)
      .def_readwrite("rms_norm_eps", &sd::ModelConfig::rms_norm_eps)
      .def_readwrite("rope_theta", &sd::ModelConfig::rope_theta)
      .def_readwrite("rope_scaling", &sd::ModelConfig::rope_scaling)
      .def_readwrite("tie_word_embeddings", &sd::ModelConfig::tie_word_embeddings)
      .def_readwrite("attention_bias", &sd::ModelConfig::attention_bias)
      .def_readwrite("max_position_embeddings", &sd::ModelConfig::max_position_embeddings)
      .def("validate", [](const sd::ModelConfig& c) { throw_if_error(c.validate()); });

  py::class_<sd::EngineOptions>(m, "EngineOptions")
      .def(py::init<>())
      .def_readwrite("device", &sd::EngineOptions::device)
      .def_readwrite("dtype", &sd::EngineOptions::dtype)
      .def_readwrite("page_size", &sd::EngineOptions::page_size)
      .def_readwrite("num_blocks", &sd::EngineOptions::num_blocks)
      .def_readwrite("max_num_seqs", &sd::EngineOptions::max_num_seqs)
      .def_readwrite("max_model_len", &sd::EngineOptions::max_model_len)
      .def_readwrite("prefill_chunk", &sd::EngineOptions::prefill_chunk)
      .def_readwrite("num_threads", &sd::EngineOptions::num_threads)
      .def_readwrite("enable_prefix_caching", &sd::EngineOptions::enable_prefix_caching);

  py::class_<sd::SamplingConfig>(m, "SamplingConfig")
      .def(py::init<>())
      .def_readwrite("temperature", &sd::SamplingConfig::temperature)
      .def_readwrite("top_k", &sd::SamplingConfig::top_k)
      .def_readwrite("top_p", &sd::SamplingConfig::top_p)
      .def_readwrite("min_p", &sd::SamplingConfig::min_p)
      .def_readwrite("seed", &sd::SamplingConfig::seed)
      .def("validate", [](const sd::SamplingConfig& c) { throw_if_error(c.validate()); });

  py::class_<sd::GenerationRequest>(m, "GenerationRequest")
      .def(py::init<>())
      .def_readwrite("prompt", &sd::GenerationRequest::prompt)
      .def_readwrite("sampling", &sd::GenerationRequest::sampling)
      .def_readwrite("max_tokens", &sd::GenerationRequest::max_tokens)
      .def_readwrite("stop_token_ids", &sd::GenerationRequest::stop_token_ids)
      .def_readwrite("ignore_eos", &sd::GenerationRequest::ignore_eos)
      .def_readwrite("hidden_state_layers", &sd::GenerationRequest::hidden_state_layers,
                     "record the residual stream after these layers for every token the target reads "
                     "(GenerationResult.hidden_states); autoregressive engines only");

  py::class_<sd::GenerationResult>(m, "GenerationResult")
      .def_readonly("tokens", &sd::GenerationResult::tokens)
      .def_readonly("finish_reason", &sd::GenerationResult::finish_reason)
      .def_readonly("prompt_tokens", &sd::GenerationResult::prompt_tokens)
      .def_readonly("cached_prompt_tokens", &sd::GenerationResult::cached_prompt_tokens)
      .def_readonly("preemptions", &sd::GenerationResult::preemptions)
      .def_readonly("prefill_seconds", &sd::GenerationResult::prefill_seconds)
      .def_readonly("decode_seconds", &sd::GenerationResult::decode_seconds)
      .def_readonly("first_token_seconds", &sd::GenerationResult::first_token_seconds)
      .def_readonly("total_seconds", &sd::GenerationResult::total_seconds)
      .def_readonly("steps", &sd::GenerationResult::steps)
      .def_readonly("drafted", &sd::GenerationResult::drafted)
      .def_readonly("accepted", &sd::GenerationResult::accepted)
      .def_readonly("draft_seconds", &sd::GenerationResult::draft_seconds)
      .def_readonly("verify_seconds", &sd::GenerationResult::verify_seconds)
      .def_readonly("proposed_by_depth", &sd::GenerationResult::proposed_by_depth)
      .def_readonly("accepted_by_depth", &sd::GenerationResult::accepted_by_depth)
      .def_property_readonly(
          "hidden_states",
          [](const sd::GenerationResult& r) {
            // rows: the prompt, then every generated token but the last; columns: layers x hidden
            const auto rows = static_cast<py::ssize_t>(r.prompt_tokens + static_cast<int64_t>(r.tokens.size()) - 1);
            const py::ssize_t width = rows > 0 ? static_cast<py::ssize_t>(r.hidden_states.size()) / rows : 0;
            py::array_t<float> out({r.hidden_states.empty() ? py::ssize_t{0} : rows, width});
            std::copy(r.hidden_states.begin(), r.hidden_states.end(), out.mutable_data());
            return out;
          },
          "[prompt_tokens + len(tokens) - 1, len(layers) x hidden] float32 (empty without hidden_state_layers)");

  py::class_<sd::RequestUpdate>(m, "RequestUpdate")
      .def_readonly("id", &sd::RequestUpdate::id)
      .def_readonly("new_tokens", &sd::RequestUpdate::new_tokens)
      .def_readonly("finished", &sd::RequestUpdate::finished)
      .def_readonly("result", &sd::RequestUpdate::result);

  py::class_<sd::EngineStats>(m, "EngineStats")
      .def_readonly("running", &sd::EngineStats::running)
      .def_readonly("waiting", &sd::EngineStats::waiting)
      .def_readonly("free_blocks", &sd::EngineStats::free_blocks)
      .def_readonly("cached_blocks", &sd::EngineStats::cached_blocks)
      .def_readonly("total_blocks", &sd::EngineStats::total_blocks)
      .def_readonly("prompt_tokens", &sd::EngineStats::prompt_tokens)
      .def_readonly("cached_prompt_tokens", &sd::EngineStats::cached_prompt_tokens)
      .def_readonly("generation_tokens", &sd::EngineStats::generation_tokens)
      .def_readonly("prefill_tokens", &sd::EngineStats::prefill_tokens)
      .def_readonly("requests_finished", &sd::EngineStats::requests_finished)
      .def_readonly("steps", &sd::EngineStats::steps)
      .def_readonly("drafted", &sd::EngineStats::drafted)
      .def_readonly("accepted", &sd::EngineStats::accepted)
      .def_readonly("preemptions", &sd::EngineStats::preemptions);

  py::class_<sd::DraftShape>(m, "DraftShape")
      .def(py::init<>())
      .def_readwrite("num_tokens", &sd::DraftShape::num_tokens)
      .def_readwrite("tree_choices", &sd::DraftShape::tree_choices)
      .def_readwrite("top_k", &sd::DraftShape::top_k)
      .def_readwrite("max_nodes", &sd::DraftShape::max_nodes)
      .def_readwrite("min_confidence", &sd::DraftShape::min_confidence);
  py::class_<sd::DraftModelOptions, sd::DraftShape>(m, "DraftModelOptions")
      .def(py::init<>())
      .def_readwrite("vocab", &sd::DraftModelOptions::vocab);
  py::class_<sd::EagleOptions, sd::DraftShape>(m, "EagleOptions").def(py::init<>());

  py::class_<sd::SelfDraftOptions>(m, "SelfDraftOptions")
      .def(py::init<>())
      .def_readwrite("num_tokens", &sd::SelfDraftOptions::num_tokens)
      .def_readwrite("layers", &sd::SelfDraftOptions::layers)
      .def_property(
          "sink_tokens", [](const sd::SelfDraftOptions& o) { return o.window.sink_tokens; },
          [](sd::SelfDraftOptions& o, int32_t v) { o.window.sink_tokens = v; })
      .def_property(
          "window_tokens", [](const sd::SelfDraftOptions& o) { return o.window.window_tokens; },
          [](sd::SelfDraftOptions& o, int64_t v) { o.window.window_tokens = v; })
      .def_readwrite("min_confidence", &sd::SelfDraftOptions::min_confidence);

  py::class_<sd::AcceptanceConfig>(m, "AcceptanceConfig")
      .def(py::init<>())
      .def_property(
          "mode", [](const sd::AcceptanceConfig& c) { return std::string(sd::acceptance_mode_name(c.mode)); },
          [](sd::AcceptanceConfig& c, const std::string& v) { throw_if_error(sd::parse_acceptance_mode(v, &c.mode)); })
      .def_readwrite("typical_epsilon", &sd::AcceptanceConfig::typical_epsilon)
      .def_readwrite("typical_delta", &sd::AcceptanceConfig::typical_delta)
      .def_property(
          "cascade_rule", [](const sd::AcceptanceConfig& c) { return std::string(sd::cascade_rule_name(c.cascade_rule)); },
          [](sd::AcceptanceConfig& c, const std::string& v) { throw_if_error(sd::parse_cascade_rule(v, &c.cascade_rule)); })
      .def_readwrite("cascade_alpha", &sd::AcceptanceConfig::cascade_alpha)
      .def("validate", [](const sd::AcceptanceConfig& c) { throw_if_error(c.validate()); });

  py::class_<sd::ChainLengthPolicy::Acceptance>(m, "AcceptanceEstimate",
                                                "A request's running acceptance rate, as the adaptive policy keeps it.")
      .def(py::init<>())
      .def(
          "observe",
          [](sd::ChainLengthPolicy::Acceptance& a, int32_t drafted, int32_t accepted) {
            if (drafted < 0 || accepted < 0 || accepted > drafted)
              throw py::value_error("observe: need 0 <= accepted <= drafted; got accepted " + std::to_string(accepted) +
                                    " of " + std::to_string(drafted));
            a.observe(drafted, accepted);
          },
          py::arg("drafted"), py::arg("accepted"))
      .def_property_readonly("alpha", &sd::ChainLengthPolicy::Acceptance::alpha);

  py::class_<sd::ChainLengthPolicy>(m, "ChainLengthPolicy",
                                    "The adaptive chain-length cost model, for tests and what-if studies.")
      .def(py::init<>())
      .def(
          "calibrate",
          [](sd::ChainLengthPolicy& p, const std::vector<std::pair<int32_t, double>>& points, int32_t k_max) {
            bool has_chain = k_max >= 1;
            for (int32_t n = 1; n <= k_max + 1 && has_chain; ++n)
              has_chain = std::any_of(points.begin(), points.end(), [&](const auto& pt) { return pt.first == n; });
            if (!has_chain) throw py::value_error("calibrate: need k_max >= 1 and points for n = 1 .. k_max + 1");
            for (const auto& pt : points)
              if (pt.second <= 0) throw py::value_error("calibrate: forward times must be > 0");
            p.calibrate(points, k_max);
          },
          py::arg("points"), py::arg("k_max"), "points: (n tokens, forward seconds) pairs.")
      .def("observe_draft", &sd::ChainLengthPolicy::observe_draft, py::arg("drafted"), py::arg("seconds"),
           py::arg("batch") = 1)
      .def("tree_pass_seconds", &sd::ChainLengthPolicy::tree_pass_seconds, py::arg("batch"), py::arg("max_nodes"),
           "[n]: one sequence's share of a pass keeping n tree nodes (drafting + verification).")
      .def(
          "choose",
          [](const sd::ChainLengthPolicy& p, const std::vector<double>& alphas) {
            std::vector<sd::ChainLengthPolicy::Acceptance> acc(alphas.size());
            std::vector<const sd::ChainLengthPolicy::Acceptance*> ptrs;
            for (size_t i = 0; i < alphas.size(); ++i) {
              if (!(alphas[i] >= 0 && alphas[i] <= 1)) throw py::value_error("acceptance rates must be in [0, 1]");
              acc[i].accepted = alphas[i], acc[i].rejected = 1 - alphas[i];
              ptrs.push_back(&acc[i]);
            }
            return p.choose(ptrs);
          },
          py::arg("alphas"), "The chain length for a batch with these acceptance rates (0: no drafting).")
      .def("verify_seconds", &sd::ChainLengthPolicy::verify_seconds, py::arg("n"))
      .def_property_readonly("draft_cost_ratio", &sd::ChainLengthPolicy::draft_cost_ratio);

  m.def(
      "best_tree_size",
      [](const std::vector<float>& confidence, const std::vector<double>& pass_seconds, double confidence_scale,
         int32_t budget) {
        for (size_t i = 1; i < confidence.size(); ++i)
          if (confidence[i] > confidence[i - 1]) throw py::value_error("best_tree_size: confidence must be sorted best first");
        for (double t : pass_seconds)
          if (!(t > 0)) throw py::value_error("best_tree_size: pass times must be > 0");
        if (!(confidence_scale >= 0)) throw py::value_error("best_tree_size: confidence_scale must be >= 0");
        return sd::best_tree_size(confidence, sd::TreeSizing{pass_seconds, confidence_scale}, budget);
      },
      py::arg("confidence"), py::arg("pass_seconds"), py::arg("confidence_scale"), py::arg("budget"),
      "How many nodes an adaptive dynamic tree keeps (spec/tree_drafting.h).");

  py::class_<sd::NgramOptions>(m, "NgramOptions")
      .def(py::init<>())
      .def_readwrite("min_n", &sd::NgramOptions::min_n)
      .def_readwrite("max_n", &sd::NgramOptions::max_n)
      .def_readwrite("num_tokens", &sd::NgramOptions::num_tokens)
      .def_readwrite("max_branches", &sd::NgramOptions::max_branches);

  py::class_<sd::Engine>(m, "Engine")
      .def(py::init([](const sd::ModelConfig& cfg, const std::vector<std::string>& shards,
                       const sd::EngineOptions& opts, const std::vector<int32_t>& eos,
                       py::object progress) {
             PyErrorSlot slot;
             const auto cb = progress_callback(progress, slot);
             std::unique_ptr<sd::Engine> e;
             sd::Status st;
             {
               py::gil_scoped_release nogil;
               st = sd::Engine::create(cfg, shards, opts, eos, cb, &e);
             }
             slot.rethrow();
             throw_if_error(st);
             return e;
           }),
           py::arg("config"), py::arg("shards"), py::arg("options"), py::arg("eos_token_ids"),
           py::arg("progress") = py::none())
      .def(
          "generate",
          [](sd::Engine& e, const std::vector<sd::GenerationRequest>& reqs, py::object on_token) {
            PyErrorSlot slot;
            const bool has_cb = !on_token.is_none();
            // Always called: it also lets Ctrl-C (KeyboardInterrupt) stop a long generation.
            sd::TokenCallback cb = [&](int32_t req, int32_t tok) {
              py::gil_scoped_acquire gil;
              if (slot.error) return sd::TokenAction::kAbort;
              if (PyErr_CheckSignals() != 0) {
                slot.error = std::make_exception_ptr(py::error_already_set());
                return sd::TokenAction::kAbort;
              }
              if (!has_cb) return sd::TokenAction::kContinue;
              try {
                py::object r = on_token(req, tok);
                if (r.is_none()) return sd::TokenAction::kContinue;
                return static_cast<sd::TokenAction>(r.cast<int>());
              } catch (...) {
                slot.error = std::current_exception();
                return sd::TokenAction::kAbort;
              }
            };
            std::vector<sd::GenerationResult> results;
            sd::Status st;
            {
              py::gil_scoped_release nogil;
              st = e.generate(reqs, cb, &results);
            }
            slot.rethrow();
            throw_if_error(st);
            return results;
          },
          py::arg("requests"), py::arg("on_token") = py::none(),
          "Runs requests to completion. on_token(request_index, token_id) may return 0 "
          "(continue), 1 (stop this request) or 2 (abort all).")
      .def(
          "attach_draft_model",
          [](sd::Engine& e, const sd::ModelConfig& cfg, const std::vector<std::string>& shards,
             const std::string& dtype, const sd::DraftModelOptions& opts, py::object progress) {
            PyErrorSlot slot;
            const auto cb = progress_callback(progress, slot);
            sd::Status st;
            {
              py::gil_scoped_release nogil;
              st = e.attach_draft_model(cfg, shards, dtype, opts, cb);
            }
            slot.rethrow();
            throw_if_error(st);
          },
          py::arg("config"), py::arg("shards"), py::arg("dtype"), py::arg("options"),
          py::arg("progress") = py::none())
      .def("attach_ngram", [](sd::Engine& e, const sd::NgramOptions& o) { throw_if_error(e.attach_ngram(o)); },
           py::arg("options"))
      .def(
          "draft_chain",
          [](sd::Engine& e, const std::vector<int32_t>& prompt, int32_t k) {
            if (e.drafter() && !e.drafter()->proposes_chains())
              throw py::value_error("draft_chain: the drafter proposes trees; use draft_tree");
            std::vector<sd::TokenTree> trees;
            sd::Status st;
            {
              py::gil_scoped_release nogil;
              st = e.draft({prompt}, k, &trees);
            }
            throw_if_error(st);
            const sd::TokenTree& tree = trees[0];
            const py::ssize_t V = e.config().vocab_size;
            py::array_t<float> qa({static_cast<py::ssize_t>(tree.q.size()) / V, V});
            std::copy(tree.q.begin(), tree.q.end(), qa.mutable_data());
            return py::make_tuple(tree.token, qa);
          },
          py::arg("prompt"), py::arg("k"),
          "(tokens, q): the drafter's greedy chain after the prompt and the draft's temperature-1 "
          "distribution of each step ([k, vocab]).")
      .def(
          "draft_tree",
          [](sd::Engine& e, const std::vector<int32_t>& prompt, int32_t max_nodes) {
            std::vector<sd::TokenTree> trees;
            sd::Status st;
            {
              py::gil_scoped_release nogil;
              st = e.draft({prompt}, max_nodes, &trees);
            }
            throw_if_error(st);
            return py::make_tuple(trees[0].token, trees[0].parent);
          },
          py::arg("prompt"), py::arg("max_nodes"),
          "(tokens, parents): the drafter's greedy proposal after the prompt, at most max_nodes nodes "
          "(parents[i] = -1 for a child of the root, else an earlier node).")
      .def(
          "draft_trees",
          [](sd::Engine& e, const std::vector<std::vector<int32_t>>& prompts, int32_t max_nodes) {
            std::vector<sd::TokenTree> trees;
            sd::Status st;
            {
              py::gil_scoped_release nogil;
              st = e.draft(prompts, max_nodes, &trees);
            }
            throw_if_error(st);
            py::list out;
            for (const sd::TokenTree& t : trees) out.append(py::make_tuple(t.token, t.parent));
            return out;
          },
          py::arg("prompts"), py::arg("max_nodes"),
          "[(tokens, parents)] per prompt: the drafter's greedy proposals after several prompts, made "
          "in one batched proposal (as a decode step makes them).")
      .def(
          "prompt_hidden_states",
          [](sd::Engine& e, const std::vector<int32_t>& prompt, const std::vector<int32_t>& layers) {
            const py::ssize_t H = e.config().hidden_size;
            py::array_t<float> out({static_cast<py::ssize_t>(prompt.size()), static_cast<py::ssize_t>(layers.size()), H});
            sd::Status st;
            {
              py::gil_scoped_release nogil;
              st = e.prompt_hidden_states(prompt, layers, out.mutable_data());
            }
            throw_if_error(st);
            return out;
          },
          py::arg("prompt"), py::arg("layers"),
          "[len(prompt), len(layers), hidden]: the residual stream after each layer (EAGLE-3 features).")
      .def(
          "attach_eagle_head",
          [](sd::Engine& e, const std::string& dir, const std::string& dtype, const sd::EagleOptions& o) {
            sd::Status st;
            {
              py::gil_scoped_release nogil;
              st = e.attach_eagle_head(dir, dtype, o);
            }
            throw_if_error(st);
          },
          py::arg("head_dir"), py::arg("dtype"), py::arg("options"),
          "Feature-level drafting from an EAGLE-3 head (SpecForge format) trained for this target.")
      .def("attach_self_drafter",
           [](sd::Engine& e, const sd::SelfDraftOptions& o) { throw_if_error(e.attach_self_drafter(o)); },
           py::arg("options"), "Self-speculation: the target drafts with a layer subset or a sparse KV window.")
      .def(
          "add_request",
          [](sd::Engine& e, int64_t id, const sd::GenerationRequest& r) { throw_if_error(e.add_request(id, r)); },
          py::arg("id"), py::arg("request"), "Queues a request; it joins the batch at the next step().")
      .def("abort_request", &sd::Engine::abort_request, py::arg("id"),
           "Ends a request at the next step (reason \"abort\"), freeing its blocks; unknown ids are ignored.")
      .def(
          "step",
          [](sd::Engine& e) {
            std::vector<sd::RequestUpdate> updates;
            sd::Status st;
            {
              py::gil_scoped_release nogil;
              st = e.step(&updates);
            }
            throw_if_error(st);
            return updates;
          },
          "One scheduling iteration without the GIL: a list of RequestUpdate (new tokens, and the "
          "result of each request that finished).")
      .def_property_readonly("has_unfinished", &sd::Engine::has_unfinished)
      .def("stats", &sd::Engine::stats)
      .def_property("adaptive_speculation", &sd::Engine::adaptive_speculation, &sd::Engine::set_adaptive_speculation)
      .def(
          "set_verify_costs",
          [](sd::Engine& e, std::vector<std::pair<int32_t, double>> points) {
            throw_if_error(e.set_verify_costs(std::move(points)));
          },
          py::arg("points"),
          "(n tokens, seconds) target forward times for the adaptive cost model, instead of measuring them.")
      .def(
          "set_acceptance",
          [](sd::Engine& e, const sd::AcceptanceConfig& c) { throw_if_error(e.set_acceptance(c)); },
          py::arg("config"), "How drafts are judged: lossless (default), typical or cascade (lossy).")
      .def_property_readonly("acceptance", [](const sd::Engine& e) { return e.acceptance(); })
      .def("chain_length_cost_model",
           [](const sd::Engine& e) {
             const sd::ChainLengthPolicy& p = e.chain_length_policy();
             py::dict d;
             if (!p.calibrated()) return d;
             py::list v;
             for (int32_t n = 1; n <= p.k_max() + 1; ++n) v.append(p.verify_seconds(n) / p.verify_seconds(1));
             d["verify_ratio"] = v;  // [n - 1]: v(n)
             d["target_step_seconds"] = p.verify_seconds(1);
             d["draft_cost_ratio"] = p.draft_cost_ratio();
             py::dict best;
             for (double a : {0.5, 0.6, 0.7, 0.8, 0.9}) {
               sd::ChainLengthPolicy::Acceptance acc;
               acc.accepted = a * 1000, acc.rejected = (1 - a) * 1000;
               best[py::float_(a)] = p.choose(acc);
             }
             d["best_k_by_alpha"] = best;
             d["tree_pass_seconds"] = p.tree_pass_seconds(1, p.k_max());  // [n]: a tree of n nodes (batch 1)
             return d;
           },
           "The adaptive chain-length policy's calibrated model (empty before the first use).")
      .def("prompt_logits",
           [](sd::Engine& e, const std::vector<int32_t>& prompt) {
             const py::ssize_t V = e.config().vocab_size;
             py::array_t<float> out({static_cast<py::ssize_t>(prompt.size()), V});
             float* dst = out.mutable_data();
             sd::Status st;
             {
               py::gil_scoped_release nogil;
               st = e.prompt_logits(prompt, dst);
             }
             throw_if_error(st);
             return out;
           })
      .def(
          "tree_logits",
          [](sd::Engine& e, const std::vector<int32_t>& prompt, const std::vector<int32_t>& tokens,
             const std::vector<int32_t>& parents) {
            sd::TokenTree tree;
            throw_if_error(sd::TokenTree::from_parents(tokens, parents, &tree));
            const py::ssize_t V = e.config().vocab_size;
            py::array_t<float> out({static_cast<py::ssize_t>(tokens.size() + 1), V});
            float* dst = out.mutable_data();
            sd::Status st;
            {
              py::gil_scoped_release nogil;
              st = e.tree_logits(prompt, tree, dst);
            }
            throw_if_error(st);
            return out;
          },
          py::arg("prompt"), py::arg("tokens"), py::arg("parents"),
          "Logits of the prompt's last token (row 0) and of each node of a token tree hanging off "
          "it (row 1 + i; parents[i] = -1 for a child of that token), from one forward with the tree mask.")
      .def_property_readonly("config", &sd::Engine::config)
      .def_property_readonly("options", &sd::Engine::options)
      .def_property_readonly("dtype", [](const sd::Engine& e) { return sd::dtype_name(e.model().dtype()); })
      .def_property_readonly("weight_bytes_per_token", [](const sd::Engine& e) { return e.model().weight_bytes_per_token(); })
      .def_property_readonly(
          "draft_weight_bytes_per_token",
          [](const sd::Engine& e) -> int64_t { return e.drafter() ? e.drafter()->weight_bytes_per_token() : 0; },
          "Weight bytes one drafted token reads (0 without a draft model).")
      .def_property_readonly("kv_cache_bytes", [](sd::Engine& e) { return e.kv_cache().bytes(); })
      .def_property_readonly("num_cached_blocks", &sd::Engine::num_cached_blocks)
      .def_property_readonly(
          "draft_num_cached_blocks",
          [](const sd::Engine& e) -> int64_t {
            const auto* d = dynamic_cast<const sd::DraftModelDrafter*>(e.drafter());
            return d && d->prefix_cache() ? d->prefix_cache()->num_cached_blocks() : 0;
          },
          "Blocks the draft model's own prefix cache holds (0 without a draft model).")
      .def("reset_prefix_cache", &sd::Engine::reset_prefix_cache, py::call_guard<py::gil_scoped_release>(),
           "Drops every cached prefix page that no running request uses.")
      .def_property_readonly("num_free_blocks", [](sd::Engine& e) { return e.kv_cache().allocator().num_free(); })
      .def_property_readonly("num_blocks", [](sd::Engine& e) { return e.kv_cache().allocator().num_blocks(); });
}
