// CPU kernels written once over an 8-lane vector type VT (VecAvx2 or VecPortable).
// Included by exactly one translation unit per instruction set, which instantiates
// make_kernel_table<VT>(). No standard-library templates are instantiated here, so code
// compiled with AVX2 enabled can never be picked by the linker for the portable path.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "core/parallel.h"
#include "ops/cpu/kernel_table.h"

namespace sd::cpu {

template <class VT>
struct Kernels {
  using V = typename VT::V;

  // ---- matmul ------------------------------------------------------------------------------
  // The output is computed in tiles of one row group (4 weight rows) x a few tokens (3 for float
  // weights, Format::kTokens for quantized ones), so one weight load serves them all; groups are
  // split over threads, tokens blocked by 48 so a group's weights are reused from cache.

  // Calls tile(g, m, cols) for every (row group g, token tile m .. m + cols <= kTokens) of an
  // N x M output.
  // With kGroups > 1 a tile covers that many row groups and g counts tiles of them.
  template <int kTokens = 3, int kGroups = 1, class TileFn>
  static void for_each_tile(int64_t N, int64_t M, TileFn&& tile) {
    constexpr int64_t kTokenBlock = 48;
    const int64_t G = (N + kPackRows * kGroups - 1) / (kPackRows * kGroups);
    parallel_for(G, (4 + kGroups - 1) / kGroups, [&](int64_t g0, int64_t g1) {
      for (int64_t mb = 0; mb < M; mb += kTokenBlock) {
        const int64_t me = M < mb + kTokenBlock ? M : mb + kTokenBlock;
        // Balanced tiles (5 tokens: 3 + 2, not 4 + 1): a narrow tile wastes the weight loads.
        const int64_t n = me - mb, tiles = (n + kTokens - 1) / kTokens;
        for (int64_t g = g0; g < g1; ++g)
          for (int64_t t = 0, m = mb; t < tiles; ++t) {
            const int64_t cols = n / tiles + (t < n % tiles ? 1 : 0);
            tile(g, m, static_cast<int>(cols));
            m += cols;
          }
      }
    });
  }

  // Runs f(std::integral_constant<int, C>) for C = cols in 1..kMax.
  template <int kMax = 4, class F>
  static void with_cols(int cols, F&& f) {
    if constexpr (kMax > 1) {
      if (cols < kMax) return with_cols<kMax - 1>(cols, f);
    }
    f(std::integral_constant<int, kMax>());
  }

  // Stores a 4 x C tile of sums (rows past the matrix end are padding and dropped).
  template <int C>
  static void store_tile(V (&acc)[kPackRows][C], const Matrix& W, int64_t g, int64_t m, float* Y,
                         int64_t ldy, const float* bias) {
    for (int r = 0; r < kPackRows; ++r) {
      const int64_t row = g * kPackRows + r;
      if (row >= W.rows) break;
      for (int c = 0; c < C; ++c) Y[(m + c) * ldy + row] = VT::hsum(acc[r][c]) + (bias ? bias[row] : 0.f);
    }
  }

  // 8 weights (lanes 8j .. 8j + 7) of row r of a packed 32-column block, as f32.
  template <DType T>
  static V load_packed(const uint8_t* blk, int r, int j) {
    if constexpr (T == DType::kF32) {
      return VT::load(reinterpret_cast<const float*>(blk) + r * kPackCols + j * 8);
    } else {
      return VT::load(reinterpret_cast<const uint16_t*>(blk) + r * kPackCols + j * 8, T);
    }
  }

  // Asks for the cache lines of [p, p + bytes) to be brought into L2 (see prefetch_superblock).
  static void prefetch_l2(const uint8_t* p, int64_t bytes) {
    for (int64_t k = 0; k < bytes; k += 64) __builtin_prefetch(p + k, 0, 2);
  }

  template <DType T, int C>
  static void tile_packed(const Matrix& W, int64_t g, const float* X, int64_t ldx, int64_t m,
                          float* Y, int64_t ldy, const float* bias) {
    const int64_t nb = W.cols / kPackCols, bb = W.block_bytes();
    const uint8_t* gp = static_cast<const uint8_t*>(W.data) + g * W.group_bytes();
    V acc[kPackRows][C];
    for (int r = 0; r < kPackRows; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = VT::zero();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = gp + b * bb;
      prefetch_l2(blk + W.group_bytes(), bb);  // the next group's block
      for (int j = 0; j < kPackCols / 8; ++j) {
        V xv[C];
        for (int c = 0; c < C; ++c) xv[c] = VT::load(X + (m + c) * ldx + b * kPackCols + j * 8);
        for (int r = 0; r < kPackRows; ++r) {
          const V wv = load_packed<T>(blk, r, j);
          for (int c = 0; c < C; ++c) acc[r][c] = VT::fma(wv, xv[c], acc[r][c]);
        }
      }
    }
    store_tile<C>(acc, W, g, m, Y, ldy, bias);
  }

  // Independent integer accumulators per token in the quantized tiles of 1-2 tokens: one
  // dependency chain of 8 dot-product steps per superblock would leave them waiting on latency.
  template <int C>
  static constexpr int kChainsFor = C <= 2 ? 2 : 1;

