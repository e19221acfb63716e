// specdec_native._cuda: imported only where a GPU is present (see python/specdec_native/cuda.py).
// Each group of kernels registers its own test/bench entry points (cuda/bind_*.cpp); the device
// model is handed to the core as a capsule (model/device_registry.h).
#include <pybind11/pybind11.h>

#include "cuda/bind_register.h"
#include "cuda/cuda_ops.h"
#include "cuda/device_model.h"
#include "model/device_registry.h"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "specdec_native CUDA kernels";
  m.def("device_count", &sd::cuda::device_count);
  m.def(
      "model_factory",
      [] {
        const sd::ModelFactory factory = &sd::cuda::create_device_llama;
        return pybind11::capsule(reinterpret_cast<void*>(factory), sd::kModelFactoryCapsule);
      },
      "The CUDA model's factory, for specdec_native._core._register_model_factory('cuda', ...).");
  sd_cuda_py::register_elementwise(m);
  sd_cuda_py::register_attention(m);
}
