#include "io/json.h"

#include <charconv>
#include <cmath>
#include <new>
#include <string>
#include <system_error>

namespace sd {
namespace json {

const char* type_name(Type t) {
  switch (t) {
    case Type::kNull: return "null";
    case Type::kBool: return "bool";
    case Type::kNumber: return "number";
    case Type::kString: return "string";
    case Type::kArray: return "array";
    case Type::kObject: return "object";
  }
  return "?";
}

const Value* Value::find(const std::string& key) const {
  if (type != Type::kObject) return nullptr;
  for (const Member& m : object)
    if (m.first == key) return &m.second;
  return nullptr;
}

size_t Value::count(const std::string& key) const {
  if (type != Type::kObject) return 0;
  size_t n = 0;
  for (const Member& m : object)
    if (m.first == key) ++n;
  return n;
}

namespace {

class Parser {
 public:
  Parser(const char* data, size_t len)
      : p_(reinterpret_cast<const unsigned char*>(data)), len_(len) {}

  Status run(Value* out) {
    skip_ws();
    SD_RETURN_IF_ERROR(parse_value(out, 0));
    skip_ws();
    if (pos_ != len_) return error("unexpected trailing data after the JSON value");
    return Status::Ok();
  }

 private:
  const unsigned char* p_;
  size_t len_;
  size_t pos_ = 0;

  Status error(const std::string& what) const { return error_at(pos_, what); }
  Status error_at(size_t at, const std::string& what) const {
    return CorruptFile("invalid JSON at byte " + std::to_string(at) + ": " + what);
  }
  std::string describe_here() const {
    if (pos_ >= len_) return "end of input";
    const unsigned char c = p_[pos_];
    if (c >= 0x20 && c < 0x7f) return std::string("'") + static_cast<char>(c) + "'";
    static const char* hex = "0123456789abcdef";
    return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
  }

  bool at_end() const { return pos_ >= len_; }