  // The lanes a quantized tile computes in: VT's 8, one row group. An instruction set may also
  // offer VT::Wide, two row groups side by side in 16 lanes (the second group's packed data
  // starts one group's bytes after the first's), where one integer step serves both groups.
  // Each load takes that distance counted in its own elements (bytes, halves, floats).
  struct Narrow : VT {
    static constexpr int kGroups = 1;
    static void q4_unpack(const uint8_t* p, int64_t, typename VT::U8W* lo, typename VT::U8W* hi) {
      VT::q4_unpack(p, lo, hi);
    }
    static V load_f16(const uint16_t* p, int64_t) { return VT::load(p, DType::kF16); }
    static V load_f32(const float* p, int64_t) { return VT::load(p); }
    static typename VT::Q8W q8_load_step(const uint8_t* p, int64_t) { return VT::q8_load_step(p); }
  };
  template <class T, class = void>
  struct WideOr {
    using type = Narrow;
  };
  template <class T>
  struct WideOr<T, std::void_t<typename T::Wide>> {
    using type = typename T::Wide;
  };

  // int8 weights x int8-quantized activations (GGUF Q8_0 x Q8_0): per superblock of 64
  // columns, 8 integer steps give the 8 (row, block) lanes their whole block dot products, then
  // one convert and one fused multiply-add apply the weight x activation block scales. Lanes is
  // Narrow or VT::Wide (see Narrow).
  template <class Lanes>
  struct Q8FormatIn {
    using L = Lanes;
    using LV = typename L::V;
    using LI = typename L::VI;
    static constexpr int kBytes = kQ8SuperBytes;
    // Wide on AVX2: 12 accumulators and one step's 4 weight registers of 16 (6 tokens, 5 and 6 in
    // one tile: 0.80 -> 0.68 ms at 5 tokens against 4-token tiles, 8960 x 1536, Zen 3).
    static constexpr int kTokens = 6;
    template <int C>
    static void dots(const uint8_t* sb, int64_t stride, const int8_t* const (&xs)[C],
                     const int32_t* const (&offsets)[C], LI (&d)[C]) {
      constexpr int kChains = kChainsFor<C>;
      LI chain[kChains][C];
      for (int c = 0; c < C; ++c) {
        chain[0][c] = L::q8_init(offsets[c]);
        for (int h = 1; h < kChains; ++h) chain[h][c] = L::vi_zero();
      }
      for (int s = 0; s < kQ8Steps; ++s) {
        const typename L::Q8W w = L::q8_load_step(sb + s * kQ8StepBytes, stride);
        for (int c = 0; c < C; ++c) chain[s % kChains][c] = L::q8_step(chain[s % kChains][c], w, xs[c] + s * 8);
      }
      for (int c = 0; c < C; ++c) {
        d[c] = chain[0][c];
        for (int h = 1; h < kChains; ++h) d[c] = L::vi_add(d[c], chain[h][c]);
      }
    }
    struct Scales {
      LV scale;
    };
    static Scales scales(const uint8_t* sb, int64_t stride) {
      return {L::load_f32(reinterpret_cast<const float*>(sb + kQ8Steps * kQ8StepBytes), stride / 4)};
    }
    // acc += dot x weight scale x activation scale
    static LV apply(const Scales& w, LV dot, const float* x_scale, const float*, LV acc) {
      return L::fma(dot, L::mul(w.scale, L::load2(x_scale)), acc);
    }
  };
  using Q8Format = Q8FormatIn<Narrow>;
  using Q8WideFormat = Q8FormatIn<typename WideOr<VT>::type>;

  // 4-bit weights x int8-quantized activations (GGUF Q4_1 x Q8_1): the same lanes with unsigned
  // weights (low / high nibbles of one load are steps t and t + 4), then per lane
  // scale x dot + min x (sum of the activations). Each of a superblock's 4 loads is unpacked
  // once and its two steps serve every token of the tile (their accumulators are independent
  // chains side by side). Lanes is Narrow or VT::Wide (see Narrow).
  template <class Lanes>
  struct Q4FormatIn {
    using L = Lanes;
    using LV = typename L::V;
    using LI = typename L::VI;
    static constexpr int kBytes = kQ4SuperBytes;
    // Unpacking is paid once per superblock for all of a tile's tokens; their sums (Wide: two
    // registers each) and one load's 4 weight registers must fit the register file: 8 tokens
    // spilled on AVX2's 16, where 2 tiles of 4 were faster (0.67 -> 0.60 ms at 8, Zen 3).
    static constexpr int kTokens = VT::kRegisters >= 32 ? 8 : 6;
    // One load at a time (steps t and t + 4) for every token: the live registers are the C
    // sums and one load's two steps, not all 8 steps (which spilled on AVX2's 16 registers).
    // With two chains (1-2 tokens) the low-nibble steps feed one and the high-nibble steps the other.
    template <int C>
    static void dots(const uint8_t* sb, int64_t stride, const int8_t* const (&xs)[C], const int32_t* const (&)[C],
                     LI (&d)[C]) {
      constexpr int kChains = kChainsFor<C>;
      LI sums[kChains][C];
      for (int h = 0; h < kChains; ++h)
        for (int c = 0; c < C; ++c) sums[h][c] = L::vi_zero();
      for (int t = 0; t < kQ4Loads; ++t) {
        typename L::U8W lo, hi;
        L::q4_unpack(sb + t * kQ8StepBytes, stride, &lo, &hi);
        for (int c = 0; c < C; ++c) {
          sums[0][c] = L::u8_step(sums[0][c], lo, xs[c] + t * 8);
          sums[kChains - 1][c] = L::u8_step(sums[kChains - 1][c], hi, xs[c] + (t + kQ4Loads) * 8);
        }
      }
      for (int c = 0; c < C; ++c) {
        d[c] = L::u8_lanes(sums[0][c]);  // 8 steps at most: see u8_step
        for (int h = 1; h < kChains; ++h) d[c] = L::vi_add(d[c], L::u8_lanes(sums[h][c]));
      }
    }
    struct Scales {
      LV scale, min;
    };
    static Scales scales(const uint8_t* sb, int64_t stride) {
      const uint16_t* f16 = reinterpret_cast<const uint16_t*>(sb + kQ4ScaleOffset);
      return {L::load_f16(f16, stride / 2), L::load_f16(f16 + kQ8Lanes, stride / 2)};
    }
    static LV apply(const Scales& w, LV dot, const float* x_scale, const float* x_sum, LV acc) {
      acc = L::fma(dot, L::mul(w.scale, L::load2(x_scale)), acc);
      return L::fma(w.min, L::load2(x_sum), acc);
    }
  };
  using Q4Format = Q4FormatIn<Narrow>;
  using Q4WideFormat = Q4FormatIn<typename WideOr<VT>::type>;

