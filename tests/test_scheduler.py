"""Continuous batching and the prefix cache, through the engine's step API, LLM.stream and AsyncLLM.

* A request sharing a prefix with an earlier one prefills only its suffix (the engine counts the
  tokens its prefill forwards compute) and returns what a cold engine returns; the draft model's
  cache is reused too.
* Requests joining at different steps give each request's tokens alone (T = 0 and seeded
  T > 0), with and without speculation, and the same under a block budget so small that
  sequences are preempted and recomputed.
* Abort frees blocks; streaming (sync and asyncio) gives the same text as generate(); the event
  loop keeps running while the engine steps; bad input.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from helpers import (assert_no_blocks_held, gil_released_during, greedy_params, load_llm, prompt, write_checkpoint,
                     write_noisy_copy, write_tokenizer)

from specdec_native import AsyncLLM, SamplingParams, SpeculativeConfig
from specdec_native.llm import _to_request

PAGE = 16
BASE = prompt(45, seed=7)  # 2 whole pages + 13 tokens
SUFFIXES = [prompt(n, seed=20 + n) for n in (3, 9, 17, 30)]
N_TOKENS = 24


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("sched")
    target = write_checkpoint(root / "target", "llama", seed=11)
    write_noisy_copy(target, root / "draft", scale=0.1, seed=3)
    for name in ("target", "draft"):
        write_tokenizer(root / name, vocab_size=256)
    return root / "target", root / "draft"


def _llm(ckpts, spec=False, **kw):
    target, draft = ckpts
    if spec:
        kw.update(draft=str(draft), speculative=SpeculativeConfig(method="draft", num_speculative_tokens=3))
    return load_llm(target, **kw)


def _params(temperature, n=len(SUFFIXES)):
    if temperature == 0:
        return [greedy_params(N_TOKENS) for _ in range(n)]
    return [SamplingParams(max_tokens=N_TOKENS, temperature=temperature, seed=900 + i, ignore_eos=True)
            for i in range(n)]


def _alone(llm, prompts, params):
    out = []
    for p, sp in zip(prompts, params):
        out.append(llm.generate(prompt_token_ids=[p], sampling_params=sp)[0].token_ids)
        llm.engine.reset_prefix_cache()  # each one cold
    return out


def _run_staggered(engine, prompts, params, join_every=2):
    """Adds request i at step i * join_every and steps until all finish: {id: (tokens, result)}."""
    tokens = {i: [] for i in range(len(prompts))}
    results = {}
    step = 0
    while len(results) < len(prompts):
        if step % join_every == 0 and step // join_every < len(prompts):
            i = step // join_every
            engine.add_request(i, _to_request(prompts[i], params[i]))
        for u in engine.step():
            tokens[u.id].extend(u.new_tokens)
            if u.finished:
                results[u.id] = u.result
        step += 1
    for i, r in results.items():
        assert list(r.tokens) == tokens[i]  # the deltas add up to the result
    return {i: (tokens[i], results[i]) for i in results}


# ---- prefix cache ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [False, True], ids=["plain", "draft"])
def test_shared_prefix_prefills_only_the_suffix(ckpts, spec):
    cold = _llm(ckpts, spec=spec, enable_prefix_caching=False)
    warm = _llm(ckpts, spec=spec)
    first, second = BASE + SUFFIXES[0], BASE + SUFFIXES[2]
    p = greedy_params(N_TOKENS)
    expected = [cold.generate(prompt_token_ids=[x], sampling_params=p)[0].token_ids for x in (first, second)]
    assert cold.engine.stats().cached_prompt_tokens == 0

    out1 = warm.generate(prompt_token_ids=[first], sampling_params=p)[0]
    before = warm.engine.stats().prefill_tokens
    assert before == len(first)  # cold: the whole prompt
    if spec:
        assert warm.engine.draft_num_cached_blocks > 0  # the draft kept its pages too
    out2 = warm.generate(prompt_token_ids=[second], sampling_params=p)[0]
    cached = (len(BASE) // PAGE) * PAGE  # whole pages of the shared prefix
    assert out2.metrics["cached_prompt_tokens"] == cached
    assert warm.engine.stats().prefill_tokens - before == len(second) - cached  # only the suffix
    assert [out1.token_ids, out2.token_ids] == expected
    assert_no_blocks_held(warm.engine)


def test_generated_tokens_are_cached_too(ckpts):
    """A follow-up turn (prompt + reply + more) reuses the reply's pages, not just the prompt's."""
    llm = _llm(ckpts)
    first = BASE
    out = llm.generate(prompt_token_ids=[first], sampling_params=greedy_params(40))[0]
    follow = first + out.token_ids + SUFFIXES[0]
    again = llm.generate(prompt_token_ids=[follow], sampling_params=greedy_params(8))[0]
    # KV exists for every committed token but the last: whole pages of that.
    assert again.metrics["cached_prompt_tokens"] == ((len(first) + len(out.token_ids) - 1) // PAGE) * PAGE
    cold = _llm(ckpts, enable_prefix_caching=False)
    assert again.token_ids == cold.generate(prompt_token_ids=[follow], sampling_params=greedy_params(8))[0].token_ids


def test_identical_prompt_recomputes_its_last_token(ckpts):
    llm = _llm(ckpts)
    ids = prompt(48, seed=3)  # exactly 3 pages: the last page must not be matched
    p = greedy_params(6)
    a = llm.generate(prompt_token_ids=[ids], sampling_params=p)[0]
    b = llm.generate(prompt_token_ids=[ids], sampling_params=p)[0]
    assert b.metrics["cached_prompt_tokens"] == 32
    assert a.token_ids == b.token_ids


# ---- continuous batching ---------------------------------------------------------------------

@pytest.mark.parametrize("spec", [False, True], ids=["plain", "draft"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_requests_joining_mid_flight_equal_each_alone(ckpts, spec, temperature):
    llm = _llm(ckpts, spec=spec)
    prompts = [BASE + s for s in SUFFIXES]
    params = _params(temperature)
    alone = _alone(llm, prompts, params)
    together = _run_staggered(llm.engine, prompts, params)
    assert [together[i][0] for i in range(len(prompts))] == alone
    assert max(r.cached_prompt_tokens for _, r in together.values()) > 0  # later ones hit the cache
    assert_no_blocks_held(llm.engine)


@pytest.mark.parametrize("spec", [False, True], ids=["plain", "draft"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_tiny_block_budget_preempts_and_still_matches(ckpts, spec, temperature):
    """8 usable blocks for 4 sequences of 48-75 tokens: sequences are preempted (freed, then
    recomputed from their tokens) and every request still gets its own tokens."""
    llm = _llm(ckpts, spec=spec, num_blocks=9, max_num_seqs=4, prefill_chunk=32)
    prompts = [BASE[:20] + s for s in SUFFIXES]
    params = _params(temperature)
    alone = _alone(llm, prompts, params)
    together = _run_staggered(llm.engine, prompts, params, join_every=1)
    assert [together[i][0] for i in range(len(prompts))] == alone
    assert llm.engine.stats().preemptions > 0
    assert sum(r.preemptions for _, r in together.values()) == llm.engine.stats().preemptions
    assert_no_blocks_held(llm.engine)


def test_long_prompt_is_chunked_while_others_decode(ckpts):
    """With a 16-token prefill budget, a 200-token prompt takes 13 steps to prefill; a running
    request keeps committing a token at every one of them."""
    llm = _llm(ckpts, prefill_chunk=16)
    e = llm.engine
    e.add_request(0, _to_request(prompt(5, seed=1), greedy_params(40)))
    e.step()
    e.add_request(1, _to_request(prompt(200, seed=2), greedy_params(4)))
    first_token_step = None
    for step in range(1, 40):
        got = {u.id: list(u.new_tokens) for u in e.step()}
        if first_token_step is None:
            assert len(got.get(0, [])) == 1, f"step {step}: the running request stalled"
        if got.get(1) and first_token_step is None:
            first_token_step = step
    assert first_token_step == 13  # ceil(200 / 16)
    while e.has_unfinished:
        e.step()
    assert_no_blocks_held(e)


def test_abort_frees_blocks(ckpts):
    llm = _llm(ckpts, spec=True)
    e = llm.engine
    for i in range(3):
        e.add_request(i, _to_request(BASE + SUFFIXES[i], greedy_params(200)))
    for _ in range(3):
        e.step()
    assert e.stats().running == 3
    e.abort_request(1)
    e.abort_request(12345)  # unknown: ignored
    ups = e.step()
    ended = [u for u in ups if u.finished]
    assert [(u.id, u.result.finish_reason) for u in ended] == [(1, "abort")]
    e.abort_request(0)
    e.abort_request(2)
    while e.has_unfinished:
        e.step()
    assert_no_blocks_held(e)


def test_bad_requests(ckpts):
    llm = _llm(ckpts)
    e = llm.engine
    e.add_request(5, _to_request(prompt(4), greedy_params(4)))
    with pytest.raises(ValueError, match="already in use"):
        e.add_request(5, _to_request(prompt(4), greedy_params(4)))
    with pytest.raises(ValueError, match="idle engine"):
        llm.generate(prompt_token_ids=[prompt(4)], sampling_params=greedy_params(4))
    with pytest.raises(ValueError, match="out of range"):
        e.add_request(6, _to_request([3, 999], greedy_params(4)))
    with pytest.raises(ValueError, match="context"):
        e.add_request(7, _to_request(prompt(llm.max_model_len), greedy_params(4)))
    with pytest.raises(RuntimeError, match="idle engine"):
        next(llm.stream("w010 w020", greedy_params(4)))
    from specdec_native import _core
    with pytest.raises(ValueError, match="idle engine"):
        e.attach_ngram(_core.NgramOptions())
    while e.has_unfinished:
        e.step()
    assert len(llm.generate(prompt_token_ids=[prompt(4)], sampling_params=greedy_params(4))[0].token_ids) == 4


# ---- streaming -------------------------------------------------------------------------------

def test_stream_matches_generate(ckpts):
    llm = _llm(ckpts)
    text = "w010 w020 w030 w040"
    p = greedy_params(N_TOKENS)
    full = llm.generate([text], p)[0].text
    deltas = list(llm.stream(text, p))
    assert len(deltas) > 3 and "".join(deltas) == full
    stop = full.split()[4]  # a word in the middle of the output
    stopped = "".join(llm.stream(text, greedy_params(N_TOKENS, stop=[stop])))
    assert stopped == full[:full.index(stop)]
    for i, _ in enumerate(llm.stream(text, p)):  # leaving early ends the request
        if i == 2:
            break
    assert_no_blocks_held(llm.engine)


def test_async_llm_concurrent_requests_and_abort(ckpts):
    target, _ = ckpts
    llm = _llm(ckpts)
    texts = [f"w0{10 + i} w050 w060 w070 w0{20 + i}" for i in range(12)]
    expected = [o.text for o in llm.generate(texts, greedy_params(N_TOKENS))]
    engine = AsyncLLM(str(target), num_threads=2, progress=False, max_num_seqs=4)

    async def one(i):
        outs = [o async for o in engine.generate(texts[i], greedy_params(N_TOKENS), request_id=f"r{i}")]
        assert outs[-1].finished and outs[-1].finish_reason == "length"
        assert outs[-1].num_output_tokens == N_TOKENS
        return "".join(o.text for o in outs)

    async def aborted():
        got = []
        async for o in engine.generate(texts[0], greedy_params(10_000 // 50), request_id="victim"):
            got.append(o)
            if len(got) == 2:
                await engine.abort("victim")
        return got[-1]

    async def broken_off():
        async for _ in engine.generate(texts[1], greedy_params(150)):
            break  # closing the generator aborts the request

    async def ticker(stop):
        ticks = 0
        while not stop.is_set():
            await asyncio.sleep(0.001)
            ticks += 1
        return ticks

    async def main():
        stop = asyncio.Event()
        tick_task = asyncio.create_task(ticker(stop))
        results = await asyncio.gather(*[one(i) for i in range(len(texts))], aborted(), broken_off())
        stop.set()
        return results, await tick_task

    try:
        (results, ticks) = asyncio.run(main())
        assert results[:len(texts)] == expected
        assert results[len(texts)].finish_reason == "abort"
        assert ticks > 0  # the event loop ran while the engine stepped
        async def same_id_twice():
            first = engine.generate(texts[0], greedy_params(200), request_id="dup")
            await first.__anext__()
            try:
                async for _ in engine.generate(texts[1], greedy_params(4), request_id="dup"):
                    pass
            finally:
                await first.aclose()
        with pytest.raises(ValueError, match="already running"):
            asyncio.run(same_id_twice())
        with pytest.raises(ValueError, match="context"):
            async def too_long():
                async for _ in engine.generate(prompt(engine.max_model_len + 5), greedy_params(4)):
                    pass
            asyncio.run(too_long())
        deadline = time.time() + 10
        while engine.engine.has_unfinished and time.time() < deadline:
            time.sleep(0.01)
        m = engine.metrics()
        assert m["running"] == 0 and m["waiting"] == 0
        assert m["requests_finished_total"] == len(texts) + 3
        assert m["kv_blocks_free"] + m["kv_blocks_cached"] == m["kv_blocks_total"]
    finally:
        engine.shutdown()
    assert_no_blocks_held(engine.engine)


def test_step_runs_without_the_gil(ckpts):
    """One step() that prefills 250 tokens, timed from a worker thread: had step() held the GIL
    throughout, the main thread could not have advanced its count meanwhile."""
    e = _llm(ckpts).engine

    def work(timed, advanced):
        for i in range(20):
            e.add_request(i, _to_request(prompt(250, seed=i), greedy_params(2)))
            timed("step", e.step)
            while e.has_unfinished:
                e.step()
            if advanced["step"]:
                return

    assert gil_released_during(work)["step"], "the main thread never ran during step()"
