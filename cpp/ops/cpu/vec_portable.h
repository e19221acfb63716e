// Eight-lane float vector in plain C++: the portable instruction set of the CPU kernels.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace sd::cpu {

struct VecPortable {
  static constexpr int kWidth = 8;
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
  static V load(const int8_t* p) {
    V r;
    for (int i = 0; i < 8; ++i) r.x[i] = static_cast<float>(p[i]);
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
  // Lane partial sums (as floats) of the int8 dot product of 32 elements.
  static V dot32_i8(const int8_t* a, const int8_t* b) {
    V r;
    for (int i = 0; i < 8; ++i) {
      int32_t s = 0;
      for (int j = 0; j < 4; ++j) s += static_cast<int32_t>(a[4 * i + j]) * b[4 * i + j];
      r.x[i] = static_cast<float>(s);
    }
    return r;
  }
  static float hsum(V a) {
    float s = 0.f;
    for (int i = 0; i < 8; ++i) s += a.x[i];
    return s;
  }
};

}  // namespace sd::cpu
