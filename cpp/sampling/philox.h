// Philox4x32-10 (Salmon et al., SC'11), the counter-based generator cuRAND and PyTorch use:
// the same (seed, counter) gives the same numbers on every backend and in every batch order.
#pragma once
#include <cstdint>

#include "core/host_device.h"

namespace sd {

SD_HD void philox4x32_10(uint64_t seed, uint64_t counter, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// A uniform float in [0, 1) from (seed, counter, lane < 4), 24 bits of randomness.
SD_HD float philox_uniform(uint64_t seed, uint64_t counter, int lane) {
  uint32_t r[4];
  philox4x32_10(seed, counter, r);
  return static_cast<float>(r[lane & 3] >> 8) * (1.0f / 16777216.0f);
}

}  // namespace sd
