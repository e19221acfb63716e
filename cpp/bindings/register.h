// Each bindings file registers its part of the _core module.
#pragma once
#include <pybind11/pybind11.h>

void register_io(pybind11::module_& m);
void register_kv(pybind11::module_& m);
void register_ops(pybind11::module_& m);
void register_engine(pybind11::module_& m);
void register_eagle(pybind11::module_& m);
