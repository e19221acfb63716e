#include "core/parallel.h"

#include <thread>

namespace sd {

namespace {
int g_threads = 0;
}

int num_threads() {
  if (g_threads <= 0) g_threads = std::max(1, omp_get_num_procs());
  return g_threads;
}

void set_num_threads(int n) { g_threads = n > 0 ? n : std::max(1, omp_get_num_procs()); }

}  // namespace sd
