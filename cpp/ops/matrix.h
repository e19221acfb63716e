// A weight matrix as the kernels see it: row-major [rows, cols] (a Hugging Face Linear weight is
// [out_features, in_features]), one of the DType layouts. Ownership stays with the caller.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace sd {

struct Matrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;     // rows * cols elements of dtype (int8 for kQ8)
  const float* scales = nullptr;  // kQ8 only: rows * cols / 32 scales, row-major

  int64_t nbytes() const {
    int64_t n = rows * cols * dtype_size(dtype);
    if (dtype == DType::kQ8) n += rows * (cols / kQ8Block) * 4;
    return n;
  }
};

}  // namespace sd
