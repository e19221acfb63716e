// The CPU kernels in portable C++, and the per-thread scratch both kernel sets share.
#include <vector>

#include "ops/cpu/kernels_impl.h"
#include "ops/cpu/vec_portable.h"

namespace sd::cpu {

const KernelTable& portable_kernels() {
  static const KernelTable table = make_kernel_table<VecPortable>();
  return table;
}

float* thread_scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

}  // namespace sd::cpu
