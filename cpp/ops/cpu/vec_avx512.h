// AVX2 vectors with the int8 matmul steps on AVX-512 VNNI (256-bit vpdpbusd: 32 unsigned x
// signed byte products summed into 8 int32 lanes in one instruction), and 512-bit lanes of two
// row groups for the int4 tiles (Wide). Include only from
// *_avx512.cpp files, the only ones compiled with AVX-512 enabled.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "ops/cpu/vec_avx2.h"

namespace sd::cpu {

struct VecAvx512 : VecAvx2 {
  static constexpr int kRegisters = 32;  // zmm0-31
  // The stored weights (w + 128) are multiplied as they are; the accumulator starts at the
  // activations' lane offsets (-128 x the block's activation sum), which cancels the + 128.
  using Q8W = __m256i;
  static VI q8_init(const int32_t* offset2) {
    return _mm256_castpd_si256(_mm256_broadcast_sd(reinterpret_cast<const double*>(offset2)));
  }
  static Q8W q8_load_step(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static VI q8_step(VI acc, Q8W w, const int8_t* x8) { return u8_step(acc, w, x8); }
  static VI u8_step(VI acc, U8W w, const int8_t* x8) { return _mm256_dpbusd_epi32(acc, w, broadcast8(x8)); }
  static VI u8_lanes(VI acc) { return acc; }  // vpdpbusd accumulates in 32 bits already

  // Two row groups in 16 lanes for the int4 and int8 tiles (kernels_impl.h, Narrow): lanes 0-7
  // are group g's, 8-15 group g + 1's, whose packed data starts `stride` elements later. One
  // 512-bit vpdpbusd does a step of both groups against the same 8 activation bytes, so a
  // token's superblock costs half the instructions of two 256-bit tiles (~1.7x the int4 GMAC/s
  // of one core with the weights in L2).
  struct Wide {
    static constexpr int kGroups = 2;
    using V = __m512;
    using VI = __m512i;
    using U8W = __m512i;
    static V zero() { return _mm512_setzero_ps(); }
    static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static void store(float* p, V a) { _mm512_storeu_ps(p, a); }
    static V load2(const float* p) {  // [p0, p1] repeated over the 16 lanes
      double pair;
      __builtin_memcpy(&pair, p, 8);
      return _mm512_castpd_ps(_mm512_set1_pd(pair));
    }
    static V load_f16(const uint16_t* p, int64_t stride) {  // 8 halves of each group
      const __m256i h = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + stride)), 1);
      return _mm512_cvtph_ps(h);
    }
    static VI vi_zero() { return _mm512_setzero_si512(); }
    static VI vi_add(VI a, VI b) { return _mm512_add_epi32(a, b); }
    static V q8_float(VI a) { return _mm512_cvtepi32_ps(a); }
    static void q4_unpack(const uint8_t* p, int64_t stride, U8W* lo, U8W* hi) {
      const __m512i b = pair256(p, p + stride);
      const __m512i mask = _mm512_set1_epi8(0x0F);
      *lo = _mm512_and_si512(b, mask);
      *hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), mask);
    }
    static VI u8_step(VI acc, U8W w, const int8_t* x8) {
      int64_t bits;
      __builtin_memcpy(&bits, x8, 8);
      return _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi64(bits));
    }
    static VI u8_lanes(VI acc) { return acc; }
    // int8 steps, as the 256-bit ones above: weights w + 128, the offsets cancel the 128.
    using Q8W = __m512i;
    static VI q8_init(const int32_t* offset2) {
      double pair;
      __builtin_memcpy(&pair, offset2, 8);
      return _mm512_castpd_si512(_mm512_set1_pd(pair));
    }
    static Q8W q8_load_step(const uint8_t* p, int64_t stride) { return pair256(p, p + stride); }
    static VI q8_step(VI acc, Q8W w, const int8_t* x8) { return u8_step(acc, w, x8); }
    static V load_f32(const float* p, int64_t stride) {
      return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(p))),
                                                 _mm256_castps_pd(_mm256_loadu_ps(p + stride)), 1));
    }

   private:
    static __m512i pair256(const uint8_t* a, const uint8_t* b) {
      return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
                                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
    }
  };
};

}  // namespace sd::cpu
