// CPU kernels written once over an 8-lane vector type VT (VecAvx2 or VecPortable).
// Included by exactly one translation unit per instruction set, which instantiates
// make_kernel_table<VT>(). No standard-library templates are instantiated here, so code
// compiled with AVX2 enabled can never be picked by the linker for the portable path.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/parallel.h"
#include "ops/cpu/kernel_table.h"

namespace sd::cpu {

template <class VT>
struct Kernels {
  using V = typename VT::V;

  // ---- weight row loaders: 8 weights of row r from column k (k % 8 == 0) as f32 ----------
  // Each loader also prefetches: kPrefetchEvery vector steps cover one 64-byte cache line.
  struct LoadF32 {
    static constexpr int kPrefetchEvery = 2;
    const float* w;
    int64_t ld;
    V load(int64_t r, int64_t k) const { return VT::load(w + r * ld + k); }
    void prefetch(int64_t r, int64_t k) const { __builtin_prefetch(w + r * ld + k); }
    float at(int64_t r, int64_t k) const { return w[r * ld + k]; }
  };
  template <DType T>
  struct Load16 {
    static constexpr int kPrefetchEvery = 4;
    const uint16_t* w;
    int64_t ld;
    V load(int64_t r, int64_t k) const { return VT::load(w + r * ld + k, T); }
    void prefetch(int64_t r, int64_t k) const { __builtin_prefetch(w + r * ld + k); }
    float at(int64_t r, int64_t k) const {
      return T == DType::kBF16 ? bf16_to_f32(w[r * ld + k]) : f16_to_f32(w[r * ld + k]);
    }
  };
  // ---- matmul: an R x C tile of (weight rows) x (tokens), register-blocked -----------------
  template <int R, int C, class L>
  static void tile(const L& w, int64_t n, const float* X, int64_t ldx, int64_t m, int64_t K,
                   float* Y, int64_t ldy, const float* bias) {
    V acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = VT::zero();
    const int64_t kv = K - K % VT::kWidth;
    for (int64_t k = 0; k < kv; k += VT::kWidth) {
      // Stream the next tile's rows into cache while this one computes (short rows are too
      // short for the hardware prefetcher to pick up on its own).
      if ((k / VT::kWidth) % L::kPrefetchEvery == 0)
        for (int r = 0; r < R; ++r) w.prefetch(n + R + r, k);
      V xv[C];
      for (int c = 0; c < C; ++c) xv[c] = VT::load(X + (m + c) * ldx + k);
      for (int r = 0; r < R; ++r) {
        const V wv = w.load(n + r, k);
        for (int c = 0; c < C; ++c) acc[r][c] = VT::fma(wv, xv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < C; ++c) {
        float s = VT::hsum(acc[r][c]);
        for (int64_t k = kv; k < K; ++k) s += w.at(n + r, k) * X[(m + c) * ldx + k];
        Y[(m + c) * ldy + n + r] = s + (bias ? bias[n + r] : 0.f);
      }
    }
  }

  template <int R, class L>
  static void tile_rows(const L& w, int64_t n, int cols, const float* X, int64_t ldx, int64_t m,
                        int64_t K, float* Y, int64_t ldy, const float* bias) {
    switch (cols) {
      case 3: tile<R, 3>(w, n, X, ldx, m, K, Y, ldy, bias); break;
      case 2: tile<R, 2>(w, n, X, ldx, m, K, Y, ldy, bias); break;
      default: tile<R, 1>(w, n, X, ldx, m, K, Y, ldy, bias); break;
    }
  }

  template <class L>
  static void matmul_with(const L& w, int64_t N, int64_t K, const float* X, int64_t M,
                          int64_t ldx, float* Y, int64_t ldy, const float* bias) {
    constexpr int kRows = 4, kTokens = 3;
    constexpr int64_t kTokenBlock = 48;  // tokens whose activations stay in cache per row tile
    parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
      for (int64_t mb = 0; mb < M; mb += kTokenBlock) {
        const int64_t me = M < mb + kTokenBlock ? M : mb + kTokenBlock;
        for (int64_t n = n0; n < n1; n += kRows) {
          const int64_t rows = n1 - n < kRows ? n1 - n : kRows;
          for (int64_t m = mb; m < me; m += kTokens) {
            const int cols = static_cast<int>(me - m < kTokens ? me - m : kTokens);
            switch (rows) {
              case 4: tile_rows<4>(w, n, cols, X, ldx, m, K, Y, ldy, bias); break;
              case 3: tile_rows<3>(w, n, cols, X, ldx, m, K, Y, ldy, bias); break;
              case 2: tile_rows<2>(w, n, cols, X, ldx, m, K, Y, ldy, bias); break;
              default: tile_rows<1>(w, n, cols, X, ldx, m, K, Y, ldy, bias); break;
            }
          }
        }
      }
    });
  }

