// The CPU kernels compiled with AVX-512 (F, BW, VL, VNNI) on top of AVX2 + FMA + F16C (this
// file only; see CMakeLists.txt): the AVX2 kernels with VNNI int8 matmul steps.
#include "ops/cpu/kernels_impl.h"
#include "ops/cpu/vec_avx512.h"

namespace sd::cpu {

const KernelTable& avx512_kernels() {
  static const KernelTable table = make_kernel_table<VecAvx512>();
  return table;
}

}  // namespace sd::cpu
