// Eight-lane float vector in plain C++: the portable instruction set of the CPU kernels.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/dtype.h"

namespace sd::cpu {

struct VecPortable {
  static constexpr int kWidth = 8;
  static constexpr int kRegisters = 16;  // as AVX2 (the compiler's vectors are what it makes of them)
  struct V {
    float x[8];
  };
  static V zero() { return set1(0.f); }
  static V set1(float a) {
    V r;
    for (int i = 0; i < 8; ++i) r.x[i] = a;
    return r;
  }
  static V load(const float* p) {
    V r;
    for (int i = 0; i < 8; ++i) r.x[i] = p[i];
    return r;
  }
  static V load(const uint16_t* p, DType t) {  // kBF16 or kF16
    V r;
    for (int i = 0; i < 8; ++i) r.x[i] = t == DType::kBF16 ? bf16_to_f32(p[i]) : f16_to_f32(p[i]);
    return r;
  }
  static void store(float* p, V a) {
    for (int i = 0; i < 8; ++i) p[i] = a.x[i];
  }
  static V fma(V a, V b, V c) {
    for (int i = 0; i < 8; ++i) c.x[i] += a.x[i] * b.x[i];
    return c;
  }
  static V mul(V a, V b) {
    for (int i = 0; i < 8; ++i) a.x[i] *= b.x[i];
    return a;
  }
  static V add(V a, V b) {
    for (int i = 0; i < 8; ++i) a.x[i] += b.x[i];
    return a;
  }
  static V div(V a, V b) {
    for (int i = 0; i < 8; ++i) a.x[i] /= b.x[i];
    return a;
  }
  static V max(V a, V b) {
    for (int i = 0; i < 8; ++i) a.x[i] = b.x[i] > a.x[i] ? b.x[i] : a.x[i];
    return a;
  }
  static V exp(V a) {
    for (int i = 0; i < 8; ++i) a.x[i] = std::exp(a.x[i]);
    return a;
  }
  // [p0, p1] repeated over the 8 lanes.
  static V load2(const float* p) {
    V r;
    for (int i = 0; i < 8; ++i) r.x[i] = p[i % 2];
    return r;
  }

  // int8 matmul steps (see Matrix's kQ8 layout): lane l accumulates the dot product of its 4
  // stored weights (unsigned, w + 128) with 4 activations of block l % 2.
  struct VI {
    int32_t x[8];
  };
  using Q8W = const uint8_t*;
  static VI vi_zero() { return VI{}; }
  static VI vi_add(VI a, VI b) {
    for (int i = 0; i < 8; ++i) a.x[i] += b.x[i];
    return a;
  }
  static VI q8_init(const int32_t*) { return vi_zero(); }  // exact signed products: no offset
  static Q8W q8_load_step(const uint8_t* p) { return p; }
  static VI q8_step(VI acc, Q8W w, const int8_t* x8) {
    for (int l = 0; l < 8; ++l)
      for (int e = 0; e < 4; ++e)
        acc.x[l] += static_cast<int8_t>(w[4 * l + e] ^ 0x80) * static_cast<int32_t>(x8[(l % 2) * 4 + e]);
    return acc;
  }
  // 4-bit steps: the low and high nibbles of 32 stored bytes (see VecAvx2).
  struct U8W {
    uint8_t b[32];
  };
  static void q4_unpack(const uint8_t* p, U8W* lo, U8W* hi) {
    for (int i = 0; i < 32; ++i) {
      lo->b[i] = p[i] & 0x0F;
      hi->b[i] = p[i] >> 4;
    }
  }
  static VI u8_step(VI acc, const U8W& w, const int8_t* x8) {
    for (int l = 0; l < 8; ++l)
      for (int e = 0; e < 4; ++e) acc.x[l] += w.b[4 * l + e] * static_cast<int32_t>(x8[(l % 2) * 4 + e]);
    return acc;
  }
  static VI u8_lanes(VI acc) { return acc; }  // already 32-bit lanes
  // Quantizes 32 activations (Q8_0); returns the scale and the sum of q.
  static float q8_quantize(const float* x, int8_t* q, int32_t* sum) {
    const float scale = quantize_q8_block(x, q);
    *sum = 0;
    for (int i = 0; i < 32; ++i) *sum += q[i];
    return scale;
  }
  static V q8_float(VI a) {
    V r;
    for (int i = 0; i < 8; ++i) r.x[i] = static_cast<float>(a.x[i]);
    return r;
  }
  static float hsum(V a) {
    float s = 0.f;
    for (int i = 0; i < 8; ++i) s += a.x[i];
    return s;
  }
  // Largest lane.
  static float hmax(V a) {
    float m = a.x[0];
    for (int i = 1; i < 8; ++i) m = a.x[i] > m ? a.x[i] : m;
    return m;
  }
  // Lane j = the sum of a[j]'s lanes (eight horizontal sums at once).
  static V hsum8(const V* a) {
    V r;
    for (int j = 0; j < 8; ++j) r.x[j] = hsum(a[j]);
    return r;
  }
};

}  // namespace sd::cpu
