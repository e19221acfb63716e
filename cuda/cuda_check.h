// CUDA error -> sd::Status, and a tiny RAII device buffer used by the host wrappers.
// Host C++ only (includes cuda_runtime.h; compiles with g++ or nvcc). Nothing here throws.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace sd::cuda {

// Ok when e == cudaSuccess; otherwise kInternal with "what: <cuda error string>".
inline Status check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return Status(StatusCode::kInternal, std::string(what) + ": " + cudaGetErrorString(e));
}

// Checks the last launch (cudaGetLastError) under the kernel's name.
inline Status check_launch(const char* kernel) { return check(cudaGetLastError(), kernel); }

// Owns `n` elements of T in device memory (cudaMalloc / cudaFree). Move-only.
// Usage:  DeviceBuffer<float> d;  SD_RETURN_IF_ERROR(d.upload(host_ptr, n));  ... d.get() ...
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), size_(o.size_) {
    o.ptr_ = nullptr;
    o.size_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = o.ptr_;
      size_ = o.size_;
      o.ptr_ = nullptr;
      o.size_ = 0;
    }
    return *this;
  }

  // Allocates n elements (contents undefined); frees what was held. n == 0 holds nothing.
  Status alloc(size_t n) {
    reset();
    if (n == 0) return Status::Ok();
    void* p = nullptr;
    Status st = check(cudaMalloc(&p, n * sizeof(T)), "cudaMalloc");
    if (!st.ok()) return st;
    ptr_ = static_cast<T*>(p);
    size_ = n;
    return Status::Ok();
  }
  // Allocates n elements set to zero bytes.
  Status alloc_zeroed(size_t n) {
    SD_RETURN_IF_ERROR(alloc(n));
    if (n == 0) return Status::Ok();
    return check(cudaMemset(ptr_, 0, n * sizeof(T)), "cudaMemset");
  }
  // Allocates n elements and copies them from host memory.
  Status upload(const T* host, size_t n) {
    SD_RETURN_IF_ERROR(alloc(n));
    if (n == 0) return Status::Ok();
    return check(cudaMemcpy(ptr_, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  Status upload(const std::vector<T>& host) { return upload(host.data(), host.size()); }
  // Holds at least n elements: reallocates (contents lost) only when it holds fewer.
  Status reserve(size_t n) { return n <= size_ ? Status::Ok() : alloc(n); }
  // Copies n host elements in on `stream`, growing first (reserve). For pageable host memory
  // the call returns once the source has been staged: the host array may then be reused.
  Status write_async(const T* host, size_t n, cudaStream_t stream) {
    SD_RETURN_IF_ERROR(reserve(n));
    if (n == 0) return Status::Ok();
    return check(cudaMemcpyAsync(ptr_, host, n * sizeof(T), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync H2D");
  }
  Status write_async(const std::vector<T>& host, cudaStream_t stream) { return write_async(host.data(), host.size(), stream); }
  // Copies the first n elements back to host memory (n <= size()).
  Status download(T* host, size_t n) const {
    if (n > size_) return InvalidArgument("DeviceBuffer::download: more elements than held");
    if (n == 0) return Status::Ok();
    return check(cudaMemcpy(host, ptr_, n * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }
  Status download(std::vector<T>* host) const {
    host->resize(size_);
    return download(host->data(), size_);
  }

  void reset() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }
  T* get() const { return ptr_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }

 private:
  T* ptr_ = nullptr;
  size_t size_ = 0;
};

// Page-locked host memory (cudaHostAlloc) for device-to-host results: a copy into it is truly
// asynchronous and cheaper than one into pageable memory. Grows on demand (contents lost).
template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { reset(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  Status reserve(size_t n) {
    if (n <= size_) return Status::Ok();
    reset();
    void* p = nullptr;
    SD_RETURN_IF_ERROR(check(cudaHostAlloc(&p, n * sizeof(T), cudaHostAllocDefault), "cudaHostAlloc"));
    ptr_ = static_cast<T*>(p);
    size_ = n;
    return Status::Ok();
  }
  void reset() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  size_t size_ = 0;
};

// Blocks for a grid-stride loop over n elements: enough to fill the GPU, capped (the loop covers
// the rest). n <= 0 gives 0 (callers skip the launch).
inline unsigned grid_blocks(int64_t n, int threads) {
  if (n <= 0) return 0;
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65536 ? b : 65536);
}

// Waits for the stream and reports any asynchronous error under `what`.
inline Status sync(cudaStream_t stream, const char* what) { return check(cudaStreamSynchronize(stream), what); }

// Mean milliseconds of `iters` back-to-back calls of run() on the default stream, timed with
// CUDA events (the caller warms up first). run: () -> Status.
template <class Run>
Status time_iterations(int iters, Run&& run, double* ms_per_iter) {
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  Status st = check(cudaEventCreate(&e0), "cudaEventCreate");
  if (st.ok()) st = check(cudaEventCreate(&e1), "cudaEventCreate");
  if (st.ok()) st = check(cudaEventRecord(e0, nullptr), "cudaEventRecord");
  for (int i = 0; st.ok() && i < iters; ++i) st = run();
  if (st.ok()) st = check(cudaEventRecord(e1, nullptr), "cudaEventRecord");
  if (st.ok()) st = check(cudaEventSynchronize(e1), "cudaEventSynchronize");
  float ms = 0.f;
  if (st.ok()) st = check(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  SD_RETURN_IF_ERROR(st);
  *ms_per_iter = static_cast<double>(ms) / iters;
  return Status::Ok();
}

}  // namespace sd::cuda
