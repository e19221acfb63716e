// The one place the core splits work over CPU threads (OpenMP underneath).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace sd {

int num_threads();
void set_num_threads(int n);  // n <= 0: one per core

// Calls fn(begin, end) on contiguous chunks of [0, n), each chunk a multiple of `grain`
// (except the last), one chunk per thread.
template <class Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t units = (n + grain - 1) / grain;
  const int nt = static_cast<int>(std::min<int64_t>(num_threads(), units));
  if (nt <= 1) {
    fn(int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int64_t u0 = units * t / nt, u1 = units * (t + 1) / nt;
    const int64_t b = u0 * grain, e = std::min(n, u1 * grain);
    if (b < e) fn(b, e);
  }
}

}  // namespace sd
