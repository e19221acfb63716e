// The quantized matmul on Intel AMX (tile registers + the int8 tile multiply, Sapphire Rapids and
// later), compiled with AVX-512 + AMX-TILE + AMX-INT8 (this file only; see CMakeLists.txt). Every
// other kernel, and the matmul of float weights or of one token, is the AVX-512 table's.
//
// Why: the VNNI matmul turns compute-bound from 2 tokens (each token pays 8 dot-product steps
// per 256 weights), which makes verifying a speculative chain cost several decode steps. A tile
// multiply computes up to 16 tokens x 16 rows x 32 columns in one instruction, so the per-token
// cost shrinks to applying the block scales, and unpacking the weights is paid once for all
// tokens.
//
// Per tile of 16 weight rows (4 packed row groups) and superblock of 64 columns: the two 32-column
// blocks' weights are unpacked into two B tiles (8 rows of 4 columns x 16 weight rows, the tile
// multiply's layout), the tokens' int8 activations of each block are an A tile (up to 16 tokens x
// 32 bytes, row-major), and each block's int32 dot products are scaled into float accumulators:
//   acc[token][row] += dot x weight scale x activation scale (+ min x activation sum for Q4).
// The integer dot products are the VNNI kernel's exactly; only the float summation order differs.
// GCC 12 warns inside its own AVX-512 headers (the `__Y = __Y` of _mm512_undefined_*): a known
// false positive, silenced for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/parallel.h"
#include "ops/cpu/kernel_table.h"
#include "ops/cpu/vec_avx512.h"

namespace sd::cpu {

namespace {

constexpr int kTileRows = 16;                 // weight rows per tile (4 packed groups)
constexpr int kTileGroups = kTileRows / kPackRows;
constexpr int kMaxTokens = 16;                // tokens per A tile
constexpr int kBlockSteps = kQ8Block / 4;     // B tile rows: 4 columns each
// One token stays on the VNNI kernel: it is memory-bound there, and the tiles would add the
// unpacking. From 2 tokens the tiles win inside a real forward (weights streamed from DRAM:
// Qwen2.5-1.5B int4, 4 tokens 95 -> 55 ms), even where a cache-resident microbenchmark has VNNI
// ahead up to 4 tokens.
constexpr int kMinTokens = 2;

// The tile layout: C0, C1 (block sums), A0, A1 (activations), B0, B1 (weights).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void configure_tiles(int tokens) {
  TileConfig cfg;
  for (int t = 0; t < 2; ++t) {
    cfg.rows[t] = static_cast<uint8_t>(tokens), cfg.colsb[t] = kTileRows * 4;      // C: int32 per row
    cfg.rows[2 + t] = static_cast<uint8_t>(tokens), cfg.colsb[2 + t] = kQ8Block;   // A: 32 bytes
    cfg.rows[4 + t] = kBlockSteps, cfg.colsb[4 + t] = kTileRows * 4;               // B: 4 bytes x 16 rows
  }
  _tile_loadconfig(&cfg);
}

// Activations quantized per row and 32-column block (VecAvx512::q8_quantize, as the VNNI kernel
// does), stored row-major: row m's block k is q[m * ldq + 32 k .. + 31]; the rows past M (up to a
// whole number of A tiles) and the columns past K (up to whole superblocks) are zero.
struct RowMajorQ8 {
  const int8_t* q;
  const float* scale;      // [rows][blocks]
  const float* block_sum;  // [rows][blocks]: scale x the sum of the block's q
  int64_t ldq, blocks;
};

RowMajorQ8 quantize_rows(const float* X, int64_t M, int64_t rows, int64_t K, int64_t ldx, int64_t P) {
  const int64_t blocks = 2 * P, ldq = P * kQ8Super, nb = K / kQ8Block;
  float* scale = thread_scratch(rows * blocks * 2 + rows * ldq / 4);
  float* block_sum = scale + rows * blocks;
  int8_t* q = reinterpret_cast<int8_t*>(block_sum + rows * blocks);
  std::memset(q, 0, static_cast<size_t>(rows * ldq));
  std::memset(scale, 0, static_cast<size_t>(rows * blocks * 2) * sizeof(float));
  parallel_for(M * nb, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t m = i / nb, b = i % nb;
      int32_t sum = 0;
      const float s = VecAvx512::q8_quantize(X + m * ldx + b * kQ8Block, q + m * ldq + b * kQ8Block, &sum);
      scale[m * blocks + b] = s;
      block_sum[m * blocks + b] = s * static_cast<float>(sum);
    }
  });
  return RowMajorQ8{q, scale, block_sum, ldq, blocks};
}

// This thread's float accumulators, 64-byte aligned (not thread_scratch: the calling thread's
// scratch holds the quantized activations the workers read).
float* accumulators(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n + 16) buf.resize(static_cast<size_t>(n + 16));
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
}

