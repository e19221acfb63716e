// Host entry points of the CUDA kernels (host C++ only: included by the pybind11 module).
#pragma once
#include <cstdint>

#include "core/status.h"

namespace sd::cuda {

int device_count();
// Copies x [M, D] and w [D] to the device, runs RMSNorm, copies y back.
Status rmsnorm_host(const float* x, const float* w, float eps, int64_t M, int64_t D, float* y);

}  // namespace sd::cuda
