// Small helpers the forward passes share (LlamaModel, Eagle3Head).
#pragma once
#include <cstdint>
#include <vector>

namespace sd {

// Grows a scratch buffer to at least n floats (never shrinks: buffers are reused across calls).
inline void grow(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

// x += y over n floats (the residual adds).
inline void add_inplace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace sd
