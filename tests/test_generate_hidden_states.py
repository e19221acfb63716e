"""GenerationRequest.hidden_state_layers: generation records the residual stream after the named
layers for every token the target reads (EAGLE-3 training data without a second pass). The
reference is transformers' hidden_states on the whole generated sequence (float32 weights,
max |diff| ~1e-5 measured -> atol 1e-4), and the engine's own prompt_hidden_states; under
batching, chunked prefill, preemption and the prefix cache alike."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_no_blocks_held, load_llm, prompt, torch, write_checkpoint

from specdec_native import _core

LAYERS = [2, 0, 3]  # any order; 3 is the last layer (before the final norm)
N_LAYERS = 4
MAX_TOKENS = [12, 5, 9]
PROMPT_LENS = [37, 8, 21]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    path = tmp_path_factory.mktemp("hidden")
    model = write_checkpoint(path, "qwen2", seed=11, num_hidden_layers=N_LAYERS)
    return path, model


def _request(ids, max_tokens, layers=LAYERS):
    r = _core.GenerationRequest()
    r.prompt = ids
    s = _core.SamplingConfig()
    s.temperature = 0.0
    r.sampling = s
    r.max_tokens = max_tokens
    r.ignore_eos = True
    r.hidden_state_layers = layers
    return r


def _prompts():
    return [prompt(n, seed=40 + i) for i, n in enumerate(PROMPT_LENS)]


def _reference(model, ids):
    """[len(ids), len(LAYERS), H] from transformers: hidden_states[l + 1] is layer l's output,
    except the last, which transformers returns after the final norm: take it from a hook."""
    raw = {}
    hook = model.model.layers[N_LAYERS - 1].register_forward_hook(
        lambda m, args, out: raw.__setitem__("last", out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    finally:
        hook.remove()
    cols = [raw["last"][0] if layer == N_LAYERS - 1 else hs[layer + 1][0] for layer in LAYERS]
    return torch.stack(cols, dim=1).numpy()


def _check(results, prompts, model, llm, H):
    for ids, res in zip(prompts, results):
        seq = ids + list(res.tokens)
        got = res.hidden_states
        assert got.shape == (len(seq) - 1, len(LAYERS) * H)  # every token the target read
        got = got.reshape(len(seq) - 1, len(LAYERS), H)
        np.testing.assert_allclose(got, _reference(model, seq[:-1]), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got, llm.engine.prompt_hidden_states(seq[:-1], LAYERS), rtol=1e-5, atol=1e-5)


def test_batched_generation_records_every_position(target):
    path, model = target
    llm = load_llm(path, max_num_seqs=2, prefill_chunk=16)  # 3 requests, 2 at a time, chunked prompts
    prompts = _prompts()
    plain = _request(prompt(15, seed=9), 6, layers=[])  # a request that records nothing, in the same batches
    results = llm.engine.generate([_request(p, n) for p, n in zip(prompts, MAX_TOKENS)] + [plain])
    assert [len(r.tokens) for r in results[:3]] == MAX_TOKENS
    _check(results[:3], prompts, model, llm, model.config.hidden_size)
    assert results[3].hidden_states.shape == (0, 0)
    assert_no_blocks_held(llm.engine)


def test_recording_under_preemption(target):
    path, model = target
    # 15 usable blocks of 4 tokens; three sequences that grow to 9 blocks each
    llm = load_llm(path, page_size=4, num_blocks=16, max_num_seqs=3, prefill_chunk=16)
    prompts = [prompt(20, seed=60 + i) for i in range(3)]
    results = llm.engine.generate([_request(p, 16) for p in prompts])
    assert sum(r.preemptions for r in results) > 0  # recomputed sequences overwrite their rows
    _check(results, prompts, model, llm, model.config.hidden_size)
    assert_no_blocks_held(llm.engine)


def test_a_recorded_prompt_is_computed_not_served_from_the_prefix_cache(target):
    path, model = target
    llm = load_llm(path)
    prompts = _prompts()[:1]
    first = llm.engine.generate([_request(prompts[0], 4, layers=[])])[0]  # caches the prompt's pages
    again = llm.engine.generate([_request(prompts[0], 4, layers=[])])[0]
    assert again.cached_prompt_tokens > 0 and list(again.tokens) == list(first.tokens)
    recorded = llm.engine.generate([_request(prompts[0], 4)])
    assert recorded[0].cached_prompt_tokens == 0
    _check(recorded, prompts, model, llm, model.config.hidden_size)


def test_bad_layers_and_drafters_are_refused_and_lose_nothing(target):
    path, _ = target
    llm = load_llm(path)
    ids = prompt(10, seed=1)
    with pytest.raises(ValueError, match=r"hidden state layer 4 is out of range \[0, 4\)"):
        llm.engine.generate([_request(ids, 3, layers=[0, 4])])
    with pytest.raises(ValueError, match="out of range"):
        llm.engine.generate([_request(ids, 3, layers=[-1])])
    assert len(llm.engine.generate([_request(ids, 3)])[0].tokens) == 3  # still serves
    spec = load_llm(path, speculative={"method": "ngram", "num_speculative_tokens": 3})
    with pytest.raises(ValueError, match="needs autoregressive decoding"):
        spec.engine.generate([_request(ids, 3)])
    assert len(spec.engine.generate([_request(ids, 3, layers=[])])[0].tokens) == 3
    assert_no_blocks_held(spec.engine)


def test_an_aborted_request_still_has_one_row_per_token_read(target):
    """Aborted mid-decode (on_token returns 2 = abort all): the rows cover the prompt and the
    tokens committed so far, and equal the reference there."""
    path, model = target
    llm = load_llm(path, max_num_seqs=2)
    prompts = _prompts()[:2]
    seen = []
    results = llm.engine.generate([_request(p, 20) for p in prompts],
                                  lambda req, tok: seen.append(req) or (2 if len(seen) >= 7 else 0))
    assert all(r.finish_reason == "abort" for r in results) and all(0 < len(r.tokens) < 20 for r in results)
    _check(results, prompts, model, llm, model.config.hidden_size)
