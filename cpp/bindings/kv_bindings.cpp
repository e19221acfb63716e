// The paged KV cache's bookkeeping, exposed for tests of allocation, append and rollback.
#include <pybind11/stl.h>

#include "bindings/register.h"
#include "bindings/status_to_python.h"
#include "kv/block_allocator.h"
#include "kv/seq_pages.h"

namespace py = pybind11;

void register_kv(py::module_& m) {
  py::class_<sd::BlockAllocator>(m, "BlockAllocator")
      .def(py::init<int32_t>(), py::arg("num_blocks"))
      .def("allocate",
           [](sd::BlockAllocator& a, int32_t n) {
             std::vector<int32_t> out;
             throw_if_error(a.allocate(n, &out));
             return out;
           })
      .def("incref", &sd::BlockAllocator::incref)
      .def("decref", &sd::BlockAllocator::decref)
      .def("refcount", &sd::BlockAllocator::refcount)
      .def_property_readonly("num_blocks", &sd::BlockAllocator::num_blocks)
      .def_property_readonly("num_free", &sd::BlockAllocator::num_free);

  py::class_<sd::SeqPages>(m, "SeqPages")
      .def(py::init([](int32_t page_size) {
             if (page_size <= 0) throw py::value_error("page_size must be > 0, got " + std::to_string(page_size));
             return sd::SeqPages(page_size);
           }),
           py::arg("page_size"))
      .def("append", [](sd::SeqPages& s, sd::BlockAllocator& a, int64_t n) { throw_if_error(s.append(a, n)); })
      .def("truncate", &sd::SeqPages::truncate)
      .def("release", &sd::SeqPages::release)
      .def_property_readonly("num_tokens", &sd::SeqPages::num_tokens)
      .def_property_readonly("blocks", &sd::SeqPages::blocks)
      .def_property_readonly("last_page_len", &sd::SeqPages::last_page_len);
}
