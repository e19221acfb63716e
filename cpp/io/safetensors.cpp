#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <set>
#include <utility>

#include "io/json.h"

namespace sd {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // 100 MB, as the reference does

std::string errno_text(int err) { return std::string(std::strerror(err)); }

// "'name'" with non-printable bytes escaped, so an error message stays one readable line.
std::string quoted(const std::string& s) {
  std::string out = "'";
  static const char* hex = "0123456789abcdef";
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  out += "'";
  return out;
}

std::string describe(const json::Value& v) {
  if (v.is_number()) {
    if (v.is_int) return "number " + std::to_string(v.integer);
    return "non-integer number";
  }
  return v.type_str();
}

// Reads a JSON array of non-negative int64s into *out; `what` names the field in errors.
bool read_int_array(const json::Value& v, std::vector<int64_t>* out, std::string* why) {
  if (!v.is_array()) {
    *why = std::string("expected an array of non-negative integers, found ") + describe(v);
    return false;
  }
  out->clear();
  for (size_t i = 0; i < v.array.size(); ++i) {
    const json::Value& e = v.array[i];
    if (!e.is_integer() || e.integer < 0) {
      *why = "expected a non-negative integer at index " + std::to_string(i) + ", found " +
             describe(e);
      return false;
    }
    out->push_back(e.integer);
  }
  return true;
}

struct Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr != nullptr) munmap(addr, size);
  }
};

}  // namespace

int64_t safetensors_dtype_size(const std::string& dtype) {
  static const std::pair<const char*, int64_t> kSizes[] = {
      {"F64", 8},     {"F32", 4},     {"F16", 2},      {"BF16", 2},     {"I64", 8},
      {"I32", 4},     {"I16", 2},     {"I8", 1},       {"U64", 8},      {"U32", 4},
      {"U16", 2},     {"U8", 1},      {"BOOL", 1},     {"F8_E4M3", 1},  {"F8_E5M2", 1},
      {"F8_E8M0", 1}, {"C64", 8},
  };
  for (const auto& e : kSizes)
    if (dtype == e.first) return e.second;
  return 0;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return nullptr;
  return &tensors_[it->second];
}