  void skip_ws() {
    while (pos_ < len_) {
      const unsigned char c = p_[pos_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
        ++pos_;
      else
        break;
    }
  }

  bool match_literal(const char* lit) {
    size_t i = 0;
    for (; lit[i]; ++i)
      if (pos_ + i >= len_ || p_[pos_ + i] != static_cast<unsigned char>(lit[i])) return false;
    pos_ += i;
    return true;
  }

  Status parse_value(Value* v, int depth) {
    if (at_end()) return error("expected a value, found end of input");
    const unsigned char c = p_[pos_];
    switch (c) {
      case '{': return parse_object(v, depth + 1);
      case '[': return parse_array(v, depth + 1);
      case '"':
        v->type = Type::kString;
        return parse_string(&v->string);
      case 't':
        if (!match_literal("true")) return error("invalid literal (expected true)");
        v->type = Type::kBool;
        v->boolean = true;
        return Status::Ok();
      case 'f':
        if (!match_literal("false")) return error("invalid literal (expected false)");
        v->type = Type::kBool;
        v->boolean = false;
        return Status::Ok();
      case 'n':
        if (!match_literal("null")) return error("invalid literal (expected null)");
        v->type = Type::kNull;
        return Status::Ok();
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number(v);
        return error("expected a value, found " + describe_here());
    }
  }

  Status check_depth(int depth) const {
    if (depth > kMaxDepth)
      return error("nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    return Status::Ok();
  }

  Status parse_array(Value* v, int depth) {
    SD_RETURN_IF_ERROR(check_depth(depth));
    v->type = Type::kArray;
    ++pos_;  // '['
    skip_ws();
    if (!at_end() && p_[pos_] == ']') {
      ++pos_;
      return Status::Ok();
    }
    for (;;) {
      v->array.emplace_back();
      SD_RETURN_IF_ERROR(parse_value(&v->array.back(), depth));
      skip_ws();
      if (at_end()) return error("unterminated array (expected ',' or ']')");
      const unsigned char c = p_[pos_];
      if (c == ',') {
        ++pos_;
        skip_ws();
        continue;
      }
      if (c == ']') {
        ++pos_;
        return Status::Ok();
      }
      return error("expected ',' or ']' in array, found " + describe_here());
    }
  }

  Status parse_object(Value* v, int depth) {
    SD_RETURN_IF_ERROR(check_depth(depth));
    v->type = Type::kObject;
    ++pos_;  // '{'
    skip_ws();
    if (!at_end() && p_[pos_] == '}') {
      ++pos_;
      return Status::Ok();
    }
    for (;;) {
      if (at_end() || p_[pos_] != '"')
        return error("expected a string key in object, found " + describe_here());
      v->object.emplace_back();
      Member& m = v->object.back();
      SD_RETURN_IF_ERROR(parse_string(&m.first));
      skip_ws();
      if (at_end() || p_[pos_] != ':')
        return error("expected ':' after object key, found " + describe_here());
      ++pos_;
      skip_ws();
      SD_RETURN_IF_ERROR(parse_value(&m.second, depth));
      skip_ws();
      if (at_end()) return error("unterminated object (expected ',' or '}')");
      const unsigned char c = p_[pos_];
      if (c == ',') {
        ++pos_;
        skip_ws();
        continue;
      }
      if (c == '}') {
        ++pos_;
        return Status::Ok();
      }
      return error("expected ',' or '}' in object, found " + describe_here());
    }
  }

  static int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // Reads the 4 hex digits after "\u" (pos_ points at the first digit).
  Status read_hex4(uint32_t* out) {
    if (len_ - pos_ < 4) return error("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const int h = hex_value(p_[pos_ + i]);
      if (h < 0) return error_at(pos_ + i, "invalid hex digit in \\u escape");
      v = (v << 4) | static_cast<uint32_t>(h);
    }
    pos_ += 4;
    *out = v;
    return Status::Ok();
  }

  static void append_utf8(std::string* s, uint32_t cp) {
    if (cp < 0x80) {
      s->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      s->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      s->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      s->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  // Length of the valid UTF-8 sequence starting at pos_ (lead byte >= 0x80), or 0 if invalid
  // (overlong forms, surrogates and code points above U+10FFFF are invalid).
  size_t utf8_sequence_length() const {
    const size_t left = len_ - pos_;
    const unsigned char* s = p_ + pos_;
    const unsigned char c = s[0];
    auto cont = [&](size_t i, unsigned char lo, unsigned char hi) {
      return i < left && s[i] >= lo && s[i] <= hi;
    };
    if (c >= 0xC2 && c <= 0xDF) return cont(1, 0x80, 0xBF) ? 2 : 0;
    if (c == 0xE0) return cont(1, 0xA0, 0xBF) && cont(2, 0x80, 0xBF) ? 3 : 0;
    if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
      return cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF) ? 3 : 0;
    if (c == 0xED) return cont(1, 0x80, 0x9F) && cont(2, 0x80, 0xBF) ? 3 : 0;
    if (c == 0xF0)
      return cont(1, 0x90, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
    if (c >= 0xF1 && c <= 0xF3)
      return cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
    if (c == 0xF4)
      return cont(1, 0x80, 0x8F) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
    return 0;
  }

  // pos_ points at the opening quote.
  Status parse_string(std::string* out) {
    const size_t start = pos_;
    ++pos_;
    out->clear();
    for (;;) {
      if (at_end()) return error_at(start, "unterminated string");
      const unsigned char c = p_[pos_];
      if (c == '"') {
        ++pos_;
        return Status::Ok();
      }
      if (c < 0x20) return error("unescaped control character in string");
      if (c < 0x80 && c != '\\') {
        // Copy a run of plain ASCII at once.
        size_t e = pos_ + 1;
        while (e < len_ && p_[e] >= 0x20 && p_[e] < 0x80 && p_[e] != '"' && p_[e] != '\\') ++e;
        out->append(reinterpret_cast<const char*>(p_ + pos_), e - pos_);
        pos_ = e;
        continue;
      }
      if (c >= 0x80) {
        const size_t n = utf8_sequence_length();
        if (n == 0) return error("invalid UTF-8 in string");
        out->append(reinterpret_cast<const char*>(p_ + pos_), n);
        pos_ += n;
        continue;
      }
      // Escape.
      const size_t esc = pos_;
      ++pos_;
      if (at_end()) return error_at(start, "unterminated string");
      const unsigned char e = p_[pos_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp = 0;
          SD_RETURN_IF_ERROR(read_hex4(&cp));
          if (cp >= 0xDC00 && cp <= 0xDFFF)
            return error_at(esc, "lone low surrogate in \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (len_ - pos_ < 2 || p_[pos_] != '\\' || p_[pos_ + 1] != 'u')
              return error_at(esc, "high surrogate in \\u escape not followed by a low surrogate");
            pos_ += 2;
            uint32_t lo = 0;
            SD_RETURN_IF_ERROR(read_hex4(&lo));
            if (lo < 0xDC00 || lo > 0xDFFF)
              return error_at(esc, "high surrogate in \\u escape not followed by a low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          return error_at(esc, "invalid escape sequence in string");
      }
    }
  }

  static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

  Status parse_number(Value* v) {
    const size_t start = pos_;
    bool negative = false;
    if (p_[pos_] == '-') {
      negative = true;
      ++pos_;
    }
    if (at_end() || !is_digit(p_[pos_])) return error("expected a digit in number");
    const size_t int_begin = pos_;
    if (p_[pos_] == '0') {
      ++pos_;
      if (!at_end() && is_digit(p_[pos_])) return error_at(start, "leading zero in number");
    } else {
      while (!at_end() && is_digit(p_[pos_])) ++pos_;
    }
    const size_t int_end = pos_;
    bool integral_syntax = true;
    if (!at_end() && p_[pos_] == '.') {
      integral_syntax = false;
      ++pos_;
      if (at_end() || !is_digit(p_[pos_])) return error("expected a digit after '.' in number");
      while (!at_end() && is_digit(p_[pos_])) ++pos_;
    }
    long exponent = 0;
    if (!at_end() && (p_[pos_] == 'e' || p_[pos_] == 'E')) {
      integral_syntax = false;
      ++pos_;
      bool exp_negative = false;
      if (!at_end() && (p_[pos_] == '+' || p_[pos_] == '-')) {
        exp_negative = p_[pos_] == '-';
        ++pos_;
      }
      if (at_end() || !is_digit(p_[pos_])) return error("expected a digit in number exponent");
      while (!at_end() && is_digit(p_[pos_])) {
        if (exponent < 100000) exponent = exponent * 10 + (p_[pos_] - '0');
        ++pos_;
      }
      if (exp_negative) exponent = -exponent;
    }
    const size_t end = pos_;
    v->type = Type::kNumber;

    // Exact integer value when the literal has integer syntax and fits in int64.
    v->is_int = false;
    v->integer = 0;
    if (integral_syntax) {
      uint64_t mag = 0;
      bool overflow = false;
      for (size_t i = int_begin; i < int_end; ++i) {
        const uint64_t d = p_[i] - '0';
        if (mag > (UINT64_MAX - d) / 10) {
          overflow = true;
          break;
        }
        mag = mag * 10 + d;
      }
      const uint64_t limit = negative ? (uint64_t{1} << 63) : (uint64_t{1} << 63) - 1;
      if (!overflow && mag <= limit) {
        v->is_int = true;
        v->integer = negative ? static_cast<int64_t>(0 - mag) : static_cast<int64_t>(mag);
      }
    }

    double d = 0.0;
    const char* b = reinterpret_cast<const char*>(p_ + start);
    const char* e = reinterpret_cast<const char*>(p_ + end);
    const std::from_chars_result r = std::from_chars(b, e, d, std::chars_format::general);
    if (r.ec == std::errc::result_out_of_range) {
      // Overflow or underflow: tell them apart by the decimal magnitude of the literal.
      size_t first_nz = int_begin;
      while (first_nz < int_end && p_[first_nz] == '0') ++first_nz;
      long magnitude = static_cast<long>(int_end - first_nz) + exponent;
      if (first_nz == int_end) {
        // Integer part is zero: count leading zeros of the fraction.
        size_t i = int_end + 1;
        long zeros = 0;
        while (i < end && p_[i] == '0') {
          ++zeros;
          ++i;
        }
        magnitude = exponent - zeros;
      }
      if (magnitude > 0) return error_at(start, "number out of the range of a double");
      d = negative ? -0.0 : 0.0;
    } else if (r.ec != std::errc() || r.ptr != e) {
      return error_at(start, "malformed number");
    }
    v->number = d;
    return Status::Ok();
  }
};

}  // namespace

Status parse(const char* data, size_t len, Value* out) {
  if (out == nullptr) return InvalidArgument("json::parse: out is null");
  if (data == nullptr && len != 0) return InvalidArgument("json::parse: data is null");
  try {
    *out = Value();
    Parser parser(data, len);
    return parser.run(out);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kInternal, "json::parse: out of memory");
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, std::string("json::parse: ") + e.what());
  }
}

}  // namespace json
}  // namespace sd