  // Asks for the kGroups row groups' superblock at p (groups `stride` bytes apart) to be
  // brought into L2. The tiles prefetch the next tile's weights (the same superblock, the next
  // row groups) while they compute: the hardware prefetcher alone kept fewer lines in flight
  // when a tile computes for several tokens, and the DRAM streams stalled (an 8960 x 1536 int4
  // matmul on this VM, 2 threads: 19 -> 23-27 GB/s at 1 token, 0.55 -> 0.37-0.42 ms at 5).
  template <int kBytes, int kGroups>
  static void prefetch_superblock(const uint8_t* p, int64_t stride) {
    for (int h = 0; h < kGroups; ++h) prefetch_l2(p + h * stride, kBytes);
  }

  // Format::L::kGroups row groups from g x C tokens of a quantized matmul, superblock by superblock.
  template <class Format, int C>
  static void tile_quantized(const Matrix& W, int64_t g, const QuantizedRows& x, int64_t m, float* Y,
                             int64_t ldy, const float* bias) {
    using L = typename Format::L;
    const int64_t P = W.superblocks(), stride = W.group_bytes();
    const uint8_t* gp = W.group(g * kPackRows);
    typename L::V acc[C];
    for (int c = 0; c < C; ++c) acc[c] = L::zero();
    const uint8_t* rec = x.record(0, m);
    const int64_t rec_step = x.rows * QuantizedRows::kRecordBytes;  // to the next superblock
    for (int64_t p = 0; p < P; ++p, rec += rec_step) {
      const uint8_t* sb = gp + p * Format::kBytes;
      prefetch_superblock<Format::kBytes, L::kGroups>(sb + L::kGroups * stride, stride);
      const int8_t* xs[C];
      const int32_t* offsets[C];
      for (int c = 0; c < C; ++c) {
        xs[c] = QuantizedRows::q(rec + c * QuantizedRows::kRecordBytes);
        offsets[c] = QuantizedRows::lane_offset(rec + c * QuantizedRows::kRecordBytes);
      }
      typename L::VI dots[C];
      Format::template dots<C>(sb, stride, xs, offsets, dots);
      const typename Format::Scales w = Format::scales(sb, stride);  // once per superblock, all tokens
      for (int c = 0; c < C; ++c) {
        const uint8_t* r = rec + c * QuantizedRows::kRecordBytes;
        acc[c] = Format::apply(w, L::q8_float(dots[c]), QuantizedRows::scale(r), QuantizedRows::block_sum(r), acc[c]);
      }
    }
    store_lanes<L, C>(acc, W, g, m, Y, ldy, bias);
  }

  // Stores C vectors of 8 (row, block) lane sums per row group: output row r of a group is its
  // lanes 2r + 2r + 1.
  template <class L, int C>
  static void store_lanes(const typename L::V (&acc)[C], const Matrix& W, int64_t g, int64_t m, float* Y,
                          int64_t ldy, const float* bias) {
    for (int c = 0; c < C; ++c) {
      float lanes[kQ8Lanes * L::kGroups];
      L::store(lanes, acc[c]);
      for (int i = 0; i < kPackRows * L::kGroups; ++i) {
        const int64_t row = g * kPackRows + i;
        if (row >= W.rows) break;
        Y[(m + c) * ldy + row] = lanes[2 * i] + lanes[2 * i + 1] + (bias ? bias[row] : 0.f);
      }
    }
  }

  // Quantizes M rows of K activations (K % 32 == 0) into the calling thread's scratch, in the
  // superblock step order the weights use (see QuantizedRows).
  static QuantizedRows quantize_rows_q8(const float* X, int64_t M, int64_t K, int64_t ldx) {
    const int64_t P = (K + kQ8Super - 1) / kQ8Super, nb = K / kQ8Block;
    QuantizedRows x;
    x.rows = M;
    uint8_t* data = reinterpret_cast<uint8_t*>(thread_scratch(M * P * QuantizedRows::kRecordBytes / 4));
    x.data = data;
    parallel_for(M * P * 2, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {  // i = (row * P + p) * 2 + block
        const int64_t r = i / (2 * P), blk = i % (2 * P), p = blk / 2, half = blk % 2;
        uint8_t* rec = const_cast<uint8_t*>(x.record(p, r));
        int8_t qb[kQ8Block] = {};
        int32_t sum = 0;
        const float scale = blk < nb ? VT::q8_quantize(X + r * ldx + blk * kQ8Block, qb, &sum) : 0.f;
        const float block_sum = scale * static_cast<float>(sum);
        const int32_t lane_offset = -128 * sum;
        __builtin_memcpy(rec + QuantizedRows::kScale + 4 * half, &scale, 4);
        __builtin_memcpy(rec + QuantizedRows::kBlockSum + 4 * half, &block_sum, 4);
        __builtin_memcpy(rec + QuantizedRows::kLaneOffset + 4 * half, &lane_offset, 4);
        for (int s = 0; s < kQ8Steps; ++s) __builtin_memcpy(rec + 8 * s + 4 * half, qb + 4 * s, 4);  // step s: 8 s
      }
    });
    return x;
  }