// Dword i of the result: dword 2 i + block of (a, b) -- the lanes of one block of 16 rows, in row
// order, from two registers each holding two groups' 8 (row, block) lanes.
inline __m512i block_lanes(__m512i a, __m512i b, int block) {
  const __m512i idx = _mm512_add_epi32(
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), _mm512_set1_epi32(block));
  return _mm512_permutex2var_epi32(a, idx, b);
}
inline __m512 block_lanes(__m512 a, __m512 b, int block) {
  return _mm512_castsi512_ps(block_lanes(_mm512_castps_si512(a), _mm512_castps_si512(b), block));
}

// Two groups' 32 bytes at the same offset, as one register.
inline __m512i load_pair(const uint8_t* g0, const uint8_t* g1) {
  return _mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g0))),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g1)), 1);
}
inline __m512 load_f16_pair(const uint8_t* g0, const uint8_t* g1) {
  const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(g0));
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(g1));
  return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_zextsi128_si256(a), b, 1));
}

// One superblock of a 16-row tile, unpacked: the B tiles of its two blocks (signed int8 weights
// for Q8, unsigned 0..15 for Q4) and the blocks' weight scales (and Q4 minimums) in row order.
struct Superblock {
  alignas(64) int8_t b[2][kBlockSteps][kTileRows * 4];
  __m512 scale[2], min[2];
};

// g[i]: the superblock of group i of the tile (a zero superblock past the matrix end).
inline void unpack_q8(const uint8_t* const (&g)[kTileGroups], Superblock* s) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));  // stored w + 128 -> w
  for (int step = 0; step < kBlockSteps; ++step) {
    const int64_t off = step * kQ8StepBytes;
    const __m512i lo = _mm512_xor_si512(load_pair(g[0] + off, g[1] + off), flip);
    const __m512i hi = _mm512_xor_si512(load_pair(g[2] + off, g[3] + off), flip);
    for (int blk = 0; blk < 2; ++blk) _mm512_store_si512(s->b[blk][step], block_lanes(lo, hi, blk));
  }
  const int64_t so = kQ8Steps * kQ8StepBytes;
  const __m512 lo = _mm512_castsi512_ps(load_pair(g[0] + so, g[1] + so));
  const __m512 hi = _mm512_castsi512_ps(load_pair(g[2] + so, g[3] + so));
  for (int blk = 0; blk < 2; ++blk) s->scale[blk] = block_lanes(lo, hi, blk), s->min[blk] = _mm512_setzero_ps();
}

inline void unpack_q4(const uint8_t* const (&g)[kTileGroups], Superblock* s) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  for (int t = 0; t < kQ4Loads; ++t) {  // load t: step t in the low nibbles, step t + 4 in the high
    const int64_t off = t * kQ8StepBytes;
    const __m512i a = load_pair(g[0] + off, g[1] + off), b = load_pair(g[2] + off, g[3] + off);
    const __m512i alo = _mm512_and_si512(a, nibble), ahi = _mm512_and_si512(_mm512_srli_epi16(a, 4), nibble);
    const __m512i blo = _mm512_and_si512(b, nibble), bhi = _mm512_and_si512(_mm512_srli_epi16(b, 4), nibble);
    for (int blk = 0; blk < 2; ++blk) {
      _mm512_store_si512(s->b[blk][t], block_lanes(alo, blo, blk));
      _mm512_store_si512(s->b[blk][t + kQ4Loads], block_lanes(ahi, bhi, blk));
    }
  }
  const int64_t so = kQ4ScaleOffset, mo = kQ4ScaleOffset + Matrix::kQ4MinOffset;
  const __m512 slo = load_f16_pair(g[0] + so, g[1] + so), shi = load_f16_pair(g[2] + so, g[3] + so);
  const __m512 mlo = load_f16_pair(g[0] + mo, g[1] + mo), mhi = load_f16_pair(g[2] + mo, g[3] + mo);
  for (int blk = 0; blk < 2; ++blk) s->scale[blk] = block_lanes(slo, shi, blk), s->min[blk] = block_lanes(mlo, mhi, blk);
}

