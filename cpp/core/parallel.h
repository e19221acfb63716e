// The one place the core splits work over CPU threads: a persistent pool whose workers claim
// chunks of a range from a shared counter. The caller works too and waits only for chunks that
// were claimed, so a worker the OS has not scheduled yet never stalls a step (a fork-join
// barrier would, on a small or busy machine).
#pragma once
#include <algorithm>
#include <cstdint>

namespace sd {

int num_threads();
void set_num_threads(int n);  // n <= 0: one per core this process may run on

namespace detail {
using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
// Runs fn over [0, n) in chunks of `chunk` (the last may be shorter) on the pool.
void run_parallel(int64_t n, int64_t chunk, RangeFn fn, void* ctx);
}  // namespace detail

// Calls fn(begin, end) on chunks of [0, n) whose sizes are multiples of `grain` (but the last),
// about four chunks per thread so a slow thread's share is picked up by the others.
template <class Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t target = (n + 4 * num_threads() - 1) / (4 * num_threads());
  const int64_t chunk = std::max<int64_t>(grain, (target + grain - 1) / grain * grain);
  if (chunk >= n || num_threads() == 1) {
    fn(int64_t{0}, n);
    return;
  }
  using F = typename std::remove_reference<Fn>::type;
  detail::run_parallel(
      n, chunk, [](void* ctx, int64_t b, int64_t e) { (*static_cast<F*>(ctx))(b, e); },
      const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace sd
