// Python entry points of the CUDA attention and GEMM kernels (host arrays in, host arrays out).
#include <pybind11/pybind11.h>

#include "cuda/bind_register.h"

namespace py = pybind11;

namespace sd_cuda_py {

void register_attention(py::module_&) {}

}  // namespace sd_cuda_py
