// Element types of weights and the scalar conversions every backend shares.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#include "core/host_device.h"

namespace sd {

enum class DType : int32_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
  kQ8 = 3,  // int8 weights, one f32 scale per block of 32 along a row (like GGUF Q8_0)
  kQ4 = 4,  // 4-bit weights, one f16 scale and minimum per block of 32 (like GGUF Q4_1)
};

constexpr int kQ8Block = 32;

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
    case DType::kQ8: return "int8";
    case DType::kQ4: return "int4";
  }
  return "?";
}

// The inverse of dtype_name; false for any other name.
inline bool parse_dtype_name(const std::string& name, DType* out) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8, DType::kQ4})
    if (name == dtype_name(t)) return *out = t, true;
  return false;
}

// The block-quantized weight types (a scale, and for kQ4 a minimum, per 32 weights).
inline bool is_quantized(DType t) { return t == DType::kQ8 || t == DType::kQ4; }

// Bytes per element for plain types; for kQ8 the int8 payload (scales are stored apart); kQ4
// packs two elements per byte, so its size is never taken per element.
inline int64_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kQ8: return 1;
    case DType::kQ4: return 0;
  }
  return 0;
}

SD_HD float bits_to_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
SD_HD uint32_t f32_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

SD_HD float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

// Round to nearest even; NaN stays NaN.
SD_HD uint16_t f32_to_bf16(float f) {
  const uint32_t u = f32_to_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet_nan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);  // no branch: loops vectorize
}

SD_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: man * 2^-24
    float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (man << 13));
  return bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

SD_HD uint16_t f32_to_f16(float f) {
  uint32_t u = f32_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (u >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (u < 0x38800000u) {                                               // subnormal or zero
    float a = bits_to_f32(u);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(a * 16777216.0f + 0.5f));
  }
  uint32_t r = u + 0xfffu + ((u >> 13) & 1u);  // round to nearest even on the 13 dropped bits
  return static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13));
}

// The quantizers below are written as branch-free loops over int keys so that compilers
// vectorize them (loading a model quantizes every weight); each gives exactly the result of
// the plain scalar definition in its comment.

// An int with the order of the floats (for non-NaN values; -0 sorts just below +0).
SD_HD int32_t float_order_key(float f) {
  const int32_t b = static_cast<int32_t>(f32_to_bits(f));
  return b ^ ((b >> 31) & 0x7fffffff);
}
SD_HD float float_from_order_key(int32_t k) {
  return bits_to_f32(static_cast<uint32_t>(k ^ ((k >> 31) & 0x7fffffff)));
}

// max |x[i]| over a block, NaNs left out.
SD_HD float block_abs_max(const float* x) {
  int32_t m = 0;
  for (int i = 0; i < kQ8Block; ++i) {
    const int32_t a = static_cast<int32_t>(f32_to_bits(x[i]) & 0x7fffffffu);  // |x| orders as an int
    m = a > m ? a : m;
  }
  if (m <= 0x7f800000) return bits_to_f32(static_cast<uint32_t>(m));
  float amax = 0.f;  // a NaN is in the block: the scalar definition
  for (int i = 0; i < kQ8Block; ++i) {
    const float a = x[i] < 0.f ? -x[i] : x[i];
    amax = a > amax ? a : amax;
  }
  return amax;
}

// The smallest and largest of a block, as the scan lo = hi = x[0], then each x[i] that
// compares smaller (larger) replaces it, finds them.
SD_HD void block_min_max(const float* x, float* lo_out, float* hi_out) {
  int32_t lo = float_order_key(x[0]), hi = lo;
  for (int i = 1; i < kQ8Block; ++i) {
    const int32_t k = float_order_key(x[i]);
    lo = k < lo ? k : lo;
    hi = k > hi ? k : hi;
  }
  float l = float_from_order_key(lo), h = float_from_order_key(hi);
  if (l == 0.f || h == 0.f || l != l || h != h) {  // a signed-zero tie or a NaN: the scan itself
    l = h = x[0];
    for (int i = 1; i < kQ8Block; ++i) {
      l = x[i] < l ? x[i] : l;
      h = x[i] > h ? x[i] : h;
    }
  }
  *lo_out = l;
  *hi_out = h;
}

// One Q8 block: q[i] = round(x[i] / scale) with scale = max|x| / 127 (GGUF Q8_0), ties away
// from zero like lround but without libm (the AVX2 quantizer rounds the same way); returns the
// scale.
SD_HD float quantize_q8_block(const float* x, int8_t* q) {
  const float scale = block_abs_max(x) / 127.f;
  const float inv = scale > 0.f ? 1.f / scale : 0.f;
  for (int i = 0; i < kQ8Block; ++i) {
    const float v = x[i] * inv;
    const float a = bits_to_f32(f32_to_bits(v) & 0x7fffffffu);
    int r = static_cast<int>(a);  // truncation: exact for |v| <= 127
    r += static_cast<int>(a - static_cast<float>(r) >= 0.5f);
    r = r < 0 ? 0 : r > 127 ? 127 : r;  // r < 0: v was NaN (an inf or NaN weight), q = 0
    q[i] = static_cast<int8_t>(f32_to_bits(v) >> 31 ? -r : r);
  }
  return scale;
}

// One Q4 block: w ~ scale * q + min with q in 0..15, min = the block's minimum and scale =
// (max - min) / 15, both rounded to f16 first; q = round((x - min) / scale) with the rounded
// values (ties up) when that is positive, else 0, at most 15.
SD_HD void quantize_q4_block(const float* x, uint8_t* q, uint16_t* scale_f16, uint16_t* min_f16) {
  float lo, hi;
  block_min_max(x, &lo, &hi);
  *scale_f16 = f32_to_f16((hi - lo) / 15.f);
  *min_f16 = f32_to_f16(lo);
  const float scale = f16_to_f32(*scale_f16), min = f16_to_f32(*min_f16);
  const float inv = scale > 0.f ? 1.f / scale : 0.f;
  for (int i = 0; i < kQ8Block; ++i) {
    const float v = (x[i] - min) * inv;
    int r = static_cast<int>(v + 0.5f) * static_cast<int>(v > 0.f);
    q[i] = static_cast<uint8_t>(r > 15 ? 15 : r);
  }
}

}  // namespace sd
