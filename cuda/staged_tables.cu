#include "cuda/staged_tables.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace sd::cuda {

namespace {
constexpr size_t kAlign = 256;  // every region starts on a 256-byte boundary (any element type)
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

StagedTables::~StagedTables() {
  if (host_ != nullptr) cudaFreeHost(host_);
  if (dev_ != nullptr) cudaFree(dev_);
}

Status StagedTables::layout(const std::vector<Table>& tables) {
  if (capacity_.size() != tables.size()) {
    if (!capacity_.empty()) return Status(StatusCode::kInternal, "StagedTables: the number of tables changed");
    capacity_.assign(tables.size(), 0);
  }
  bool grow = offsets_.empty() || host_ == nullptr;  // (after a failed allocation too)
  for (size_t i = 0; i < tables.size(); ++i)
    if (tables[i].bytes > capacity_[i] || tables[i].reserve > capacity_[i]) {
      capacity_[i] = align_up(std::max({2 * tables[i].bytes, tables[i].reserve, kAlign}));
      grow = true;
    }
  if (!grow) return Status::Ok();
  offsets_.assign(tables.size(), 0);
  size_t total = 0;
  for (size_t i = 0; i < tables.size(); ++i) offsets_[i] = total, total += capacity_[i];
  if (total <= size_) return Status::Ok();
  if (host_ != nullptr) cudaFreeHost(host_);
  if (dev_ != nullptr) cudaFree(dev_);
  host_ = dev_ = nullptr;
  size_ = 0;
  void* h = nullptr;
  void* d = nullptr;
  SD_RETURN_IF_ERROR(check(cudaHostAlloc(&h, total, cudaHostAllocDefault), "cudaHostAlloc (forward tables)"));
  host_ = static_cast<uint8_t*>(h);
  SD_RETURN_IF_ERROR(check(cudaMalloc(&d, total), "cudaMalloc (forward tables)"));
  dev_ = static_cast<uint8_t*>(d);
  size_ = total;
  return Status::Ok();
}

Status StagedTables::upload(const std::vector<Table>& tables, cudaStream_t stream) {
  SD_RETURN_IF_ERROR(layout(tables));
  size_t end = 0;
  for (size_t i = 0; i < tables.size(); ++i) {
    if (tables[i].bytes == 0) continue;
    std::memcpy(host_ + offsets_[i], tables[i].data, tables[i].bytes);
    end = std::max(end, offsets_[i] + tables[i].bytes);
  }
  if (end == 0) return Status::Ok();
  return check(cudaMemcpyAsync(dev_, host_, end, cudaMemcpyHostToDevice, stream), "forward tables H2D");
}

}  // namespace sd::cuda
