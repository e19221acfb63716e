// CPU kernels written once over an 8-lane vector type VT (VecAvx2 or VecPortable).
// Included by exactly one translation unit per instruction set, which instantiates
// make_kernel_table<VT>(). No standard-library templates are instantiated here, so code
// compiled with AVX2 enabled can never be picked by the linker for the portable path.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/parallel.h"
#include "ops/cpu/kernel_table.h"

namespace sd::cpu {

template <class VT>
struct Kernels {
  using V = typename VT::V;

  // ---- matmul ------------------------------------------------------------------------------
  // The output is computed in tiles of one row group (4 weight rows) x up to 3 tokens, so one
  // weight load serves three tokens; groups are split over threads, tokens blocked by 48 so a
  // group's weights are reused from cache.

  // Calls tile(g, m, cols) for every (row group g, token tile m .. m + cols <= kTokens) of an
  // N x M output.
  template <int kTokens = 3, class TileFn>
  static void for_each_tile(int64_t N, int64_t M, TileFn&& tile) {
    constexpr int64_t kTokenBlock = 48;
    const int64_t G = (N + kPackRows - 1) / kPackRows;
    parallel_for(G, 4, [&](int64_t g0, int64_t g1) {
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

  // Runs f(std::integral_constant<int, C>) for C = cols in 1..4.
  template <class F>
  static void with_cols(int cols, F&& f) {
    switch (cols) {
      case 4: f(std::integral_constant<int, 4>()); break;
      case 3: f(std::integral_constant<int, 3>()); break;
      case 2: f(std::integral_constant<int, 2>()); break;
      default: f(std::integral_constant<int, 1>()); break;
    }
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

  // Independent integer accumulators per token in the quantized tiles: one dependency chain of
  // 8 dot-product steps per superblock would leave a narrow tile waiting on latency.
  template <int C>
  static constexpr int kChainsFor = C <= 2 ? 2 : 1;

  // int8 weights x int8-quantized activations (GGUF Q8_0 x Q8_0): per superblock of 64
  // columns, 8 integer steps give the 8 (row, block) lanes their whole block dot products, then
  // one convert and one fused multiply-add apply the weight x activation block scales.
  struct Q8Format {
    static constexpr int kBytes = kQ8SuperBytes;
    template <int C, int kChains>
    static void dots(const uint8_t* sb, const int8_t* const (&xs)[C], const int32_t* const (&offsets)[C],
                     typename VT::VI (&d)[kChains][C]) {
      for (int c = 0; c < C; ++c) d[0][c] = VT::q8_init(offsets[c]);
      for (int s = 0; s < kQ8Steps; ++s) {
        const typename VT::Q8W w = VT::q8_load_step(sb + s * kQ8StepBytes);
        for (int c = 0; c < C; ++c) d[s % kChains][c] = VT::q8_step(d[s % kChains][c], w, xs[c] + s * 8);
      }
    }
    struct Scales {
      V scale;
    };
    static Scales scales(const uint8_t* sb) {
      return {VT::load(reinterpret_cast<const float*>(sb + kQ8Steps * kQ8StepBytes))};
    }
    // acc += dot x weight scale x activation scale
    static V apply(const Scales& w, V dot, const float* x_scale, const float*, V acc) {
      return VT::fma(dot, VT::mul(w.scale, VT::load2(x_scale)), acc);
    }
  };

  // 4-bit weights x int8-quantized activations (GGUF Q4_1 x Q8_1): the same walk with unsigned
  // weights (low / high nibbles of one load are steps t and t + 4), then per lane
  // scale x dot + min x (sum of the activations).
  struct Q4Format {
    static constexpr int kBytes = kQ4SuperBytes;
    template <int C, int kChains>
    static void dots(const uint8_t* sb, const int8_t* const (&xs)[C], const int32_t* const (&)[C],
                     typename VT::VI (&d)[kChains][C]) {
      for (int t = 0; t < kQ4Loads; ++t) {
        typename VT::U8W lo, hi;
        VT::q4_unpack(sb + t * kQ8StepBytes, &lo, &hi);
        for (int c = 0; c < C; ++c) {
          d[0][c] = VT::u8_step(d[0][c], lo, xs[c] + t * 8);
          d[kChains - 1][c] = VT::u8_step(d[kChains - 1][c], hi, xs[c] + (t + kQ4Loads) * 8);
        }
      }
    }
    struct Scales {
      V scale, min;
    };
    static Scales scales(const uint8_t* sb) {
      const uint16_t* f16 = reinterpret_cast<const uint16_t*>(sb + kQ4ScaleOffset);
      return {VT::load(f16, DType::kF16), VT::load(f16 + kQ8Lanes, DType::kF16)};
    }
    static V apply(const Scales& w, V dot, const float* x_scale, const float* x_sum, V acc) {
      acc = VT::fma(dot, VT::mul(w.scale, VT::load2(x_scale)), acc);
      return VT::fma(w.min, VT::load2(x_sum), acc);
    }
  };

  // One row group x C tokens of a quantized matmul, superblock by superblock.
  template <class Format, int C>
  static void tile_quantized(const Matrix& W, int64_t g, const QuantizedRows& x, int64_t m, float* Y,
                             int64_t ldy, const float* bias) {
    constexpr int kChains = kChainsFor<C>;
    const int64_t P = W.superblocks();
    const uint8_t* gp = W.group(g * kPackRows);
    V acc[C];
    for (int c = 0; c < C; ++c) acc[c] = VT::zero();
    for (int64_t p = 0; p < P; ++p) {
      const uint8_t* sb = gp + p * Format::kBytes;
      const int8_t* xs[C];
      const int32_t* offsets[C];
      typename VT::VI dots[kChains][C];
      for (int c = 0; c < C; ++c) {
        xs[c] = x.q + ((m + c) * P + p) * kQ8Super;
        offsets[c] = x.lane_offset + ((m + c) * P + p) * 2;
        for (int h = 0; h < kChains; ++h) dots[h][c] = VT::vi_zero();
      }
      Format::template dots<C, kChains>(sb, xs, offsets, dots);
      const typename Format::Scales w = Format::scales(sb);  // once per superblock, all tokens
      for (int c = 0; c < C; ++c) {
        for (int h = 1; h < kChains; ++h) dots[0][c] = VT::vi_add(dots[0][c], dots[h][c]);
        const int64_t xi = ((m + c) * P + p) * 2;
        acc[c] = Format::apply(w, VT::q8_float(dots[0][c]), x.scale + xi, x.block_sum + xi, acc[c]);
      }
    }
    store_lanes<C>(acc, W, g, m, Y, ldy, bias);
  }

  // Stores C vectors of 8 (row, block) lane sums: output row r is lanes 2r + 2r + 1.
  template <int C>
  static void store_lanes(const V (&acc)[C], const Matrix& W, int64_t g, int64_t m, float* Y,
                          int64_t ldy, const float* bias) {
    for (int c = 0; c < C; ++c) {
      float lanes[kQ8Lanes];
      VT::store(lanes, acc[c]);
      for (int r = 0; r < kPackRows; ++r) {
        const int64_t row = g * kPackRows + r;
        if (row >= W.rows) break;
        Y[(m + c) * ldy + row] = lanes[2 * r] + lanes[2 * r + 1] + (bias ? bias[row] : 0.f);
      }
    }
  }

  // Quantizes M rows of K activations (K % 32 == 0) into the calling thread's scratch, in the
  // superblock step order the weights use (see QuantizedRows).
  static QuantizedRows quantize_rows_q8(const float* X, int64_t M, int64_t K, int64_t ldx) {
    const int64_t P = (K + kQ8Super - 1) / kQ8Super, nb = K / kQ8Block;
    float* scale = thread_scratch(M * P * 6 + (M * P * kQ8Super) / 4);
    float* block_sum = scale + M * P * 2;
    int32_t* lane_offset = reinterpret_cast<int32_t*>(block_sum + M * P * 2);
    int8_t* q = reinterpret_cast<int8_t*>(lane_offset + M * P * 2);
    parallel_for(M * P * 2, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {  // i = (row * P + p) * 2 + block
        const int64_t r = i / (2 * P), blk = i % (2 * P);
        int8_t qb[kQ8Block] = {};
        int32_t sum = 0;
        scale[i] = blk < nb ? VT::q8_quantize(X + r * ldx + blk * kQ8Block, qb, &sum) : 0.f;
        lane_offset[i] = -128 * sum;
        block_sum[i] = scale[i] * static_cast<float>(sum);
        int8_t* dst = q + (i / 2) * kQ8Super + (i % 2) * 4;  // step s: 4 bytes at 8 s
        for (int s = 0; s < kQ8Steps; ++s) __builtin_memcpy(dst + 8 * s, qb + 4 * s, 4);
      }
    });
    return QuantizedRows{q, scale, block_sum, lane_offset};
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
        for_each_tile<4>(W.rows, M, [&](int64_t g, int64_t m, int cols) {
          with_cols(cols, [&](auto c) {
            if (W.dtype == DType::kQ8) tile_quantized<Q8Format, decltype(c)::value>(W, g, x, m, Y, ldy, bias);
            else tile_quantized<Q4Format, decltype(c)::value>(W, g, x, m, Y, ldy, bias);
          });
        });
        break;
      }
    }
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

  // ---- paged attention: one work item = one query token x one KV head (its query group) ------
  static void paged_attention(const AttentionPlan& plan, const float* q, const int32_t* qo_indptr,
                              const ops::PagedKV& kv, const int32_t* kv_indptr,
                              const int32_t* kv_indices, const uint8_t* custom_mask,
                              const int64_t* mask_indptr, int32_t num_qo_heads, float sm_scale,
                              float* out) {
    const int64_t D = kv.head_dim, Hkv = kv.num_kv_heads, G = num_qo_heads / kv.num_kv_heads;
    const int64_t page_stride = static_cast<int64_t>(kv.page_size) * Hkv * D;
    parallel_for(static_cast<int64_t>(plan.total_q) * Hkv, 1, [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t t = w / Hkv, h = w % Hkv;
        const int32_t b = plan.query_request[t];
        const int64_t kv_len = plan.kv_len[b];
        const int64_t qo_len = qo_indptr[b + 1] - qo_indptr[b];
        const int64_t i = t - qo_indptr[b];
        const uint8_t* mask_row = custom_mask ? custom_mask + mask_indptr[b] + i * kv_len : nullptr;
        const int64_t limit = mask_row ? kv_len : kv_len - qo_len + i + 1;  // exclusive
        const int32_t* pages = kv_indices + kv_indptr[b];
        float* scores = thread_scratch(G * limit);
        for (int64_t g = 0; g < G; ++g) {
          const float* qv = q + (t * num_qo_heads + h * G + g) * D;
          float mx = -INFINITY;
          for (int64_t j = 0; j < limit; ++j) {
            float s = -INFINITY;
            if (!mask_row || mask_row[j]) {
              const float* kp = kv.k + pages[j / kv.page_size] * page_stride +
                                ((j % kv.page_size) * Hkv + h) * D;
              s = dot(qv, kp, D) * sm_scale;
            }
            scores[g * limit + j] = s;
            mx = s > mx ? s : mx;
          }
          float sum = 0.f;
          for (int64_t j = 0; j < limit; ++j) {
            const float e = std::exp(scores[g * limit + j] - mx);
            scores[g * limit + j] = e;
            sum += e;
          }
          float* o = out + (t * num_qo_heads + h * G + g) * D;
          for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
          const float inv = 1.0f / sum;
          for (int64_t j = 0; j < limit; ++j) {
            const float p = scores[g * limit + j];
            if (p == 0.f) continue;
            const float* vp = kv.v + pages[j / kv.page_size] * page_stride +
                              ((j % kv.page_size) * Hkv + h) * D;
            axpy(p * inv, vp, o, D);
          }
        }
      }
    });
  }
};

template <class VT>
KernelTable make_kernel_table() {
  using K = Kernels<VT>;
  return KernelTable{&K::matmul, &K::rmsnorm, &K::rope, &K::silu_mul, &K::embedding,
                     &K::paged_attention};
}

}  // namespace sd::cpu
