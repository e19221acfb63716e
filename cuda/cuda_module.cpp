// specdec_native._cuda: imported only where a GPU is present (see python/specdec_native/cuda.py).
// Each group of kernels registers its own test/bench entry points (cuda/bind_*.cpp).
#include <pybind11/pybind11.h>

#include "cuda/bind_register.h"
#include "cuda/cuda_ops.h"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "specdec_native CUDA kernels";
  m.def("device_count", &sd::cuda::device_count);
  sd_cuda_py::register_elementwise(m);
  sd_cuda_py::register_attention(m);
}
