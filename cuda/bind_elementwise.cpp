// Python entry points of the element-wise CUDA kernels (host arrays in, host arrays out).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "bindings/array_args.h"
#include "bindings/status_to_python.h"
#include "cuda/bind_register.h"
#include "cuda/cuda_ops.h"

namespace py = pybind11;

namespace sd_cuda_py {

void register_elementwise(py::module_& m) {
  m.def(
      "rmsnorm",
      [](py::handle x_obj, py::handle w_obj, float eps) {
        auto x = sd_py::f32(x_obj, "x", 2);
        auto w = sd_py::f32(w_obj, "weight", 1);
        sd_py::expect_dim(w, 0, x.shape(1), "weight", "hidden size");
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
}

}  // namespace sd_cuda_py
