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
//  - kQ4: the same superblocks and lanes with 4-bit weights: 4 loads of 32 bytes, load t
//    holding step t in the low nibbles and step t + 4 in the high nibbles (unsigned q in
//    0..15), then 8 f16 scales and 8 f16 minimums (lane order): w = scale * q + min.
// Otherwise (cols % 32 != 0; never kQ8 or kQ4): plain row-major.
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
constexpr int kQ4Loads = kQ8Steps / 2;                // 32-byte loads, two steps each
constexpr int kQ4ScaleOffset = kQ4Loads * kQ8StepBytes;
constexpr int kQ4SuperBytes = kQ4ScaleOffset + kQ8Lanes * 2 * 2;  // + 8 f16 scales, 8 f16 mins

struct Matrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  bool packed = false;

  int64_t groups() const { return (rows + kPackRows - 1) / kPackRows; }
  bool quantized() const { return is_quantized(dtype); }
  int64_t superblocks() const { return (cols + kQ8Super - 1) / kQ8Super; }
  // Bytes of one 4-row x 32-column float block.
  int64_t block_bytes() const { return kPackRows * kPackCols * dtype_size(dtype); }
  int64_t group_bytes() const {
    if (dtype == DType::kQ8) return superblocks() * kQ8SuperBytes;
    if (dtype == DType::kQ4) return superblocks() * kQ4SuperBytes;
    return cols / kPackCols * block_bytes();
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
  // kQ4: the byte holding element (r, col) (low nibble for steps 0..3, high for 4..7), and the
  // offset of its block's f16 scale (its f16 minimum follows the 8 scales).
  static int64_t q4_offset(int64_t r, int64_t col) {
    return (col / kQ8Super) * kQ4SuperBytes + (col % kQ8Block) / 4 % kQ4Loads * kQ8StepBytes +
           q8_lane(r, col) * 4 + col % 4;
  }
  static int q4_shift(int64_t col) { return (col % kQ8Block) / 4 < kQ4Loads ? 0 : 4; }
  static int64_t q4_scale_offset(int64_t r, int64_t col) {
    return (col / kQ8Super) * kQ4SuperBytes + kQ4ScaleOffset + q8_lane(r, col) * 2;
  }
  static constexpr int64_t kQ4MinOffset = kQ8Lanes * 2;  // from a scale to its minimum
  float q4_weight(int64_t r, int64_t col) const {
    const uint8_t* g = group(r);
    const int q = (g[q4_offset(r, col)] >> q4_shift(col)) & 0xF;
    uint16_t scale, min;
    __builtin_memcpy(&scale, g + q4_scale_offset(r, col), 2);
    __builtin_memcpy(&min, g + q4_scale_offset(r, col) + kQ4MinOffset, 2);
    return f16_to_f32(scale) * static_cast<float>(q) + f16_to_f32(min);
  }
};

}  // namespace sd
