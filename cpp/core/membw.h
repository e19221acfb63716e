// Read bandwidth of this machine with the core's own threads: the roofline of decode, which
// streams every weight once per token (tokens/s <= bandwidth / weight bytes per token).
#pragma once
#include <cstdint>

namespace sd {

// Best of `repeats` timed passes summing a buffer of `bytes` (touched once before timing);
// returns bytes per second.
double measure_read_bandwidth(int64_t bytes, int repeats);

}  // namespace sd
