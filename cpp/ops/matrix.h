// A weight matrix as the kernels see it: [rows, cols] (a Hugging Face Linear weight is
// [out_features, in_features]) in one of the DType encodings. Ownership stays with the caller.
//
// Packed layout (every matrix whose cols is a multiple of 32): rows in groups of kPackRows = 4
// (the last group zero-padded), each group stored block after block of 32 columns: the 4 rows'
// 32 elements (row after row), then, for kQ8, the 4 rows' f32 block scales. A matmul tile (4
// rows) then reads one contiguous stream, which the hardware prefetcher follows at full speed;
// row-major rows would be 4 (8 with scales) short interleaved streams.
// Otherwise (cols % 32 != 0; never kQ8): plain row-major.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace sd {

constexpr int kPackRows = 4;
constexpr int kPackCols = 32;
static_assert(kPackCols == kQ8Block, "a packed block holds one Q8 block per row");

struct Matrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  bool packed = false;

  int64_t groups() const { return (rows + kPackRows - 1) / kPackRows; }
  // Bytes of one 4-row x 32-column block (with its scales for kQ8).
  int64_t block_bytes() const {
    return kPackRows * kPackCols * dtype_size(dtype) + (dtype == DType::kQ8 ? kPackRows * 4 : 0);
  }
  int64_t group_bytes() const { return cols / kPackCols * block_bytes(); }
  int64_t nbytes() const { return packed ? groups() * group_bytes() : rows * cols * dtype_size(dtype); }
  // Where row r's elements of column block b start (packed), and its kQ8 scale.
  const uint8_t* block(int64_t r, int64_t b) const {
    return static_cast<const uint8_t*>(data) + (r / kPackRows) * group_bytes() + b * block_bytes() +
           (r % kPackRows) * kPackCols * dtype_size(dtype);
  }
  float q8_scale(int64_t r, int64_t b) const {
    const uint8_t* blk = static_cast<const uint8_t*>(data) + (r / kPackRows) * group_bytes() + b * block_bytes();
    float s;
    __builtin_memcpy(&s, blk + kPackRows * kPackCols + (r % kPackRows) * 4, 4);
    return s;
  }
};

}  // namespace sd
