// The paged KV cache's bookkeeping, exposed for tests of allocation, append and rollback.
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "bindings/register.h"
#include "bindings/status_to_python.h"
#include "kv/block_allocator.h"
#include "kv/radix_cache.h"
#include "kv/seq_pages.h"
#include "kv/kv_window.h"

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
  m.def(
      "window_pages",
      [](const sd::SeqPages& s, int32_t sink_tokens, int64_t window_tokens) {
        if (sink_tokens < 0 || window_tokens < 0) throw py::value_error("sink and window tokens must be >= 0");
        std::vector<int32_t> blocks;
        sd::append_window_pages(s, sd::KVWindow{sink_tokens, window_tokens}, &blocks);
        return blocks;
      },
      py::arg("pages"), py::arg("sink_tokens"), py::arg("window_tokens"),
      "The blocks a sparse-KV (sinks + recent window) draft attends, in order.");

  // Bad node ids and block lists raise std::invalid_argument (ValueError); unlocking an unlocked
  // node and caching a block that is not allocated raise std::logic_error (RuntimeError).
  py::class_<sd::RadixCache>(m, "RadixCache")
      .def(py::init([](int32_t page_size, sd::BlockAllocator* alloc) {
             if (page_size <= 0) throw py::value_error("page_size must be > 0, got " + std::to_string(page_size));
             return std::make_unique<sd::RadixCache>(page_size, alloc);
           }),
           py::arg("page_size"), py::arg("allocator").none(false), py::keep_alive<1, 3>())
      .def(
          "match_prefix",
          [](sd::RadixCache& c, const std::vector<int32_t>& tokens) {
            sd::RadixCache::Match mt = c.match_prefix(tokens.data(), static_cast<int64_t>(tokens.size()));
            return py::make_tuple(mt.blocks, mt.num_tokens, mt.node);
          },
          py::arg("tokens"))
      .def(
          "insert",
          [](sd::RadixCache& c, const std::vector<int32_t>& tokens, const std::vector<int32_t>& blocks) {
            return c.insert(tokens.data(), static_cast<int64_t>(tokens.size()), blocks);
          },
          py::arg("tokens"), py::arg("blocks"))
      .def("lock", &sd::RadixCache::lock, py::arg("node"))
      .def("unlock", &sd::RadixCache::unlock, py::arg("node"))
      .def("evict", &sd::RadixCache::evict, py::arg("blocks"))
      .def("clear", &sd::RadixCache::clear)
      .def_property_readonly("page_size", &sd::RadixCache::page_size)
      .def_property_readonly("num_cached_blocks", &sd::RadixCache::num_cached_blocks)
      .def_property_readonly("num_evictable_blocks", &sd::RadixCache::num_evictable_blocks)
      .def_property_readonly("num_nodes", &sd::RadixCache::num_nodes);
}