// Rows [16 n, 16 n + 16) of the output for every token, tiles of `tokens` tokens (A/C tile rows).
template <DType T>
void matmul_tile(const Matrix& W, int64_t n, const RowMajorQ8& x, int64_t M, int tokens, float* acc,
                 const uint8_t* zero_superblock, float* Y, int64_t ldy, const float* bias) {
  constexpr int64_t kBytes = T == DType::kQ8 ? kQ8SuperBytes : kQ4SuperBytes;
  const int64_t P = W.superblocks(), G = W.groups(), chunks = (M + tokens - 1) / tokens;
  const uint8_t* group[kTileGroups];
  for (int i = 0; i < kTileGroups; ++i) {
    const int64_t gi = n * kTileGroups + i;
    group[i] = gi < G ? static_cast<const uint8_t*>(W.data) + gi * W.group_bytes() : nullptr;
  }
  for (int64_t m = 0; m < chunks * tokens; ++m) _mm512_store_ps(acc + m * kTileRows, _mm512_setzero_ps());
  Superblock s;
  alignas(64) int32_t dots[2][kMaxTokens][kTileRows];
  for (int64_t p = 0; p < P; ++p) {
    const uint8_t* sb[kTileGroups];
    for (int i = 0; i < kTileGroups; ++i) sb[i] = group[i] ? group[i] + p * kBytes : zero_superblock;
    if constexpr (T == DType::kQ8) unpack_q8(sb, &s);
    else unpack_q4(sb, &s);
    _tile_loadd(4, s.b[0], kTileRows * 4);
    _tile_loadd(5, s.b[1], kTileRows * 4);
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t m0 = c * tokens;
      const int8_t* a = x.q + m0 * x.ldq + p * kQ8Super;
      _tile_loadd(2, a, x.ldq);
      _tile_loadd(3, a + kQ8Block, x.ldq);
      _tile_zero(0);
      _tile_zero(1);
      if constexpr (T == DType::kQ8) {
        _tile_dpbssd(0, 2, 4);
        _tile_dpbssd(1, 3, 5);
      } else {
        _tile_dpbsud(0, 2, 4);
        _tile_dpbsud(1, 3, 5);
      }
      _tile_stored(0, dots[0], kTileRows * 4);
      _tile_stored(1, dots[1], kTileRows * 4);
      for (int t = 0; t < tokens; ++t) {
        const int64_t m = m0 + t, xi = m * x.blocks + 2 * p;
        __m512 v = _mm512_load_ps(acc + m * kTileRows);
        for (int blk = 0; blk < 2; ++blk) {
          const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(dots[blk][t]));
          v = _mm512_fmadd_ps(dot, _mm512_mul_ps(s.scale[blk], _mm512_set1_ps(x.scale[xi + blk])), v);
          if constexpr (T == DType::kQ4) v = _mm512_fmadd_ps(s.min[blk], _mm512_set1_ps(x.block_sum[xi + blk]), v);
        }
        _mm512_store_ps(acc + m * kTileRows, v);
      }
    }
  }
  const int64_t r0 = n * kTileRows, live = W.rows - r0 < kTileRows ? W.rows - r0 : kTileRows;
  const __mmask16 keep = static_cast<__mmask16>((1u << live) - 1);
  const __m512 b = bias ? _mm512_maskz_loadu_ps(keep, bias + r0) : _mm512_setzero_ps();
  for (int64_t m = 0; m < M; ++m)
    _mm512_mask_storeu_ps(Y + m * ldy + r0, keep, _mm512_add_ps(_mm512_load_ps(acc + m * kTileRows), b));
}

void amx_matmul(const Matrix& W, const float* X, int64_t M, int64_t ldx, float* Y, int64_t ldy,
                const float* bias) {
  if (!W.packed || !W.quantized() || M < kMinTokens) {
    avx512_kernels().matmul(W, X, M, ldx, Y, ldy, bias);
    return;
  }
  // Tiles of equal height (20 tokens: 2 x 10, not 16 + 4), so one tile configuration serves all.
  const int64_t chunks = (M + kMaxTokens - 1) / kMaxTokens;
  const int tokens = static_cast<int>((M + chunks - 1) / chunks);
  const int64_t P = W.superblocks();
  const RowMajorQ8 x = quantize_rows(X, M, chunks * tokens, W.cols, ldx, P);
  alignas(64) static const uint8_t zero_superblock[kQ8SuperBytes] = {};
  static_assert(kQ8SuperBytes >= kQ4SuperBytes, "one zero superblock serves both formats");
  const int64_t tiles = (W.rows + kTileRows - 1) / kTileRows;
  parallel_for(tiles, 1, [&](int64_t n0, int64_t n1) {
    // Every chunk loads the configuration it needs and releases it: nothing is assumed about what
    // other code (another AMX library in this process) left in this thread's tile state.
    float* acc = accumulators(chunks * tokens * kTileRows);
    configure_tiles(tokens);
    for (int64_t n = n0; n < n1; ++n) {
      if (W.dtype == DType::kQ8) matmul_tile<DType::kQ8>(W, n, x, M, tokens, acc, zero_superblock, Y, ldy, bias);
      else matmul_tile<DType::kQ4>(W, n, x, M, tokens, acc, zero_superblock, Y, ldy, bias);
    }
    _tile_release();
  });
}

}  // namespace

bool amx_usable() {
  static const bool ok = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512vnni") ||
        !__builtin_cpu_supports("f16c") || !__builtin_cpu_supports("amx-tile") ||
        !__builtin_cpu_supports("amx-int8"))
      return false;
    // Linux hands out the tile state only to a process that asks for it (ARCH_REQ_XCOMP_PERM).
    constexpr long kReqXcompPerm = 0x1023, kXfeatureTileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureTileData) == 0;
  }();
  return ok;
}

const KernelTable& amx_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernels();
    t.matmul = &amx_matmul;
    return t;
  }();
  return table;
}

}  // namespace sd::cpu
