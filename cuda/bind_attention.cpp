// Python entry points of the CUDA attention and GEMM kernels (host arrays in, host arrays out),
// mirroring the CPU ops' signatures (specdec_native.ops.paged_attention / matmul) so tests
// compare directly; plus CUDA-event timers that keep the data on the device (benchmarks).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <string>
#include <vector>

#include "bindings/array_args.h"
#include "bindings/status_to_python.h"
#include "cuda/attention_ops.h"
#include "cuda/bind_register.h"
#include "cuda/cublas_loader.h"
#include "cuda/mask_bits.h"

namespace py = pybind11;

namespace sd_cuda_py {

namespace {

using sd_py::expect_dim;
using sd_py::f32;
using sd_py::i32;

// The checked arrays (kept alive) and the HostAttentionInputs pointing into them.
struct AttentionArgs {
  py::array_t<float, py::array::c_style> q, k, v;
  py::array_t<int32_t, py::array::c_style> qo, kvp, kvi, last;
  py::array_t<uint8_t, py::array::c_style> mask;
  py::array_t<int64_t, py::array::c_style> mask_indptr;
  sd::cuda::HostAttentionInputs in;
};

sd::DType kv_dtype_from_name(const std::string& name) {
  sd::DType t;
  if (!sd::parse_dtype_name(name, &t) || (t != sd::DType::kF32 && t != sd::DType::kBF16 && t != sd::DType::kF16))
    throw py::value_error("kv_dtype must be one of float32, bfloat16, float16; got '" + name + "'");
  return t;
}

void parse_attention(AttentionArgs& a, py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle qo_obj,
                     py::handle kvp_obj, py::handle kvi_obj, py::handle last_obj, py::object mask_obj,
                     py::object mask_indptr_obj, py::object scale_obj, const std::string& kv_dtype,
                     const std::string& io_dtype, int kv_chunk, int pad_plan) {
  a.q = f32(q_obj, "q", 3);        // [total_q, qo_heads, head_dim]
  a.k = f32(k_obj, "k_cache", 4);  // [pages, page_size, kv_heads, head_dim]
  a.v = f32(v_obj, "v_cache", 4);
  a.qo = i32(qo_obj, "qo_indptr", 1);
  a.kvp = i32(kvp_obj, "kv_indptr", 1);
  a.kvi = i32(kvi_obj, "kv_indices", 1);
  a.last = i32(last_obj, "kv_last_page_len", 1);
  for (int ax = 0; ax < 4; ++ax) expect_dim(a.v, ax, a.k.shape(ax), "v_cache", "the k_cache size");
  expect_dim(a.q, 2, a.k.shape(3), "q", "head_dim");
  const py::ssize_t B = a.qo.shape(0) - 1;
  if (B < 0) throw py::value_error("qo_indptr: expected batch + 1 entries");
  expect_dim(a.kvp, 0, B + 1, "kv_indptr", "batch + 1");
  expect_dim(a.last, 0, B, "kv_last_page_len", "batch");
  if (a.qo.data()[B] != a.q.shape(0))
    throw py::value_error("qo_indptr[-1] must equal the number of queries " + std::to_string(a.q.shape(0)));
  if (a.kvp.data()[B] > a.kvi.shape(0) || a.kvp.data()[0] < 0)
    throw py::value_error("kv_indptr must index into kv_indices");
  if (!mask_obj.is_none()) {
    a.mask = sd_py::checked<bool>(mask_obj, "custom_mask", 1, "bool")
                 .attr("view")("uint8")
                 .cast<py::array_t<uint8_t, py::array::c_style>>();
    if (mask_indptr_obj.is_none()) throw py::value_error("custom_mask needs mask_indptr");
    a.mask_indptr = sd_py::checked<int64_t>(mask_indptr_obj, "mask_indptr", 1, "int64");
    expect_dim(a.mask_indptr, 0, B + 1, "mask_indptr", "batch + 1");
    if (a.mask_indptr.data()[B] > a.mask.shape(0) || a.mask_indptr.data()[0] < 0)
      throw py::value_error("mask_indptr must index into custom_mask");
  }
  if (io_dtype != "float32" && io_dtype != "kv")
    throw py::value_error("io_dtype must be 'float32' or 'kv' (q/out in the K/V dtype); got '" + io_dtype + "'");
  if (kv_chunk < 0) throw py::value_error("kv_chunk must be >= 0 (0: automatic)");
  if (pad_plan < 0) throw py::value_error("pad_plan must be >= 0");
  sd::cuda::HostAttentionInputs& in = a.in;
  in.q = a.q.data();
  in.total_q = a.q.shape(0);
  in.num_qo_heads = static_cast<int32_t>(a.q.shape(1));
  in.k_cache = a.k.data();
  in.v_cache = a.v.data();
  in.num_pages = static_cast<int32_t>(a.k.shape(0));
  in.page_size = static_cast<int32_t>(a.k.shape(1));
  in.num_kv_heads = static_cast<int32_t>(a.k.shape(2));
  in.head_dim = static_cast<int32_t>(a.k.shape(3));
  in.qo_indptr = a.qo.data();
  in.kv_indptr = a.kvp.data();
  in.kv_indices = a.kvi.data();
  in.num_kv_indices = a.kvi.shape(0);
  in.kv_last_page_len = a.last.data();
  in.batch = static_cast<int32_t>(B);
  if (!mask_obj.is_none()) {
    in.custom_mask = a.mask.data();
    in.mask_len = a.mask.shape(0);
    in.mask_indptr = a.mask_indptr.data();
  }
  in.sm_scale = scale_obj.is_none() ? 1.0f / std::sqrt(static_cast<float>(in.head_dim > 0 ? in.head_dim : 1))
                                    : scale_obj.cast<float>();
  in.kv_dtype = kv_dtype_from_name(kv_dtype);
  in.io_in_kv_dtype = io_dtype == "kv";
  in.kv_chunk = kv_chunk;
  in.pad_plan = pad_plan;
}

#define SD_ATTENTION_ARGS                                                                                 \
  py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("qo_indptr"), py::arg("kv_indptr"),       \
      py::arg("kv_indices"), py::arg("kv_last_page_len"), py::arg("custom_mask") = py::none(),            \
      py::arg("mask_indptr") = py::none(), py::arg("sm_scale") = py::none(), py::arg("kv_dtype") = "float32", \
      py::arg("io_dtype") = "float32", py::arg("kv_chunk") = 0, py::arg("pad_plan") = 0

// Weight [N, K] f32 and the GEMM options shared by gemm / time_gemm.
struct GemmArgs {
  py::array_t<float, py::array::c_style> x, w, bias;
  bool has_bias = false;
  sd::DType dtype = sd::DType::kBF16;
  sd::cuda::GemmBackend backend = sd::cuda::GemmBackend::kAuto;
};

void parse_gemm(GemmArgs& g, py::handle x_obj, py::handle w_obj, py::object bias_obj, const std::string& dtype,
                const std::string& backend) {
  g.x = f32(x_obj, "x", 2);
  g.w = f32(w_obj, "weight", 2);
  expect_dim(g.x, 1, g.w.shape(1), "x", "in_features");
  if (!bias_obj.is_none()) {
    g.bias = f32(bias_obj, "bias", 1);
    expect_dim(g.bias, 0, g.w.shape(0), "bias", "out_features");
    g.has_bias = true;
  }
  g.dtype = sd_py::dtype_from_name(dtype);
  const bool quantized = sd::is_quantized(g.dtype);
  if (g.dtype != sd::DType::kBF16 && g.dtype != sd::DType::kF16 && !quantized)
    throw py::value_error("dtype must be one of bfloat16, float16, int8, int4 for the CUDA gemm; got '" + dtype + "'");
  const int64_t K = g.w.shape(1);
  if (quantized ? K % 32 != 0 : K % 8 != 0)
    throw py::value_error("weight: in_features (" + std::to_string(K) + ") must be a multiple of " +
                          (quantized ? "32 for int8 / int4" : "8"));
  throw_if_error(sd::cuda::parse_gemm_backend(backend, &g.backend));
}

}  // namespace

void register_attention(py::module_& m) {
  m.def(
      "paged_attention",
      [](py::handle q, py::handle k, py::handle v, py::handle qo, py::handle kvp, py::handle kvi, py::handle last,
         py::object mask, py::object mask_indptr, py::object scale, const std::string& kv_dtype,
         const std::string& io_dtype, int kv_chunk, int pad_plan) {
        AttentionArgs a;
        parse_attention(a, q, k, v, qo, kvp, kvi, last, mask, mask_indptr, scale, kv_dtype, io_dtype, kv_chunk, pad_plan);
        py::array_t<float> out({a.q.shape(0), a.q.shape(1), a.q.shape(2)});
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::paged_attention_host(a.in, out.mutable_data());
        }
        throw_if_error(st);
        return out;
      },
      SD_ATTENTION_ARGS,
      "Paged attention on the GPU, same arguments and result as specdec_native.ops.paged_attention "
      "(f32 arrays; custom_mask: the CPU op's bool mask, mask_indptr in entries; it is bit-packed "
      "for the kernel). kv_dtype: the caches are rounded to float32/bfloat16/float16 on the device; "
      "io_dtype: 'float32' or 'kv' (q/out in the K/V dtype on the device); kv_chunk: force the "
      "split-KV chunk (keys; 0 = automatic); pad_plan: append that many empty work items, merge "
      "entries and partial slots to the plan, as a CUDA graph's step does (the result must not change).");

