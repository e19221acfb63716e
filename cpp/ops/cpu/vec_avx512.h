// AVX2 vectors with the int8 matmul steps on AVX-512 VNNI (256-bit vpdpbusd: 32 unsigned x
// signed byte products summed into 8 int32 lanes in one instruction). Include only from
// *_avx512.cpp files, the only ones compiled with AVX-512 enabled.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "ops/cpu/vec_avx2.h"

namespace sd::cpu {

struct VecAvx512 : VecAvx2 {
  // The stored weights (w + 128) are multiplied as they are; the accumulator starts at the
  // activations' lane offsets (-128 x the block's activation sum), which cancels the + 128.
  using Q8W = __m256i;
  static VI q8_init(const int32_t* offset2) {
    return _mm256_castpd_si256(_mm256_broadcast_sd(reinterpret_cast<const double*>(offset2)));
  }
  static Q8W q8_load_step(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static VI q8_step(VI acc, Q8W w, const int8_t* x8) { return u8_step(acc, w, x8); }
  static VI u8_step(VI acc, U8W w, const int8_t* x8) {
    int64_t bits;
    __builtin_memcpy(&bits, x8, 8);
    return _mm256_dpbusd_epi32(acc, w, _mm256_set1_epi64x(bits));
  }
  static VI u8_lanes(VI acc) { return acc; }  // vpdpbusd accumulates in 32 bits already
};

}  // namespace sd::cpu
