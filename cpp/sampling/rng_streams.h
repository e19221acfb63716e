// Random-number keys derived from a request's seed, one per use, so every Philox stream is
// distinct: the verifier's acceptance uniforms and the drafters' draws. Shared by the CPU and
// CUDA builds (the same seed gives the same draws on both).
#pragma once
#include <cstdint>

#include "core/host_device.h"

namespace sd {

SD_HD uint64_t accept_stream(uint64_t seed) { return seed ^ 0x5bd1e9955bd1e995ull; }
SD_HD uint64_t draft_stream(uint64_t seed) { return seed ^ 0x9e3779b97f4a7c15ull; }

}  // namespace sd
