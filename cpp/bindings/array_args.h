// Argument checks shared by the bindings: numpy arrays of the expected dtype and rank, with a
// ValueError naming the argument, what was expected and what came.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "core/dtype.h"

namespace sd_py {

namespace py = pybind11;

inline std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

template <class T>
py::array_t<T, py::array::c_style> checked(const py::handle& obj, const char* name, int ndim,
                                           const char* dtype_name) {
  if (!py::isinstance<py::array>(obj))
    throw py::value_error(std::string(name) + ": expected a numpy array of " + dtype_name);
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::value_error(std::string(name) + ": expected dtype " + dtype_name + ", got " +
                          std::string(py::str(a.dtype())));
  if (ndim >= 0 && a.ndim() != ndim)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(ndim) +
                          "-d array, got shape " + shape_of(a));
  return py::array_t<T, py::array::c_style>::ensure(a);
}

inline py::array_t<float, py::array::c_style> f32(const py::handle& o, const char* name, int ndim) {
  return checked<float>(o, name, ndim, "float32");
}
inline py::array_t<int32_t, py::array::c_style> i32(const py::handle& o, const char* name, int ndim) {
  return checked<int32_t>(o, name, ndim, "int32");
}

inline void expect_dim(const py::array& a, int axis, py::ssize_t value, const char* name,
                       const char* what) {
  if (a.shape(axis) != value)
    throw py::value_error(std::string(name) + ": expected " + what + " = " + std::to_string(value) +
                          " on axis " + std::to_string(axis) + ", got shape " + shape_of(a));
}

// A weight dtype by its name (the names Python passes: float32 ... int4).
inline sd::DType dtype_from_name(const std::string& name) {
  sd::DType t;
  if (!sd::parse_dtype_name(name, &t))
    throw py::value_error("dtype must be one of float32, bfloat16, float16, int8, int4; got '" + name + "'");
  return t;
}

}  // namespace sd_py