Status SafetensorsFile::open(const std::string& path, std::unique_ptr<SafetensorsFile>* out) {
  if (out == nullptr) return InvalidArgument("SafetensorsFile::open: out is null");
  out->reset();
  try {
    const std::string where = "safetensors file '" + path + "'";

    // ---- map the file -------------------------------------------------------------------
    int fd;
    do {
      fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return IOError(where + ": cannot open: " + errno_text(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      return IOError(where + ": cannot stat: " + errno_text(err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      return IOError(where + ": not a regular file");
    }
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);
    if (file_size < 8) {
      ::close(fd);
      return CorruptFile(where + ": file is " + std::to_string(file_size) +
                         " bytes, shorter than the 8-byte header-size prefix");
    }
    if (file_size > static_cast<uint64_t>(SIZE_MAX)) {
      ::close(fd);
      return IOError(where + ": file too large to map");
    }
    Mapping mapping;
    mapping.size = static_cast<size_t>(file_size);
    void* addr = mmap(nullptr, mapping.size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int map_err = errno;
    ::close(fd);
    if (addr == MAP_FAILED) return IOError(where + ": cannot mmap: " + errno_text(map_err));
    mapping.addr = addr;
    const uint8_t* base = static_cast<const uint8_t*>(addr);

    // ---- header ---------------------------------------------------------------------------
    uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | base[i];
    if (header_size > kMaxHeaderBytes)
      return CorruptFile(where + ": header size " + std::to_string(header_size) +
                         " bytes is larger than the " + std::to_string(kMaxHeaderBytes) +
                         "-byte limit");
    if (header_size > file_size - 8)
      return CorruptFile(where + ": header size " + std::to_string(header_size) +
                         " bytes exceeds the " + std::to_string(file_size - 8) +
                         " bytes that follow the 8-byte prefix (file truncated?)");
    const uint8_t* data = base + 8 + header_size;
    const uint64_t data_size = file_size - 8 - header_size;

    json::Value root;
    const Status js =
        json::parse(reinterpret_cast<const char*>(base + 8), static_cast<size_t>(header_size), &root);
    if (!js.ok()) {
      if (js.code() != StatusCode::kCorruptFile) return Status(js.code(), where + ": " + js.message());
      return CorruptFile(where + ": header is not valid JSON (" + js.message() +
                         "; the header starts at file offset 8)");
    }
    if (!root.is_object())
      return CorruptFile(where + ": header must be a JSON object, found " + root.type_str());

    // ---- entries --------------------------------------------------------------------------
    std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
    f->path_ = path;
    std::set<std::string> seen;
    bool have_metadata = false;
    struct Range {
      uint64_t begin, end;
      size_t idx;
    };
    std::vector<Range> ranges;
    ranges.reserve(root.object.size());

    for (const json::Member& m : root.object) {
      const std::string& name = m.first;
      const json::Value& v = m.second;
      if (name == "__metadata__") {
        if (have_metadata) return CorruptFile(where + ": duplicate \"__metadata__\" entry");
        have_metadata = true;
        if (!v.is_object())
          return CorruptFile(where + ": \"__metadata__\" must be an object of string to string, "
                             "found " + std::string(v.type_str()));
        for (const json::Member& kv : v.object) {
          if (!kv.second.is_string())
            return CorruptFile(where + ": \"__metadata__\" value for key " + quoted(kv.first) +
                               " must be a string, found " + kv.second.type_str());
          if (f->metadata_.count(kv.first))
            return CorruptFile(where + ": duplicate key " + quoted(kv.first) +
                               " in \"__metadata__\"");
          f->metadata_[kv.first] = kv.second.string;
        }
        continue;
      }

      const std::string tw = where + ": tensor " + quoted(name);
      if (!seen.insert(name).second) return CorruptFile(tw + ": duplicate tensor name in header");
      if (!v.is_object())
        return CorruptFile(tw + ": entry must be an object with dtype, shape and data_offsets, "
                                "found " + std::string(v.type_str()));
      for (const char* key : {"dtype", "shape", "data_offsets"}) {
        const size_t n = v.count(key);
        if (n == 0) return CorruptFile(tw + ": missing \"" + key + "\"");
        if (n > 1) return CorruptFile(tw + ": duplicate \"" + key + "\" key");
      }

      const json::Value& dt = *v.find("dtype");
      if (!dt.is_string())
        return CorruptFile(tw + ": \"dtype\" must be a string, found " + describe(dt));
      const int64_t esize = safetensors_dtype_size(dt.string);
      if (esize == 0) {
        if (dt.string == "F4" || dt.string == "F6_E2M3" || dt.string == "F6_E3M2")
          return Unsupported(tw + ": sub-byte dtype " + quoted(dt.string) + " is not supported");
        return CorruptFile(tw + ": unknown dtype " + quoted(dt.string) +
                           " (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, "
                           "U16, U8, BOOL, F8_E4M3, F8_E5M2, F8_E8M0, C64)");
      }

      TensorView t;
      t.name = name;
      t.dtype = dt.string;
      std::string why;
      if (!read_int_array(*v.find("shape"), &t.shape, &why))
        return CorruptFile(tw + ": invalid \"shape\": " + why);

      std::vector<int64_t> offs;
      if (!read_int_array(*v.find("data_offsets"), &offs, &why))
        return CorruptFile(tw + ": invalid \"data_offsets\": " + why);
      if (offs.size() != 2)
        return CorruptFile(tw + ": \"data_offsets\" must have 2 entries [begin, end], found " +
                           std::to_string(offs.size()));
      const uint64_t begin = static_cast<uint64_t>(offs[0]);
      const uint64_t end = static_cast<uint64_t>(offs[1]);
      if (begin > end)
        return CorruptFile(tw + ": data_offsets begin " + std::to_string(begin) +
                           " is greater than end " + std::to_string(end));

      int64_t numel = 1;
      for (int64_t d : t.shape) {
        if (__builtin_mul_overflow(numel, d, &numel))
          return CorruptFile(tw + ": shape element count overflows int64");
      }
      int64_t nbytes = 0;
      if (__builtin_mul_overflow(numel, esize, &nbytes))
        return CorruptFile(tw + ": byte size of shape overflows int64");
      if (static_cast<uint64_t>(nbytes) != end - begin)
        return CorruptFile(tw + ": shape and dtype " + t.dtype + " need " +
                           std::to_string(numel) + " elements * " + std::to_string(esize) +
                           " bytes = " + std::to_string(nbytes) + " bytes, but data_offsets [" +
                           std::to_string(begin) + ", " + std::to_string(end) + "] span " +
                           std::to_string(end - begin) + " bytes");
      if (end > data_size)
        return CorruptFile(tw + ": data_offsets [" + std::to_string(begin) + ", " +
                           std::to_string(end) + "] extend past the end of the data region (" +
                           std::to_string(data_size) + " bytes; file truncated?)");
      t.data = data + begin;
      t.nbytes = nbytes;
      ranges.push_back(Range{begin, end, f->tensors_.size()});
      f->index_[name] = f->tensors_.size();
      f->tensors_.push_back(std::move(t));
    }

    // ---- overlap ---------------------------------------------------------------------------
    std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    const Range* prev = nullptr;  // the non-empty range reaching furthest so far
    for (const Range& r : ranges) {
      if (r.begin == r.end) continue;  // empty tensors occupy no bytes
      if (prev != nullptr && r.begin < prev->end)
        return CorruptFile(where + ": tensors " + quoted(f->tensors_[prev->idx].name) + " [" +
                           std::to_string(prev->begin) + ", " + std::to_string(prev->end) +
                           ") and " + quoted(f->tensors_[r.idx].name) + " [" +
                           std::to_string(r.begin) + ", " + std::to_string(r.end) +
                           ") overlap in the data region");
      if (prev == nullptr || r.end > prev->end) prev = &r;
    }

    f->map_ = mapping.addr;
    f->map_size_ = mapping.size;
    mapping.addr = nullptr;  // ownership moves to f
    *out = std::move(f);
    return Status::Ok();
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kInternal, "safetensors file '" + path + "': out of memory");
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, "safetensors file '" + path + "': " + e.what());
  }
}

Status Checkpoint::open(const std::vector<std::string>& paths, std::unique_ptr<Checkpoint>* out) {
  if (out == nullptr) return InvalidArgument("Checkpoint::open: out is null");
  out->reset();
  if (paths.empty()) return InvalidArgument("Checkpoint::open: no shard paths given");
  try {
    std::unique_ptr<Checkpoint> ck(new Checkpoint());
    std::map<std::string, size_t> owner;  // tensor name -> shard index
    for (size_t i = 0; i < paths.size(); ++i) {
      std::unique_ptr<SafetensorsFile> f;
      SD_RETURN_IF_ERROR(SafetensorsFile::open(paths[i], &f));
      for (const TensorView& t : f->tensors()) {
        auto ins = owner.emplace(t.name, i);
        if (!ins.second)
          return CorruptFile("checkpoint: tensor " + quoted(t.name) + " appears in both '" +
                             paths[ins.first->second] + "' and '" + paths[i] +
                             "' (tensor names must be unique across shards)");
        ck->by_name_[t.name] = &t;
      }
      ck->files_.push_back(std::move(f));
    }
    *out = std::move(ck);
    return Status::Ok();
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kInternal, "Checkpoint::open: out of memory");
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, std::string("Checkpoint::open: ") + e.what());
  }
}

const TensorView* Checkpoint::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> v;
  v.reserve(by_name_.size());
  for (const auto& kv : by_name_) v.push_back(kv.first);
  return v;
}

}  // namespace sd
