// The small tables a device forward needs each call (token ids, positions, KV slots, the page
// table, the packed tree mask, the attention plan) copied to the GPU in ONE transfer from pinned
// host memory, instead of one pageable copy each (~10 of them, several microseconds apiece, per
// forward: a decode step of a draft-model chain runs k + 1 forwards).
//
// Table i has a region of one device arena. A region keeps its offset while its table fits and
// grows to twice the size asked when it does not, so the device addresses a CUDA graph holds
// stay valid for many steps; when any region grows the arena is laid out again and every
// address moves (a graph then compares its recorded addresses and is captured again).
//
// NOT YET RUN ON A GPU: written and compiled without one (docs/cuda.md).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda/cuda_check.h"

namespace sd::cuda {

class StagedTables {
 public:
  struct Table {
    const void* data;
    size_t bytes;
    size_t reserve;  // a region holds at least this many bytes (sizes known to vary up to it)
  };
  template <class T>
  static Table of(const std::vector<T>& v, size_t reserve_elems = 0) {
    return Table{v.data(), v.size() * sizeof(T), reserve_elems * sizeof(T)};
  }

  StagedTables() = default;
  StagedTables(const StagedTables&) = delete;
  StagedTables& operator=(const StagedTables&) = delete;
  ~StagedTables();

  // Copies every table into the pinned buffer and queues one host-to-device copy on `stream`.
  // The pinned buffer is reused by the next call: the stream must have synchronized in between
  // (a forward ends with a sync). The number of tables must stay the same from call to call.
  Status upload(const std::vector<Table>& tables, cudaStream_t stream);
  // Table i's device address (valid until an upload lays the arena out again).
  template <class T>
  T* device(size_t i) const {
    return reinterpret_cast<T*>(dev_ + offsets_[i]);
  }

 private:
  Status layout(const std::vector<Table>& tables);

  std::vector<size_t> offsets_, capacity_;
  uint8_t* host_ = nullptr;  // pinned (cudaHostAlloc)
  uint8_t* dev_ = nullptr;
  size_t size_ = 0;
};

}  // namespace sd::cuda
