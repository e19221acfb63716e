// Python bindings for the safetensors reader (used by tests and tools).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings/register.h"
#include "bindings/status_to_python.h"
#include "io/safetensors.h"

namespace py = pybind11;

namespace {

std::unique_ptr<sd::SafetensorsFile> open_file(const std::string& path) {
  std::unique_ptr<sd::SafetensorsFile> f;
  sd::Status st;
  {
    py::gil_scoped_release release;
    st = sd::SafetensorsFile::open(path, &f);
  }
  throw_if_error(st);
  return f;
}

py::dict safetensors_inspect(const std::string& path) {
  std::unique_ptr<sd::SafetensorsFile> f = open_file(path);
  py::dict out;
  for (const sd::TensorView& t : f->tensors()) {
    py::tuple shape(t.shape.size());
    for (size_t i = 0; i < t.shape.size(); ++i) shape[i] = py::int_(t.shape[i]);
    out[py::str(t.name)] = py::make_tuple(t.dtype, shape, t.nbytes);
  }
  return out;
}

py::bytes safetensors_read(const std::string& path, const std::string& name) {
  std::unique_ptr<sd::SafetensorsFile> f = open_file(path);
  const sd::TensorView* t = f->find(name);
  if (t == nullptr)
    throw_if_error(sd::InvalidArgument("safetensors file '" + path + "': no tensor named '" +
                                       name + "'"));
  return py::bytes(reinterpret_cast<const char*>(t->data), static_cast<size_t>(t->nbytes));
}

py::dict safetensors_metadata(const std::string& path) {
  std::unique_ptr<sd::SafetensorsFile> f = open_file(path);
  py::dict out;
  for (const auto& kv : f->metadata()) out[py::str(kv.first)] = py::str(kv.second);
  return out;
}

std::vector<std::string> checkpoint_names(const std::vector<std::string>& paths) {
  std::unique_ptr<sd::Checkpoint> ck;
  sd::Status st;
  {
    py::gil_scoped_release release;
    st = sd::Checkpoint::open(paths, &ck);
  }
  throw_if_error(st);
  return ck->names();
}

}  // namespace

void register_io(py::module_& m) {
  m.def("safetensors_inspect", &safetensors_inspect, py::arg("path"),
        "Validate a safetensors file; return {name: (dtype, shape tuple, nbytes)}.");
  m.def("safetensors_read", &safetensors_read, py::arg("path"), py::arg("name"),
        "Raw bytes of one tensor of a safetensors file.");
  m.def("safetensors_metadata", &safetensors_metadata, py::arg("path"),
        "The __metadata__ string map of a safetensors file.");
  m.def("checkpoint_names", &checkpoint_names, py::arg("paths"),
        "Open shards as one checkpoint (names must be unique across shards); sorted tensor names.");
}
