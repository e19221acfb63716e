// Eight-lane float vector on AVX2 + FMA + F16C. Include only from *_avx2.cpp files, which are
// the only ones compiled with those instructions enabled.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "core/dtype.h"

namespace sd::cpu {

struct VecAvx2 {
  static constexpr int kWidth = 8;
  static constexpr int kRegisters = 16;  // ymm0-15: what a matmul tile's accumulators must fit in
  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float a) { return _mm256_set1_ps(a); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load(const uint16_t* p, DType t) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if (t == DType::kF16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static void store(float* p, V a) { _mm256_storeu_ps(p, a); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  // e^x to ~2 ulp: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two for exactness), a degree-6
  // polynomial for e^r, 2^n added to the exponent bits. Below -87.3 the result is e^-87.3
  // (~1e-38, where e^x leaves the normal floats), above 88.7 it is +inf.
  static V exp(V in) {
    const __m256 x = _mm256_min_ps(_mm256_max_ps(in, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    const __m256 y = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(in, _mm256_set1_ps(88.7f), _CMP_GT_OQ));
  }
  // [p0, p1] repeated over the 8 lanes.
  static V load2(const float* p) {
    return _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(p)));
  }

  // int8 matmul steps (see Matrix's kQ8 layout): lane l accumulates the dot product of its 4
  // stored weights with 4 activations of block l % 2. AVX2 has no unsigned x signed dot
  // product without 16-bit saturation, so the weights are made signed again (w + 128 - 128)
  // and multiplied by the sign trick: |w| x (x with w's sign).
  using VI = __m256i;
  struct Q8W {
    __m256i abs, sign;
  };
  static VI vi_zero() { return _mm256_setzero_si256(); }
  static VI vi_add(VI a, VI b) { return _mm256_add_epi32(a, b); }
  static VI q8_init(const int32_t*) { return vi_zero(); }  // exact: no offset
  static Q8W q8_load_step(const uint8_t* p) {
    const __m256i w = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                                       _mm256_set1_epi8(static_cast<char>(0x80)));
    return Q8W{_mm256_sign_epi8(w, w), w};
  }
  static VI q8_step(VI acc, const Q8W& w, const int8_t* x8) { return q8_step_x(acc, w, broadcast8(x8)); }
  // q8_step with the activation bytes already broadcast.
  static VI q8_step_x(VI acc, const Q8W& w, __m256i x) {
    const __m256i pairs = _mm256_maddubs_epi16(w.abs, _mm256_sign_epi8(x, w.sign));  // |sum of 2| <= 2 * 128 * 127
    return pinned(_mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))));
  }
  // `v`, made to exist in a register at this point. Left free, GCC reassociates a tile's chains
  // of integer adds into trees whose every product is live at once, and on 16 registers spills
  // them all to the stack (a store and a load per multiply, which made the tiles of 3 or more
  // tokens store-bound); an empty asm that takes and gives v is a point no reordering crosses.
  static VI pinned(VI v) {
    __asm__("" : "+x"(v));
    return v;
  }
  static V q8_float(VI a) { return _mm256_cvtepi32_ps(a); }

  // 4-bit steps (Matrix's kQ4 layout): the low and high nibbles of 32 stored bytes are two
  // steps of unsigned weights in 0..15; u8_step multiplies one with 4 activations per lane.
  // A pair of products never exceeds 2 x 15 x 127 = 3810, so maddubs cannot saturate, and the
  // pairs of up to 8 steps (16 products, <= 30480) add exactly in 16 bits: one multiply per
  // step, where widening every step to 32 bits took two. u8_lanes widens a superblock's sums.
  using U8W = __m256i;
  static void q4_unpack(const uint8_t* p, U8W* lo, U8W* hi) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i mask = _mm256_set1_epi8(0x0F);
    *lo = _mm256_and_si256(b, mask);
    *hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
  }
  static VI u8_step(VI acc, U8W w, const int8_t* x8) { return u8_step_x(acc, w, broadcast8(x8)); }
  // u8_step with the activation bytes already broadcast.
  static VI u8_step_x(VI acc, U8W w, __m256i x) { return pinned(_mm256_add_epi16(acc, _mm256_maddubs_epi16(w, x))); }
  static VI u8_lanes(VI acc16) { return _mm256_madd_epi16(acc16, _mm256_set1_epi16(1)); }

  // Quantizes 32 activations (Q8_0) exactly like quantize_q8_block; returns the scale and the
  // sum of q.
  static float q8_quantize(const float* x, int8_t* q, int32_t* sum) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    __m256 v[4], amax = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float scale = _mm_cvtss_f32(m) / 127.f;
    const __m256 inv = _mm256_set1_ps(scale > 0.f ? 1.f / scale : 0.f);
    __m256i n[4], total = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) {
      const __m256 t = _mm256_mul_ps(v[i], inv);
      const __m256 a = _mm256_andnot_ps(sign, t);
      __m256 r = _mm256_round_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
      r = _mm256_add_ps(r, _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(a, r), _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                         _mm256_set1_ps(1.f)));
      r = _mm256_min_ps(r, _mm256_set1_ps(127.f));
      n[i] = _mm256_sign_epi32(_mm256_cvttps_epi32(r), _mm256_castps_si256(t));
      total = _mm256_add_epi32(total, n[i]);
    }
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                        _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    *sum = _mm_cvtsi128_si32(s4);
    return scale;
  }
  // Two row groups side by side for the quantized tiles (kernels_impl.h, Narrow), as two 256-bit
  // halves: lanes a are group g's, b group g + 1's, whose packed data starts `stride` elements
  // later. A token's activation bytes are broadcast once per step for both groups, and the
  // tile's activation scales and pointers serve twice the rows.
  struct Wide {
    static constexpr int kGroups = 2;
    struct V {
      __m256 a, b;
    };
    struct VI {
      __m256i a, b;
    };
    using U8W = VI;
    static V zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
    static V fma(V x, V y, V z) { return {_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)}; }
    static V mul(V x, V y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
    static void store(float* p, V x) {
      _mm256_storeu_ps(p, x.a);
      _mm256_storeu_ps(p + 8, x.b);
    }
    static V load2(const float* p) {
      const __m256 v = VecAvx2::load2(p);
      return {v, v};
    }
    static V load_f16(const uint16_t* p, int64_t stride) {
      return {VecAvx2::load(p, DType::kF16), VecAvx2::load(p + stride, DType::kF16)};
    }
    static V load_f32(const float* p, int64_t stride) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + stride)}; }
    static VI vi_zero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
    static VI vi_add(VI x, VI y) { return {_mm256_add_epi32(x.a, y.a), _mm256_add_epi32(x.b, y.b)}; }
    static V q8_float(VI x) { return {_mm256_cvtepi32_ps(x.a), _mm256_cvtepi32_ps(x.b)}; }
    static void q4_unpack(const uint8_t* p, int64_t stride, U8W* lo, U8W* hi) {
      VecAvx2::q4_unpack(p, &lo->a, &hi->a);
      VecAvx2::q4_unpack(p + stride, &lo->b, &hi->b);
    }
    static VI u8_step(VI acc, U8W w, const int8_t* x8) {
      const __m256i x = broadcast8(x8);
      return {VecAvx2::u8_step_x(acc.a, w.a, x), VecAvx2::u8_step_x(acc.b, w.b, x)};
    }
    static VI u8_lanes(VI acc16) { return {VecAvx2::u8_lanes(acc16.a), VecAvx2::u8_lanes(acc16.b)}; }
    struct Q8W {
      VecAvx2::Q8W a, b;
    };
    static VI q8_init(const int32_t*) { return vi_zero(); }
    static Q8W q8_load_step(const uint8_t* p, int64_t stride) {
      return {VecAvx2::q8_load_step(p), VecAvx2::q8_load_step(p + stride)};
    }
    static VI q8_step(VI acc, const Q8W& w, const int8_t* x8) {
      const __m256i x = broadcast8(x8);
      return {VecAvx2::q8_step_x(acc.a, w.a, x), VecAvx2::q8_step_x(acc.b, w.b, x)};
    }
  };
  // x8[0..7] in each 64-bit lane.
  static __m256i broadcast8(const int8_t* x8) {
    int64_t bits;
    __builtin_memcpy(&bits, x8, 8);
    return _mm256_set1_epi64x(bits);
  }

  static float hsum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // Largest lane.
  static float hmax(V a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // Lane j = the sum of a[j]'s lanes (eight horizontal sums at once).
  static V hsum8(const V* a) {
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // [lo 0-3 | hi 0-3], [.. 4-7]
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
  }
};

}  // namespace sd::cpu
