// One request inside the engine: its tokens, its KV pages, and where it is in its life
// (waiting → prefilling → decoding → finished; a preempted one goes back to waiting and is
// recomputed from its tokens, keeping what it already generated).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace sd {

struct Engine::Sequence {
  Sequence(int64_t id_, const GenerationRequest& r, int32_t slot_, int32_t page_size, double now)
      : id(id_), slot(slot_), req(r), pages(page_size), tokens(r.prompt), arrival(now) {
    res.prompt_tokens = static_cast<int64_t>(r.prompt.size());
  }
  // Tokens whose KV the prefill computes: the prompt (its last row gives the first token's
  // logits), or, for a preempted sequence, everything but the root (it is already sampled).
  int64_t prefill_len() const {
    return res.tokens.empty() ? static_cast<int64_t>(tokens.size()) : static_cast<int64_t>(tokens.size()) - 1;
  }
  // Prefilled, with a sampled root: every step drafts and verifies from here.
  bool decoding() const {
    return !res.tokens.empty() && pages.num_tokens() == static_cast<int64_t>(tokens.size()) - 1;
  }

  int64_t id;
  int32_t slot;  // the drafter's handle
  GenerationRequest req;
  GenerationResult res;
  SeqPages pages;               // KV of tokens[0, pages.num_tokens())
  std::vector<int32_t> tokens;  // prompt + generated; once decoding, tokens.back() is the root
  RadixCache::NodeId cache_node = RadixCache::kRoot;  // locked prefix-cache node (its pages are shared)
  ChainLengthPolicy::Acceptance acceptance;
  bool drafted_last_step = false;  // then this step's drafting time is a steady-state sample
  double arrival;
  double prefill_start = 0;
  std::vector<int32_t> new_tokens;  // committed during the current step
  std::string finish_reason;        // set when finished
};

}  // namespace sd
