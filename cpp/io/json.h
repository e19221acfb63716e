// A small, strict JSON parser (RFC 8259) for file headers (safetensors, tokenizer configs).
//
// Strict means: no comments, no trailing commas, no NaN/Infinity, no leading zeros, no control
// characters inside strings, strings must be valid UTF-8, lone surrogates in \u escapes are
// rejected, nesting is limited to kMaxDepth, and nothing but whitespace may follow the value.
// Errors come back as CorruptFile statuses naming the byte offset; no exception escapes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace sd {
namespace json {

constexpr int kMaxDepth = 64;

enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

const char* type_name(Type t);  // "null", "bool", "number", "string", "array", "object"

struct Value;
using Member = std::pair<std::string, Value>;

struct Value {
  Type type = Type::kNull;
  bool boolean = false;
  // Numbers: always as a double; is_int is true when the literal had integer syntax (no
  // fraction, no exponent) and its exact value fits in int64, in which case `integer` holds it.
  double number = 0.0;
  bool is_int = false;
  int64_t integer = 0;
  std::string string;
  std::vector<Value> array;
  std::vector<Member> object;  // in document order; duplicate keys are kept as they appear

  bool is_null() const { return type == Type::kNull; }
  bool is_bool() const { return type == Type::kBool; }
  bool is_number() const { return type == Type::kNumber; }
  bool is_integer() const { return type == Type::kNumber && is_int; }
  bool is_string() const { return type == Type::kString; }
  bool is_array() const { return type == Type::kArray; }
  bool is_object() const { return type == Type::kObject; }
  const char* type_str() const { return type_name(type); }

  // First member named `key` of an object, or nullptr (also when this is not an object).
  const Value* find(const std::string& key) const;
  // How many members of an object are named `key`.
  size_t count(const std::string& key) const;
};

// Parses exactly one JSON value (surrounded by optional whitespace) from data[0, len).
// On error *out is left in an unspecified state and a CorruptFile status says what was wrong
// and at which byte offset.
Status parse(const char* data, size_t len, Value* out);

}  // namespace json
}  // namespace sd
