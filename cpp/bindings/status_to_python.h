// Turns a non-ok sd::Status into a Python exception: InvalidArgument -> ValueError, every other
// code -> RuntimeError; the exception message is the status message.
#pragma once
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "core/status.h"

inline void throw_if_error(const sd::Status& st) {
  if (st.ok()) return;
  if (st.code() == sd::StatusCode::kInvalidArgument) throw pybind11::value_error(st.message());
  throw std::runtime_error(st.message());
}
