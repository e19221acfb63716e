// Status: what every core function returns instead of throwing. Only the binding layer turns a
// non-ok Status into a Python exception (InvalidArgument -> ValueError, the rest -> RuntimeError).
#pragma once
#include <string>
#include <utility>

namespace sd {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // the caller passed something impossible (shape, id, parameter)
  kOutOfBlocks,      // the KV block allocator has too few free blocks; nothing was changed
  kIOError,          // a file could not be opened, read or mapped
  kCorruptFile,      // a file was read but its contents are inconsistent
  kUnsupported,      // a valid request this build cannot serve (architecture, dtype, option)
  kInternal,
};

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return Status(StatusCode::kInvalidArgument, std::move(m)); }
inline Status OutOfBlocks(std::string m) { return Status(StatusCode::kOutOfBlocks, std::move(m)); }
inline Status IOError(std::string m) { return Status(StatusCode::kIOError, std::move(m)); }
inline Status CorruptFile(std::string m) { return Status(StatusCode::kCorruptFile, std::move(m)); }
inline Status Unsupported(std::string m) { return Status(StatusCode::kUnsupported, std::move(m)); }

#define SD_RETURN_IF_ERROR(expr)        \
  do {                                  \
    ::sd::Status _st = (expr);          \
    if (!_st.ok()) return _st;          \
  } while (0)

}  // namespace sd