  static void matmul(const Matrix& W, const float* X, int64_t M, int64_t ldx, float* Y,
                     int64_t ldy, const float* bias) {
    const int64_t N = W.rows, K = W.cols;
    switch (W.dtype) {
      case DType::kF32:
        matmul_with(LoadF32{static_cast<const float*>(W.data), K}, N, K, X, M, ldx, Y, ldy, bias);
        break;
      case DType::kBF16:
        matmul_with(Load16<DType::kBF16>{static_cast<const uint16_t*>(W.data), K}, N, K, X, M,
                    ldx, Y, ldy, bias);
        break;
      case DType::kF16:
        matmul_with(Load16<DType::kF16>{static_cast<const uint16_t*>(W.data), K}, N, K, X, M, ldx,
                    Y, ldy, bias);
        break;
      case DType::kQ8:
        matmul_q8(W, X, M, ldx, Y, ldy, bias);
        break;
    }
  }

  // ---- int8 weights x int8-quantized activations (both in blocks of 32 with a scale) ----------
  // Activations are quantized per row and block like the weights (GGUF Q8_0 x Q8_0), so the
  // inner product runs on 8-bit integers: a quarter of the f32 work per weight.
  template <int R, int C>
  static void tile_q8(const int8_t* w, const float* ws, const int8_t* xq, const float* xs,
                      int64_t n, int64_t m, int64_t K, float* Y, int64_t ldy, const float* bias) {
    const int64_t nb = K / kQ8Block;
    V acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = VT::zero();
    for (int64_t b = 0; b < nb; ++b) {
      if ((b & 1) == 0)  // the next tile's rows, one cache line (two blocks) at a time
        for (int r = 0; r < R; ++r) __builtin_prefetch(w + (n + R + r) * K + b * kQ8Block);
      for (int r = 0; r < R; ++r) {
        const int8_t* wr = w + (n + r) * K + b * kQ8Block;
        const float sw = ws[(n + r) * nb + b];
        for (int c = 0; c < C; ++c) {
          const V d = VT::dot32_i8(wr, xq + (m + c) * K + b * kQ8Block);
          acc[r][c] = VT::fma(d, VT::set1(sw * xs[(m + c) * nb + b]), acc[r][c]);
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c)
        Y[(m + c) * ldy + n + r] = VT::hsum(acc[r][c]) + (bias ? bias[n + r] : 0.f);
  }

  template <int R>
  static void tile_q8_rows(int cols, const int8_t* w, const float* ws, const int8_t* xq,
                           const float* xs, int64_t n, int64_t m, int64_t K, float* Y,
                           int64_t ldy, const float* bias) {
    switch (cols) {
      case 3: tile_q8<R, 3>(w, ws, xq, xs, n, m, K, Y, ldy, bias); break;
      case 2: tile_q8<R, 2>(w, ws, xq, xs, n, m, K, Y, ldy, bias); break;
      default: tile_q8<R, 1>(w, ws, xq, xs, n, m, K, Y, ldy, bias); break;
    }
  }

  static void quantize_row_q8(const float* x, int64_t K, int8_t* q, float* scales) {
    for (int64_t b = 0; b < K / kQ8Block; ++b) {
      const float* xb = x + b * kQ8Block;
      float amax = 0.f;
      for (int i = 0; i < kQ8Block; ++i) amax = std::fmax(amax, std::fabs(xb[i]));
      const float scale = amax / 127.f;
      const float inv = scale > 0.f ? 1.f / scale : 0.f;
      scales[b] = scale;
      for (int i = 0; i < kQ8Block; ++i) q[b * kQ8Block + i] = static_cast<int8_t>(std::lround(xb[i] * inv));
    }
  }

  static void matmul_q8(const Matrix& W, const float* X, int64_t M, int64_t ldx, float* Y,
                        int64_t ldy, const float* bias) {
    const int64_t N = W.rows, K = W.cols, nb = K / kQ8Block;
    // Quantized activations live in the calling thread's scratch: [M*K int8][M*nb scales].
    float* xs = thread_scratch(M * nb + (M * K + 3) / 4);
    int8_t* xq = reinterpret_cast<int8_t*>(xs + M * nb);
    for (int64_t m = 0; m < M; ++m) quantize_row_q8(X + m * ldx, K, xq + m * K, xs + m * nb);
    const int8_t* w = static_cast<const int8_t*>(W.data);
    constexpr int kRows = 4, kTokens = 3;
    constexpr int64_t kTokenBlock = 48;
    parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
      for (int64_t mb = 0; mb < M; mb += kTokenBlock) {
        const int64_t me = M < mb + kTokenBlock ? M : mb + kTokenBlock;
        for (int64_t n = n0; n < n1; n += kRows) {
          const int64_t rows = n1 - n < kRows ? n1 - n : kRows;
          for (int64_t m = mb; m < me; m += kTokens) {
            const int cols = static_cast<int>(me - m < kTokens ? me - m : kTokens);
            switch (rows) {
              case 4: tile_q8_rows<4>(cols, w, W.scales, xq, xs, n, m, K, Y, ldy, bias); break;
              case 3: tile_q8_rows<3>(cols, w, W.scales, xq, xs, n, m, K, Y, ldy, bias); break;
              case 2: tile_q8_rows<2>(cols, w, W.scales, xq, xs, n, m, K, Y, ldy, bias); break;
              default: tile_q8_rows<1>(cols, w, W.scales, xq, xs, n, m, K, Y, ldy, bias); break;
            }
          }
        }
      }
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
    parallel_for(M * I, 4096, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        const int64_t m = j / I, i = j % I;
        const float g = gate_up[m * 2 * I + i];
        out[j] = g / (1.0f + std::exp(-g)) * gate_up[m * 2 * I + I + i];
      }
    });
  }

  static void embedding(const Matrix& table, const int32_t* ids, int64_t T, float* out) {
    const int64_t D = table.cols;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = ids[t];
      float* o = out + t * D;
      switch (table.dtype) {
        case DType::kF32: {
          const float* w = static_cast<const float*>(table.data) + row * D;
          for (int64_t i = 0; i < D; ++i) o[i] = w[i];
          break;
        }
        case DType::kBF16: {
          const uint16_t* w = static_cast<const uint16_t*>(table.data) + row * D;
          for (int64_t i = 0; i < D; ++i) o[i] = bf16_to_f32(w[i]);
          break;
        }
        case DType::kF16: {
          const uint16_t* w = static_cast<const uint16_t*>(table.data) + row * D;
          for (int64_t i = 0; i < D; ++i) o[i] = f16_to_f32(w[i]);
          break;
        }
        case DType::kQ8: {
          const int8_t* w = static_cast<const int8_t*>(table.data) + row * D;
          const float* s = table.scales + row * (D / kQ8Block);
          for (int64_t i = 0; i < D; ++i) o[i] = w[i] * s[i / kQ8Block];
          break;
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