  // Row-major weights (cols not a multiple of 32): one row at a time, any K.
  template <int C>
  static void tile_rowmajor(const Matrix& W, int64_t g, const float* X, int64_t ldx, int64_t m,
                            float* Y, int64_t ldy, const float* bias) {
    const int64_t K = W.cols;
    for (int64_t row = g * kPackRows; row < W.rows && row < (g + 1) * kPackRows; ++row) {
      for (int c = 0; c < C; ++c) {
        float s = 0.f;
        const float* x = X + (m + c) * ldx;
        for (int64_t k = 0; k < K; ++k) s += weight_at(W, row, k) * x[k];
        Y[(m + c) * ldy + row] = s + (bias ? bias[row] : 0.f);
      }
    }
  }

  static float weight_at(const Matrix& W, int64_t row, int64_t k) {
    const int64_t i = row * W.cols + k;
    switch (W.dtype) {
      case DType::kF32: return static_cast<const float*>(W.data)[i];
      case DType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(W.data)[i]);
      case DType::kF16: return f16_to_f32(static_cast<const uint16_t*>(W.data)[i]);
      case DType::kQ8:
      case DType::kQ4: break;  // always packed
    }
    return 0.f;
  }

  template <DType T>
  static void matmul_float(const Matrix& W, const float* X, int64_t M, int64_t ldx, float* Y,
                           int64_t ldy, const float* bias) {
    for_each_tile(W.rows, M, [&](int64_t g, int64_t m, int cols) {
      with_cols(cols, [&](auto c) { tile_packed<T, decltype(c)::value>(W, g, X, ldx, m, Y, ldy, bias); });
    });
  }

  static void matmul(const Matrix& W, const float* X, int64_t M, int64_t ldx, float* Y,
                     int64_t ldy, const float* bias) {
    if (!W.packed) {
      for_each_tile(W.rows, M, [&](int64_t g, int64_t m, int cols) {
        with_cols(cols, [&](auto c) { tile_rowmajor<decltype(c)::value>(W, g, X, ldx, m, Y, ldy, bias); });
      });
      return;
    }
    switch (W.dtype) {
      case DType::kF32: matmul_float<DType::kF32>(W, X, M, ldx, Y, ldy, bias); break;
      case DType::kBF16: matmul_float<DType::kBF16>(W, X, M, ldx, Y, ldy, bias); break;
      case DType::kF16: matmul_float<DType::kF16>(W, X, M, ldx, Y, ldy, bias); break;
      case DType::kQ8:
      case DType::kQ4: {
        const QuantizedRows x = quantize_rows_q8(X, M, W.cols, ldx);
        if (W.dtype == DType::kQ8) matmul_quantized<Q8Format, Q8WideFormat>(W, x, M, Y, ldy, bias);
        else matmul_quantized<Q4Format, Q4WideFormat>(W, x, M, Y, ldy, bias);
        break;
      }
    }
  }

  // Tiles of Wide::kGroups row groups where the instruction set has them (a last group left
  // over runs narrow), else of one.
  template <class Format, class WideFormat = Format>
  static void matmul_quantized(const Matrix& W, const QuantizedRows& x, int64_t M, float* Y, int64_t ldy,
                               const float* bias) {
    constexpr int kGroups = WideFormat::L::kGroups;
    const int64_t groups = W.groups();
    for_each_tile<Format::kTokens, kGroups>(W.rows, M, [&](int64_t t, int64_t m, int cols) {
      const int64_t g = t * kGroups;
      with_cols<Format::kTokens>(cols, [&](auto c) {
        if (g + kGroups <= groups) tile_quantized<WideFormat, decltype(c)::value>(W, g, x, m, Y, ldy, bias);
        else
          for (int64_t h = g; h < groups; ++h) tile_quantized<Format, decltype(c)::value>(W, h, x, m, Y, ldy, bias);
      });
    });
  }

  // ---- small vector helpers -----------------------------------------------------------------
  static float dot(const float* a, const float* b, int64_t n) {
    const int64_t nv = n - n % VT::kWidth;
    V acc = VT::zero();
    for (int64_t i = 0; i < nv; i += VT::kWidth) acc = VT::fma(VT::load(a + i), VT::load(b + i), acc);
    float s = VT::hsum(acc);
    for (int64_t i = nv; i < n; ++i) s += a[i] * b[i];
    return s;
  }
  static void axpy(float alpha, const float* x, float* y, int64_t n) {  // y += alpha * x
    const int64_t nv = n - n % VT::kWidth;
    const V a = VT::set1(alpha);
    for (int64_t i = 0; i < nv; i += VT::kWidth) VT::store(y + i, VT::fma(a, VT::load(x + i), VT::load(y + i)));
    for (int64_t i = nv; i < n; ++i) y[i] += alpha * x[i];
  }

  static void rmsnorm(const float* x, const float* w, float eps, int64_t M, int64_t D, float* y) {
    parallel_for(M, 64, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        const float* xr = x + m * D;
        const float inv = 1.0f / std::sqrt(dot(xr, xr, D) / static_cast<float>(D) + eps);
        float* yr = y + m * D;
        for (int64_t i = 0; i < D; ++i) yr[i] = (xr[i] * inv) * w[i];
      }
    });
  }

  static void rope(float* x, const int32_t* positions, int64_t T, int64_t n_heads,
                   int64_t head_dim, int64_t stride, const float* inv_freq) {
    const int64_t half = head_dim / 2;
    parallel_for(T, 8, [&](int64_t t0, int64_t t1) {
      float* cs = thread_scratch(2 * half);
      for (int64_t t = t0; t < t1; ++t) {
        const float p = static_cast<float>(positions[t]);
        for (int64_t i = 0; i < half; ++i) {
          const float angle = p * inv_freq[i];
          cs[i] = std::cos(angle);
          cs[half + i] = std::sin(angle);
        }
        for (int64_t h = 0; h < n_heads; ++h) {
          float* v = x + t * stride + h * head_dim;
          for (int64_t i = 0; i < half; ++i) {
            const float a = v[i], b = v[i + half];
            v[i] = a * cs[i] - b * cs[half + i];
            v[i + half] = b * cs[i] + a * cs[half + i];
          }
        }
      }
    });
  }

  static void silu_mul(const float* gate_up, int64_t M, int64_t I, float* out) {
    const int64_t chunks = (I + 255) / 256;  // work items: 256 outputs of one row
    parallel_for(M * chunks, 8, [&](int64_t b, int64_t e) {
      for (int64_t w = b; w < e; ++w) {
        const int64_t m = w / chunks, i0 = w % chunks * 256, i1 = i0 + 256 < I ? i0 + 256 : I;
        const float *g = gate_up + m * 2 * I, *u = g + I;
        float* o = out + m * I;
        int64_t i = i0;
        for (; i + VT::kWidth <= i1; i += VT::kWidth) {
          const V gv = VT::load(g + i);
          const V sig = VT::div(gv, VT::add(VT::set1(1.f), VT::exp(VT::mul(gv, VT::set1(-1.f)))));
          VT::store(o + i, VT::mul(sig, VT::load(u + i)));
        }
        for (; i < i1; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      }
    });
  }

  static void embedding(const Matrix& table, const int32_t* ids, int64_t T, float* out) {
    const int64_t D = table.cols;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = ids[t];
      float* o = out + t * D;
      if (!table.packed) {
        for (int64_t i = 0; i < D; ++i) o[i] = weight_at(table, row, i);
      } else if (table.dtype == DType::kQ8) {
        for (int64_t i = 0; i < D; ++i) o[i] = table.q8_value(row, i) * table.q8_scale(row, i);
      } else if (table.dtype == DType::kQ4) {
        for (int64_t i = 0; i < D; ++i) o[i] = table.q4_weight(row, i);
      } else {
        for (int64_t b = 0; b < D; b += kPackCols) {
          const uint8_t* src = table.group(row) + table.float_offset(row, b);
          for (int i = 0; i < kPackCols; ++i) {
            if (table.dtype == DType::kF32) o[b + i] = reinterpret_cast<const float*>(src)[i];
            else if (table.dtype == DType::kBF16) o[b + i] = bf16_to_f32(reinterpret_cast<const uint16_t*>(src)[i]);
            else o[b + i] = f16_to_f32(reinterpret_cast<const uint16_t*>(src)[i]);
          }
        }
      }
    }
  }

  // ---- paged attention ------------------------------------------------------------------------
  // A work item is a block of up to 8 query tokens of one request x one KV head (the block's rows
  // are its queries x the G query heads of the head's group) x a range of key chunks. Keys are
  // visited in tiles of 32 (4 groups of 8, aligned at key 0), each K and V row loaded once per
  // item for all its rows, in three passes over the rows (independent work for the out-of-order
  // core): scores, 8 keys per vector (per-key partial sums over D, then one transposing
  // reduction); an online-softmax (flash attention) step; the value sums. Groups a row cannot
  // see (causal / custom mask, past the KV end) are skipped. The softmax state is per chunk of
  // kAttnChunk keys, and the chunks' (max, sum, output) are merged in key order. A row's
  // arithmetic depends only on its query, its mask and the keys -- not on the batch, the block
  // or whether its chunks ran as separate items (decode splits long KV over threads) -- so
  // every mode gives bitwise the same row.
  static constexpr int64_t kAttnChunk = 256;  // keys; a multiple of 8

  struct AttnItem {
    int32_t b, t0, nq;  // request, first query token, number of queries
    int32_t c0, c1;     // key chunks [c0, c1)
    int64_t part;       // < 0: write the output; else chunk c0's partials go to partial + part
  };

  struct AttnArgs {
    const AttentionPlan* plan;
    const float* q;
    const int32_t* qo_indptr;
    const ops::PagedKV* kv;
    const int32_t* kv_indptr;
    const int32_t* kv_indices;
    const uint8_t* mask;
    const int64_t* mask_indptr;
    int64_t Hq, Hkv, G, D, page_stride;
    float scale;
    float* out;
    float* partial;
  };

  // Scores of one row for the visible 8-key groups of a tile (bit k of vis: keys 8k .. 8k + 7):
  // s[8k + j] = scale x q.k_j + bias (bias -inf where masked).
  static inline void attn_scores(const float* qr, const float* const* kp, int64_t D, float scale,
                                 unsigned vis, const float* bias, float* s) {
    constexpr int64_t W = VT::kWidth;
    const int64_t nv = D - D % W;
    for (int k = 0; vis >> k; ++k) {
      if (!(vis >> k & 1)) continue;
      const float* const* kg = kp + 8 * k;
      V acc[8];
      for (int j = 0; j < 8; ++j) acc[j] = VT::zero();
      for (int64_t c = 0; c < nv; c += W) {
        const V x = VT::load(qr + c);
        for (int j = 0; j < 8; ++j) acc[j] = VT::fma(x, VT::load(kg[j] + c), acc[j]);
      }
      V sv = VT::hsum8(acc);
      if (nv < D) {
        float t[8];
        VT::store(t, sv);
        for (int j = 0; j < 8; ++j) {
          float x = t[j];
          for (int64_t d = nv; d < D; ++d) x += qr[d] * kg[j][d];
          t[j] = x;
        }
        sv = VT::load(t);
      }
      VT::store(s + 8 * k, VT::add(VT::mul(sv, VT::set1(scale)), VT::load(bias + 8 * k)));
    }
  }

  // Online-softmax step of one row over a tile: raises the row's max m (rescaling its lane sums
  // and output o) and turns the scores s into weights p = e^(s - m) x keep, added to lsum.
  static inline void attn_softmax(unsigned vis, const float* keep, int64_t D, float* s, float* m,
                                  float* lsum, float* o) {
    constexpr int64_t W = VT::kWidth;
    const int64_t nv = D - D % W;
    V mx = VT::set1(-INFINITY);
    for (int k = 0; vis >> k; ++k)
      if (vis >> k & 1) mx = VT::max(mx, VT::load(s + 8 * k));
    const float bm = VT::hmax(mx);
    V ls = VT::load(lsum);
    float mr = *m;
    if (bm > mr) {
      if (mr != -INFINITY) {
        const float alpha = std::exp(mr - bm);
        const V av = VT::set1(alpha);
        for (int64_t c = 0; c < nv; c += W) VT::store(o + c, VT::mul(av, VT::load(o + c)));
        for (int64_t d = nv; d < D; ++d) o[d] *= alpha;
        ls = VT::mul(ls, av);
      }
      *m = mr = bm;
    }
    const V neg = VT::set1(-mr);
    for (int k = 0; vis >> k; ++k) {
      if (!(vis >> k & 1)) continue;
      const V p = VT::mul(VT::exp(VT::add(VT::load(s + 8 * k), neg)), VT::load(keep + 8 * k));
      ls = VT::add(ls, p);
      VT::store(s + 8 * k, p);
    }
    VT::store(lsum, ls);
  }

  // o += sum over the visible groups' keys of p_j x v_j.
  static inline void attn_values(unsigned vis, const float* p, const float* const* vp, int64_t D,
                                 float* o) {
    constexpr int64_t W = VT::kWidth;
    const int64_t nv = D - D % W;
    int64_t c = 0;
    for (; c + 8 * W <= nv; c += 8 * W) attn_pv<8>(vis, p, vp, c, o);
    for (; c + 4 * W <= nv; c += 4 * W) attn_pv<4>(vis, p, vp, c, o);
    for (; c < nv; c += W) attn_pv<1>(vis, p, vp, c, o);
    for (int64_t d = nv; d < D; ++d) {
      float x = o[d];
      for (int k = 0; vis >> k; ++k)
        if (vis >> k & 1)
          for (int j = 8 * k; j < 8 * k + 8; ++j) x += p[j] * vp[j][d];
      o[d] = x;
    }
  }

  // o[c .. c + U * W) += sum over the visible groups' keys of p_j x v_j.
  template <int U>
  static inline void attn_pv(unsigned vis, const float* p, const float* const* vp, int64_t c, float* o) {
    constexpr int64_t W = VT::kWidth;
    V acc[U];
    for (int u = 0; u < U; ++u) acc[u] = VT::load(o + c + u * W);
    for (int k = 0; vis >> k; ++k) {
      if (!(vis >> k & 1)) continue;
      for (int j = 8 * k; j < 8 * k + 8; ++j) {
        const V pj = VT::set1(p[j]);
        for (int u = 0; u < U; ++u) acc[u] = VT::fma(pj, VT::load(vp[j] + c + u * W), acc[u]);
      }
    }
    for (int u = 0; u < U; ++u) VT::store(o + c + u * W, acc[u]);
  }

  // Merges a chunk's (m, l, oc) into a row's running (*M, *L, o); an empty chunk (m = -inf)
  // changes nothing and the first non-empty one is copied. Out of line so that merges inside an
  // item and after split items run the same instructions.
  __attribute__((noinline)) static void attn_merge(float* M, float* L, float* o, float m, float l,
                                                   const float* oc, int64_t D) {
    constexpr int64_t W = VT::kWidth;
    const int64_t nv = D - D % W;
    if (m == -INFINITY) return;
    if (*M == -INFINITY) {
      *M = m;
      *L = l;
      for (int64_t d = 0; d < D; ++d) o[d] = oc[d];
      return;
    }
    const float mx = m > *M ? m : *M;
    const float a = std::exp(*M - mx), b = std::exp(m - mx);
    *L = *L * a + l * b;
    *M = mx;
    const V av = VT::set1(a), bv = VT::set1(b);
    for (int64_t c = 0; c < nv; c += W)
      VT::store(o + c, VT::fma(bv, VT::load(oc + c), VT::mul(av, VT::load(o + c))));
    for (int64_t d = nv; d < D; ++d) o[d] = o[d] * a + oc[d] * b;
  }

  // The output row o / L (NaN where the row attended to nothing, as a 0/0 softmax would give).
  __attribute__((noinline)) static void attn_finish(float M, float L, float* o, int64_t D) {
    constexpr int64_t W = VT::kWidth;
    const int64_t nv = D - D % W;
    if (M == -INFINITY) {
      for (int64_t d = 0; d < D; ++d) o[d] = NAN;
      return;
    }
    const float inv = 1.0f / L;
    const V iv = VT::set1(inv);
    for (int64_t c = 0; c < nv; c += W) VT::store(o + c, VT::mul(iv, VT::load(o + c)));
    for (int64_t d = nv; d < D; ++d) o[d] *= inv;
  }

  static void attn_item(const AttnArgs& a, const AttnItem& it, int64_t h) {
    constexpr int64_t kTile = 32;  // keys per step: 4 groups of 8
    const int64_t G = a.G, D = a.D, Hkv = a.Hkv, nq = it.nq, R = nq * G;
    const int64_t kv_len = a.plan->kv_len[it.b];
    const int64_t qo_begin = a.qo_indptr[it.b], qo_len = a.qo_indptr[it.b + 1] - qo_begin;
    const int64_t i0 = it.t0 - qo_begin;          // the block's first query within its request
    const int64_t causal0 = kv_len - qo_len + i0;  // query i0 + qi sees keys < causal0 + qi + 1
    const int64_t kend = a.mask ? kv_len : causal0 + nq;
    const int32_t* pages = a.kv_indices + a.kv_indptr[it.b];
    const int64_t ps = a.kv->page_size;
    const uint8_t* mask = a.mask ? a.mask + a.mask_indptr[it.b] + i0 * kv_len : nullptr;

    float* ws = thread_scratch(R * D + R * 8 + 3 * R + D + R * kTile + 2 * nq * kTile + nq);
    float* o_loc = ws;                  // [R][D] this chunk's unnormalized outputs
    float* lsum = o_loc + R * D;        // [R][8] this chunk's per-lane exp sums
    float* m_loc = lsum + R * 8;        // [R] this chunk's maxima
    float* m_run = m_loc + R;           // [R] running maxima (final items)
    float* l_run = m_run + R;           // [R] running sums
    float* zero = l_run + R;            // [D] the K/V row of keys past the tile end
    float* sp = zero + D;               // [R][kTile] a tile's scores, then weights
    float* bias = sp + R * kTile;       // [nq][kTile] 0 / -inf
    float* keep = bias + nq * kTile;    // [nq][kTile] 1 / 0
    unsigned* vis = reinterpret_cast<unsigned*>(keep + nq * kTile);  // [nq] visible groups
    for (int64_t d = 0; d < D; ++d) zero[d] = 0.f;
    for (int64_t r = 0; r < R; ++r) m_run[r] = -INFINITY, l_run[r] = 0.f;
    const auto row_ptr = [&](int64_t r) {  // r = qi * G + g
      return ((it.t0 + r / G) * a.Hq + h * G + r % G) * D;
    };

    for (int64_t c = it.c0; c < it.c1; ++c) {
      const int64_t kb = c * kAttnChunk, ke = kb + kAttnChunk < kend ? kb + kAttnChunk : kend;
      for (int64_t r = 0; r < R; ++r) m_loc[r] = -INFINITY;
      for (int64_t i = 0; i < R * 8; ++i) lsum[i] = 0.f;
      for (int64_t i = 0; i < R * D; ++i) o_loc[i] = 0.f;
      for (int64_t jt = kb; jt < ke; jt += kTile) {
        const int64_t n = ke - jt < kTile ? ke - jt : kTile;
        const float* kp[kTile];
        const float* vp[kTile];
        int64_t pi = jt / ps, off = jt % ps;
        for (int64_t j = 0; j < kTile; ++j) {
          if (j < n) {
            const int64_t base = pages[pi] * a.page_stride + (off * Hkv + h) * D;
            kp[j] = a.kv->k + base;
            vp[j] = a.kv->v + base;
            if (++off == ps) off = 0, ++pi;
          } else {
            kp[j] = vp[j] = zero;
          }
        }
        bool any = false;
        for (int64_t qi = 0; qi < nq; ++qi) {
          float* bq = bias + qi * kTile;
          float* kq = keep + qi * kTile;
          unsigned v = 0;
          if (!mask) {
            const int64_t lim = causal0 + qi + 1 - jt < n ? causal0 + qi + 1 - jt : n;
            for (int64_t j = 0; j < kTile; ++j) {
              bq[j] = j < lim ? 0.f : -INFINITY;
              kq[j] = j < lim ? 1.f : 0.f;
            }
            for (int64_t k = 0; k * 8 < lim; ++k) v |= 1u << k;
          } else {
            const uint8_t* mr = mask + qi * kv_len + jt;
            for (int64_t j = 0; j < kTile; ++j) {
              const bool on = j < n && mr[j] != 0;
              bq[j] = on ? 0.f : -INFINITY;
              kq[j] = on ? 1.f : 0.f;
              v |= static_cast<unsigned>(on) << (j / 8);
            }
          }
          vis[qi] = v;
          any |= v != 0;
        }
        if (!any) continue;
        // Phases over all rows (independent chains for the out-of-order core): scores, softmax
        // step, value sums.
        for (int64_t r = 0; r < R; ++r)
          if (vis[r / G])
            attn_scores(a.q + row_ptr(r), kp, D, a.scale, vis[r / G], bias + r / G * kTile, sp + r * kTile);
        for (int64_t r = 0; r < R; ++r)
          if (vis[r / G])
            attn_softmax(vis[r / G], keep + r / G * kTile, D, sp + r * kTile, m_loc + r, lsum + r * 8,
                         o_loc + r * D);
        for (int64_t r = 0; r < R; ++r)
          if (vis[r / G]) attn_values(vis[r / G], sp + r * kTile, vp, D, o_loc + r * D);
      }
      for (int64_t r = 0; r < R; ++r) {
        const float l = VT::hsum(VT::load(lsum + r * 8));
        if (it.part < 0) {
          attn_merge(m_run + r, l_run + r, a.out + row_ptr(r), m_loc[r], l, o_loc + r * D, D);
        } else {  // [h][R][D] outputs, then [h][R] maxima and [h][R] sums
          float* p = a.partial + it.part + h * R * (D + 2);
          for (int64_t d = 0; d < D; ++d) p[r * D + d] = o_loc[r * D + d];
          p[R * D + r] = m_loc[r];
          p[R * D + R + r] = l;
        }
      }
    }
    if (it.part < 0)
      for (int64_t r = 0; r < R; ++r) attn_finish(m_run[r], l_run[r], a.out + row_ptr(r), D);
  }

  static void paged_attention(const AttentionPlan& plan, const float* q, const int32_t* qo_indptr,
                              const ops::PagedKV& kv, const int32_t* kv_indptr,
                              const int32_t* kv_indices, const uint8_t* custom_mask,
                              const int64_t* mask_indptr, int32_t num_qo_heads, float sm_scale,
                              float* out) {
    static_assert(VT::kWidth == 8, "paged_attention visits keys in blocks of 8 = one vector");
    const int64_t T = plan.total_q;
    if (T <= 0) return;
    const int64_t D = kv.head_dim, Hkv = kv.num_kv_heads, G = num_qo_heads / kv.num_kv_heads;
    AttnArgs a{&plan, q, qo_indptr, &kv, kv_indptr, kv_indices, custom_mask, mask_indptr,
               num_qo_heads, Hkv, G, D, static_cast<int64_t>(kv.page_size) * Hkv * D, sm_scale,
               out, nullptr};
    // Query blocks: up to 8 tokens and about 32 rows, balanced within each request.
    const int64_t qb = G >= 32 ? 1 : (32 / G > 8 ? 8 : 32 / G);
    const auto for_each_block = [&](auto&& fn) {  // fn(b, t0, nq, chunks)
      for (int64_t t = 0; t < T;) {
        const int32_t b = plan.query_request[t];
        const int64_t end = qo_indptr[b + 1], len = end - t, nb = (len + qb - 1) / qb;
        const int64_t kv_len = plan.kv_len[b], qo_len = end - qo_indptr[b];
        for (int64_t k = 0; k < nb; ++k) {
          const int64_t nq = len / nb + (k < len % nb ? 1 : 0);
          const int64_t kend = custom_mask ? kv_len : kv_len - qo_len + (t - qo_indptr[b]) + nq;
          fn(b, t, nq, (kend + kAttnChunk - 1) / kAttnChunk);
          t += nq;
        }
      }
    };
    int64_t nblocks = 0, nchunks = 0;
    for_each_block([&](int64_t, int64_t, int64_t, int64_t ch) { ++nblocks, nchunks += ch; });
    // Few items (decode of a small batch): split each block's chunks over the threads too.
    const bool split = nblocks * Hkv < 4 * num_threads() && nchunks > nblocks;
    const int64_t nitems = split ? nchunks : nblocks;
    int64_t partial_floats = 0;
    if (split)
      for_each_block([&](int64_t, int64_t, int64_t nq, int64_t ch) {
        partial_floats += ch * Hkv * nq * G * (D + 2);
      });
    void* mem = std::malloc(sizeof(AttnItem) * (nitems + nblocks) + sizeof(float) * partial_floats);
    if (!mem) std::abort();
    AttnItem* items = static_cast<AttnItem*>(mem);
    AttnItem* blocks = items + nitems;  // split: one per block, c1 = its chunks
    a.partial = reinterpret_cast<float*>(blocks + nblocks);
    {
      int64_t i = 0, k = 0, part = 0;
      for_each_block([&](int64_t b, int64_t t0, int64_t nq, int64_t ch) {
        const AttnItem whole{static_cast<int32_t>(b), static_cast<int32_t>(t0), static_cast<int32_t>(nq),
                             0, static_cast<int32_t>(ch), split ? part : -1};
        blocks[k++] = whole;
        if (!split) {
          items[i++] = whole;
          return;
        }
        for (int64_t c = 0; c < ch; ++c) {
          items[i] = whole;
          items[i].c0 = static_cast<int32_t>(c);
          items[i].c1 = static_cast<int32_t>(c + 1);
          items[i++].part = part;
          part += Hkv * nq * G * (D + 2);
        }
      });
    }
    // Later blocks of a causal request cost more: hand them out first.
    parallel_for(nitems * Hkv, 1, [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w) attn_item(a, items[nitems - 1 - w / Hkv], w % Hkv);
    });
    if (split) {
      for (int64_t k = 0; k < nblocks; ++k) {
        const AttnItem& bl = blocks[k];
        const int64_t R = static_cast<int64_t>(bl.nq) * G, stride = Hkv * R * (D + 2);
        for (int64_t h = 0; h < Hkv; ++h)
          for (int64_t r = 0; r < R; ++r) {
            float* o = out + ((bl.t0 + r / G) * num_qo_heads + h * G + r % G) * D;
            float M = -INFINITY, L = 0.f;
            for (int64_t c = 0; c < bl.c1; ++c) {
              const float* p = a.partial + bl.part + c * stride + h * R * (D + 2);
              attn_merge(&M, &L, o, p[R * D + r], p[R * D + R + r], p + r * D, D);
            }
            attn_finish(M, L, o, D);
          }
      }
    }
    std::free(mem);
  }
};

template <class VT>
KernelTable make_kernel_table() {
  using K = Kernels<VT>;
  return KernelTable{&K::matmul, &K::rmsnorm, &K::rope, &K::silu_mul, &K::embedding,
                     &K::paged_attention};
}

}  // namespace sd::cpu
