// Bit-packed tree masks in FlashInfer's layout (header-only, plain C++: the CPU side may use it).
//
// The CPU op's custom mask (sd::ops::paged_attention) is one uint8 per entry: for request b a
// row-major qo_len x kv_len matrix starting at mask[mask_indptr[b]] (indptr in ENTRIES).
// The packed form follows flashinfer.segment_packbits(mask, indptr, bitorder="little"): each
// request's segment is packed on its own, padded to a whole byte, and the segments are
// concatenated; packed_indptr[b] is the BYTE offset of request b (packed_indptr[0] = 0,
// packed_indptr[b + 1] = packed_indptr[b] + ceil(n_b / 8), n_b = mask_indptr[b+1] - mask_indptr[b]).
// Inside a segment, entry i (= row * kv_len + col) is bit (i % 8) of byte i / 8 (little bit
// order: numpy.packbits(seg, bitorder="little")).
#pragma once
#include <cstdint>
#include <vector>

namespace sd::cuda {

// Bytes a segment of n mask entries takes once packed.
inline int64_t packed_mask_bytes(int64_t n) { return (n + 7) / 8; }

// Packs `batch` segments (mask_indptr[b] .. mask_indptr[b + 1], entries; nonzero = visible).
// The caller has checked that mask_indptr is non-decreasing and non-negative.
inline void pack_mask_bits(const uint8_t* mask, const int64_t* mask_indptr, int32_t batch,
                           std::vector<uint8_t>* packed, std::vector<int64_t>* packed_indptr) {
  packed_indptr->assign(static_cast<size_t>(batch) + 1, 0);
  for (int32_t b = 0; b < batch; ++b)
    (*packed_indptr)[b + 1] = (*packed_indptr)[b] + packed_mask_bytes(mask_indptr[b + 1] - mask_indptr[b]);
  packed->assign(static_cast<size_t>((*packed_indptr)[batch]), 0);
  for (int32_t b = 0; b < batch; ++b) {
    const uint8_t* seg = mask + mask_indptr[b];
    uint8_t* out = packed->data() + (*packed_indptr)[b];
    const int64_t n = mask_indptr[b + 1] - mask_indptr[b];
    for (int64_t i = 0; i < n; ++i)
      if (seg[i]) out[i >> 3] = static_cast<uint8_t>(out[i >> 3] | (1u << (i & 7)));
  }
}

// Entry i of a packed segment (the inverse, for host-side checks).
inline bool mask_bit(const uint8_t* packed_segment, int64_t i) {
  return (packed_segment[i >> 3] >> (i & 7)) & 1u;
}

}  // namespace sd::cuda
