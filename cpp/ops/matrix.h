// A weight matrix as the kernels see it: [rows, cols] (a Hugging Face Linear weight is
// [out_features, in_features]) in one of the DType encodings. Ownership stays with the caller.
//
// Packed layout (every matrix whose cols is a multiple of 32): rows in groups of kPackRows = 4
// (the last group zero-padded), so a matmul tile (4 rows) reads one contiguous stream, which
// the hardware prefetcher follows at full speed (row-major rows would be 4 short streams).
//  - Float dtypes: each group is stored block after block of 32 columns, each block the 4
//    rows' 32 elements row after row.
//  - kQ8: each group is stored superblock after superblock of 64 columns (the last one
//    zero-padded when cols % 64 == 32): 8 steps of 32 bytes, then 8 f32 scales. Lane
//    l = 2 * row + block (block = which 32 columns of the 64) owns 4 bytes of every step: step
//    s holds columns 4s .. 4s + 3 of that block, stored as unsigned w + 128. Eight lanes are
//    one 256-bit register, so 8 integer dot-product steps (vpdpbusd) complete 8 whole Q8
//    blocks, and the 8 scales (same lane order) are applied once per superblock.
// Otherwise (cols % 32 != 0; never kQ8): plain row-major.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace sd {

constexpr int kPackRows = 4;
constexpr int kPackCols = 32;
static_assert(kPackCols == kQ8Block, "a packed float block spans one Q8 block");
constexpr int kQ8Super = 2 * kQ8Block;                // columns of a kQ8 superblock
constexpr int kQ8Lanes = 8;                           // (row, block) lanes of a superblock
constexpr int kQ8Steps = kQ8Block / 4;                // 4-column steps per block
constexpr int kQ8StepBytes = kQ8Lanes * 4;            // one step: 4 bytes per lane
constexpr int kQ8SuperBytes = kQ8Steps * kQ8StepBytes + kQ8Lanes * 4;  // + the 8 scales

struct Matrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  bool packed = false;

  int64_t groups() const { return (rows + kPackRows - 1) / kPackRows; }
  int64_t q8_superblocks() const { return (cols + kQ8Super - 1) / kQ8Super; }
  // Bytes of one 4-row x 32-column float block.
  int64_t block_bytes() const { return kPackRows * kPackCols * dtype_size(dtype); }
  int64_t group_bytes() const {
    return dtype == DType::kQ8 ? q8_superblocks() * kQ8SuperBytes : cols / kPackCols * block_bytes();
  }
  int64_t nbytes() const { return packed ? groups() * group_bytes() : rows * cols * dtype_size(dtype); }
  const uint8_t* group(int64_t r) const {
    return static_cast<const uint8_t*>(data) + (r / kPackRows) * group_bytes();
  }

  // Float dtypes: byte offset of element (r, col) inside its group.
  int64_t float_offset(int64_t r, int64_t col) const {
    return (col / kPackCols) * block_bytes() + ((r % kPackRows) * kPackCols + col % kPackCols) * dtype_size(dtype);
  }
  // kQ8: byte offsets of element (r, col), and of the scale of its block, inside its group.
  static int64_t q8_lane(int64_t r, int64_t col) { return (r % kPackRows) * 2 + (col % kQ8Super) / kQ8Block; }
  static int64_t q8_offset(int64_t r, int64_t col) {
    return (col / kQ8Super) * kQ8SuperBytes + (col % kQ8Block) / 4 * kQ8StepBytes + q8_lane(r, col) * 4 + col % 4;
  }
  static int64_t q8_scale_offset(int64_t r, int64_t col) {
    return (col / kQ8Super) * kQ8SuperBytes + kQ8Steps * kQ8StepBytes + q8_lane(r, col) * 4;
  }
  int8_t q8_value(int64_t r, int64_t col) const {
    return static_cast<int8_t>(group(r)[q8_offset(r, col)] ^ 0x80);
  }
  float q8_scale(int64_t r, int64_t col) const {
    float s;
    __builtin_memcpy(&s, group(r) + q8_scale_offset(r, col), 4);
    return s;
  }
};

}  // namespace sd
