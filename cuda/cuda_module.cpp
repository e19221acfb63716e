// specdec_native._cuda: imported only where a GPU is present (see python/specdec_native/cuda.py).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "bindings/array_args.h"
#include "bindings/status_to_python.h"
#include "cuda/cuda_ops.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "specdec_native CUDA kernels";
  m.def("device_count", &sd::cuda::device_count);
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
