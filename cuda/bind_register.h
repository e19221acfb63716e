// The _cuda module's registration functions, one per group of kernels (cuda/bind_*.cpp).
#pragma once
#include <pybind11/pybind11.h>

namespace sd_cuda_py {
void register_elementwise(pybind11::module_& m);  // cuda/bind_elementwise.cpp
void register_attention(pybind11::module_& m);    // cuda/bind_attention.cpp
}  // namespace sd_cuda_py
