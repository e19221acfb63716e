#include "core/membw.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <vector>

#include "core/parallel.h"

namespace sd {

double measure_read_bandwidth(int64_t bytes, int repeats) {
  // Software prefetch 8 KB ahead, as the matmul kernels do: the hardware prefetcher alone kept
  // too few lines in flight (this VM: 22 GB/s without, 28 with), and the roofline should be
  // what a kernel can reach.
  constexpr int64_t kAhead = 1024;  // words
  const int64_t n = std::max<int64_t>(bytes / 8, 1024);
  std::unique_ptr<uint64_t[]> buf(new uint64_t[static_cast<size_t>(n)]);
  parallel_for(n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buf[i] = static_cast<uint64_t>(i);
  });
  std::vector<uint64_t> sink(static_cast<size_t>((n + 4095) / 4096), 0);
  double best = 0;
  for (int r = 0; r < std::max(repeats, 1); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(n, 4096, [&](int64_t b, int64_t e) {
      uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = b;
      for (; i + 8 <= e; i += 8) {
        __builtin_prefetch(&buf[i] + kAhead, 0, 2);
        for (int k = 0; k < 8; ++k) acc[k] ^= buf[i + k];
      }
      for (; i < e; ++i) acc[0] ^= buf[i];
      sink[static_cast<size_t>(b / 4096)] += acc[0] ^ acc[1] ^ acc[2] ^ acc[3] ^ acc[4] ^ acc[5] ^ acc[6] ^ acc[7];
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(n * 8) / s);
  }
  volatile uint64_t keep = 0;
  for (uint64_t v : sink) keep = keep + v;
  return best;
}

}  // namespace sd