  m.def(
      "time_paged_attention",
      [](py::handle q, py::handle k, py::handle v, py::handle qo, py::handle kvp, py::handle kvi, py::handle last,
         py::object mask, py::object mask_indptr, py::object scale, const std::string& kv_dtype,
         const std::string& io_dtype, int kv_chunk, int pad_plan, int iters) {
        AttentionArgs a;
        parse_attention(a, q, k, v, qo, kvp, kvi, last, mask, mask_indptr, scale, kv_dtype, io_dtype, kv_chunk, pad_plan);
        if (iters < 1) throw py::value_error("iters must be >= 1");
        sd::cuda::AttentionTiming t;
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::time_paged_attention_host(a.in, iters, &t);
        }
        throw_if_error(st);
        py::dict d;
        d["ms"] = t.ms;
        d["blocks"] = t.blocks;
        d["items"] = t.items;
        d["kv_chunk"] = t.kv_chunk;
        d["split_tokens"] = t.split_tokens;
        return d;
      },
      SD_ATTENTION_ARGS, py::arg("iters") = 20,
      "Uploads once, then times `iters` paged-attention calls (attention + split-KV merge) with CUDA "
      "events; returns {'ms': per call, 'blocks', 'items', 'kv_chunk', 'split_tokens'}.");

  m.def(
      "pack_mask_bits",
      [](py::handle mask_obj, py::handle indptr_obj) {
        auto mask = sd_py::checked<bool>(mask_obj, "custom_mask", 1, "bool")
                        .attr("view")("uint8")
                        .cast<py::array_t<uint8_t, py::array::c_style>>();
        auto indptr = sd_py::checked<int64_t>(indptr_obj, "mask_indptr", 1, "int64");
        const py::ssize_t B = indptr.shape(0) - 1;
        if (B < 0) throw py::value_error("mask_indptr: expected batch + 1 entries");
        const int64_t* ip = indptr.data();
        if (ip[0] < 0 || ip[B] > mask.shape(0)) throw py::value_error("mask_indptr must index into custom_mask");
        for (py::ssize_t b = 0; b < B; ++b)
          if (ip[b + 1] < ip[b]) throw py::value_error("mask_indptr must be non-decreasing");
        std::vector<uint8_t> packed;
        std::vector<int64_t> packed_indptr;
        sd::cuda::pack_mask_bits(mask.data(), ip, static_cast<int32_t>(B), &packed, &packed_indptr);
        py::array_t<uint8_t> p(static_cast<py::ssize_t>(packed.size()));
        std::copy(packed.begin(), packed.end(), p.mutable_data());
        py::array_t<int64_t> pi(static_cast<py::ssize_t>(packed_indptr.size()));
        std::copy(packed_indptr.begin(), packed_indptr.end(), pi.mutable_data());
        return py::make_tuple(p, pi);
      },
      py::arg("custom_mask"), py::arg("mask_indptr"),
      "Bit-packs the CPU op's bool mask per request (FlashInfer segment_packbits, bitorder='little'): "
      "returns (packed uint8, packed_indptr int64 in BYTES).");

  m.def(
      "gemm",
      [](py::handle x, py::handle w, py::object bias, const std::string& dtype, const std::string& backend) {
        GemmArgs g;
        parse_gemm(g, x, w, bias, dtype, backend);
        py::array_t<float> y({g.x.shape(0), g.w.shape(0)});
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::gemm_host(g.x.data(), g.x.shape(0), g.w.data(), g.w.shape(0), g.w.shape(1),
                                   g.has_bias ? g.bias.data() : nullptr, g.dtype, g.backend, 0, y.mutable_data(),
                                   nullptr);
        }
        throw_if_error(st);
        return y;
      },
      py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("dtype") = "bfloat16",
      py::arg("backend") = "auto",
      "y = x @ weight.T + bias on the GPU: weight f32 [out, in] stored on the device as dtype "
      "(bfloat16, float16, int8 with one f32 scale per 32 columns, or int4 with a scale and min per 32 "
      "columns: see quantize_int8 / quantize_int4). backend: "
      "'gemv' (f32 x, any M, made for M <= 16), 'cublas' (x rounded to dtype, tensor cores), 'auto' "
      "(gemv for M <= 16 or int8 / int4, else cublas when libcublas is found).");

  m.def(
      "time_gemm",
      [](py::handle x, py::handle w, py::object bias, const std::string& dtype, const std::string& backend,
         int iters) {
        GemmArgs g;
        parse_gemm(g, x, w, bias, dtype, backend);
        if (iters < 1) throw py::value_error("iters must be >= 1");
        std::vector<float> y(static_cast<size_t>(g.x.shape(0)) * g.w.shape(0));
        sd::cuda::GemmTiming t;
        sd::Status st;
        {
          py::gil_scoped_release nogil;
          st = sd::cuda::gemm_host(g.x.data(), g.x.shape(0), g.w.data(), g.w.shape(0), g.w.shape(1),
                                   g.has_bias ? g.bias.data() : nullptr, g.dtype, g.backend, iters, y.data(), &t);
        }
        throw_if_error(st);
        py::dict d;
        d["ms"] = t.ms;
        d["backend"] = t.backend;
        return d;
      },
      py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::arg("dtype") = "bfloat16",
      py::arg("backend") = "auto", py::arg("iters") = 20,
      "Times `iters` gemm calls on device-resident data (CUDA events): {'ms': per call, 'backend'}.");

  m.def(
      "quantize_int8",
      [](py::handle w_obj) {
        auto w = f32(w_obj, "weight", 2);
        const int64_t N = w.shape(0), K = w.shape(1);
        if (K % 32 != 0) throw py::value_error("weight: in_features (" + std::to_string(K) + ") must be a multiple of 32");
        py::array_t<int8_t> q({static_cast<py::ssize_t>(N), static_cast<py::ssize_t>(K)});
        py::array_t<float> s({static_cast<py::ssize_t>(N), static_cast<py::ssize_t>(K / 32)});
        sd::cuda::quantize_q8_rows(w.data(), N, K, q.mutable_data(), s.mutable_data());
        return py::make_tuple(q, s);
      },
      py::arg("weight"),
      "The device int8 layout of a weight [N, K]: (q int8 [N, K], scales f32 [N, K/32]), w ~ scale * q.");

  m.def(
      "quantize_int4",
      [](py::handle w_obj) {
        auto w = f32(w_obj, "weight", 2);
        const int64_t N = w.shape(0), K = w.shape(1);
        if (K % 32 != 0) throw py::value_error("weight: in_features (" + std::to_string(K) + ") must be a multiple of 32");
        py::array_t<uint8_t> q({static_cast<py::ssize_t>(N), static_cast<py::ssize_t>(K / 2)});
        py::array_t<float> sm({static_cast<py::ssize_t>(N), static_cast<py::ssize_t>(K / 32), static_cast<py::ssize_t>(2)});
        sd::cuda::quantize_q4_rows(w.data(), N, K, q.mutable_data(), sm.mutable_data());
        return py::make_tuple(q, sm);
      },
      py::arg("weight"),
      "The device int4 layout of a weight [N, K]: (q uint8 [N, K/2], 16 bytes per 32 columns, byte j holding "
      "column j in its low nibble and j + 16 in its high one; (scale, min) f32 [N, K/32, 2]), w ~ scale * q + min.");

  m.def(
      "set_cublas_search_dirs", [](const std::vector<std::string>& dirs) { sd::cuda::set_cublas_search_dirs(dirs); },
      py::arg("dirs"),
      "Directories searched first for libcublas (before SPECDEC_CUBLAS_DIR and the default path); "
      "effective only before the library is first loaded.");

  m.def(
      "cublas_library",
      []() {
        std::string path;
        throw_if_error(sd::cuda::cublas_load(&path));
        return path;
      },
      "Loads libcublas (once) and returns its path; RuntimeError when it is not found.");
}

}  // namespace sd_cuda_py
