// Wall-clock seconds from a monotonic clock (request timings, step costs).
#pragma once
#include <chrono>

namespace sd {

inline double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace sd
