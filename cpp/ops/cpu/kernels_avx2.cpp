// The CPU kernels compiled with AVX2 + FMA + F16C (this file only; see CMakeLists.txt).
#include "ops/cpu/kernels_impl.h"
#include "ops/cpu/vec_avx2.h"

namespace sd::cpu {

const KernelTable& avx2_kernels() {
  static const KernelTable table = make_kernel_table<VecAvx2>();
  return table;
}

}  // namespace sd::cpu
