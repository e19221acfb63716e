// Marks code shared by the CPU build and the CUDA build (index math, RNG, dtype conversion).
#pragma once
#if defined(__CUDACC__)
#define SD_HD static __host__ __device__ __forceinline__
#else
#define SD_HD static inline
#endif
