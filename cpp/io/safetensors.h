// Memory-mapped safetensors files with fully validated headers.
//
// File layout: 8-byte little-endian header size N, N bytes of JSON
//   {"name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"k": "v"}}
// then the data region; offsets are relative to the start of the data region.
// open() checks everything a corrupt or hostile file could get wrong (header size within the
// file, valid JSON, known dtype, shape product * element size == end - begin, begin <= end,
// offsets inside the data region, no overlapping tensors, no duplicate names) and returns a
// CorruptFile/IOError status naming the file and the tensor instead of crashing.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace sd {

struct TensorView {
  std::string name;
  std::string dtype;            // safetensors dtype string: "F32", "F16", "BF16", "I8", ...
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mapping; valid while the file is open
  int64_t nbytes = 0;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Element size in bytes of a safetensors dtype string, or 0 when unknown.
int64_t safetensors_dtype_size(const std::string& dtype);

class SafetensorsFile {
 public:
  static Status open(const std::string& path, std::unique_ptr<SafetensorsFile>* out);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint split over one or more shard files; tensor names must be unique across shards.
class Checkpoint {
 public:
  static Status open(const std::vector<std::string>& paths, std::unique_ptr<Checkpoint>* out);
  const TensorView* find(const std::string& name) const;
  std::vector<std::string> names() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> by_name_;
};

}  // namespace sd
