// specdec_native._core: the compiled core. Python code imports it through the package.
#include <pybind11/pybind11.h>

#include "bindings/register.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "specdec_native C++ core";
  register_io(m);
  register_kv(m);
  register_ops(m);
  register_engine(m);
  register_eagle(m);
}
