"""The generation API on a tiny random-weight checkpoint with a tiny WordLevel tokenizer:
seeds, stopping (stop tokens, max_tokens, EOS, stop strings), text prompts, chat, metrics,
checkpoints without a tokenizer, and generation from another thread with the GIL released."""
from __future__ import annotations

import shutil
import threading

import pytest

from helpers import (expected_text, gil_released_during, greedy_params, load_llm, prompt, set_generation_eos,
                     token_text, write_checkpoint, write_tokenizer)

from specdec_native import SamplingParams

N = 24


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen")
    write_checkpoint(path, "llama", seed=21)
    write_tokenizer(path, vocab_size=256)
    return path


@pytest.fixture(scope="module")
def llm(ckpt):
    return load_llm(ckpt)


def _tokens(llm, ids, params):
    return llm.generate(prompt_token_ids=[ids], sampling_params=params)[0].token_ids


def _first_new_index(tokens, start=4):
    """An index k >= start whose token did not occur before it (so stopping on it stops at k);
    an ordinary word (id >= 6), so its text is unique too."""
    for k in range(start, len(tokens) - 1):
        if tokens[k] not in tokens[:k] and tokens[k] >= 6:
            return k
    pytest.fail(f"no fresh token in {tokens}")


# ---- seeds -----------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [{}, {"top_k": 20}, {"top_p": 0.9}, {"top_k": 50, "top_p": 0.8, "min_p": 0.01}])
def test_seeded_sampling_repeats_and_seeds_differ(llm, extra):
    ids = prompt(9, seed=1)

    def run(seed):
        return _tokens(llm, ids, SamplingParams(max_tokens=N, temperature=1.0, seed=seed, ignore_eos=True, **extra))

    a = run(5)
    assert len(a) == N
    assert run(5) == a
    others = [run(s) for s in (6, 7, 8)]
    assert all(o != a for o in others)
    assert len({tuple(o) for o in others}) == 3


def test_unseeded_sampling_varies(llm):
    ids = prompt(9, seed=2)
    runs = {tuple(_tokens(llm, ids, SamplingParams(max_tokens=N, temperature=1.0, ignore_eos=True)))
            for _ in range(3)}
    assert len(runs) > 1


def test_greedy_is_deterministic_and_ignores_seed(llm):
    ids = prompt(9, seed=3)
    a = _tokens(llm, ids, greedy_params(N, seed=1))
    assert _tokens(llm, ids, greedy_params(N, seed=2)) == a


# ---- stopping --------------------------------------------------------------------------------

def test_stop_token_ids(llm):
    ids = prompt(7, seed=4)
    full = _tokens(llm, ids, greedy_params(N))
    k = _first_new_index(full)
    out = llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(N, stop_token_ids=[full[k], 255]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == full[:k + 1]
    assert out.token_ids[-1] == full[k]


@pytest.mark.parametrize("max_tokens", [1, 2, 17])
def test_max_tokens_gives_length(llm, max_tokens):
    ids = prompt(7, seed=5)
    full = _tokens(llm, ids, greedy_params(N))
    out = llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(max_tokens))[0]
    assert out.finish_reason == "length"
    assert out.token_ids == full[:max_tokens]


def test_eos_from_generation_config(tmp_path):
    write_checkpoint(tmp_path, "llama", seed=22)
    ids = prompt(6, seed=6)
    full = _tokens(load_llm(tmp_path), ids, greedy_params(N))
    k = _first_new_index(full)
    eos = full[k]

    set_generation_eos(tmp_path, [eos])
    llm = load_llm(tmp_path)
    out = llm.generate(prompt_token_ids=[ids], sampling_params=SamplingParams(max_tokens=N, temperature=0))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == full[:k + 1]
    out = llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(N))[0]  # ignore_eos
    assert out.finish_reason == "length"
    assert out.token_ids == full

    # Without generation_config.json, config.json's eos_token_id is the EOS.
    (tmp_path / "generation_config.json").unlink()
    import json

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["eos_token_id"] = eos
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = load_llm(tmp_path).generate(prompt_token_ids=[ids], sampling_params=SamplingParams(max_tokens=N, temperature=0))[0]
    assert (out.finish_reason, out.token_ids) == ("stop", full[:k + 1])


def test_stop_strings(llm):
    ids = prompt(8, seed=7, low=6)
    free = llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(N))[0]
    full, text = free.token_ids, free.text
    assert text == expected_text(full)  # the tokenizer joins token texts with spaces
    k = _first_new_index(full)
    w = token_text(full[k])
    assert text.find(w) == len(expected_text(full[:k] + [full[k]])) - len(w)  # first occurrence: token k

    # A stop string inside one token.
    out = llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(N, stop=w))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == full[:k + 1]
    assert out.text == text[:text.find(w)]
    assert w not in out.text

    # A stop string spanning two tokens ("wABC wD"): found once the second token arrives.
    assert full[k + 1] >= 3, "pick another prompt seed: the token after k is special"
    stop = w + " " + token_text(full[k + 1])[:2]
    assert text.find(stop) == text.find(w)
    out = llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(N, stop=["zzz", stop]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == full[:k + 2]
    assert out.text == text[:text.find(stop)]

    # A stop string that never appears changes nothing.
    out = llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(N, stop="never"))[0]
    assert (out.finish_reason, out.token_ids, out.text) == ("length", full, text)


def test_stop_strings_batched_independently(llm):
    prompts = [prompt(8, seed=s, low=6) for s in (8, 9, 10)]
    free = llm.generate(prompt_token_ids=prompts, sampling_params=greedy_params(N))
    params, expect = [], []
    for i, o in enumerate(free):
        if i == 1:  # no stop string for this one
            params.append(greedy_params(N))
            expect.append(o.token_ids)
            continue
        k = _first_new_index(o.token_ids)
        params.append(greedy_params(N, stop=token_text(o.token_ids[k])))
        expect.append(o.token_ids[:k + 1])
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert [o.token_ids for o in outs] == expect
    assert [o.finish_reason for o in outs] == ["stop", "length", "stop"]


# ---- text, chat, metrics -----------------------------------------------------------------------

def test_text_prompt(llm):
    out = llm.generate("w010 w020 w030", greedy_params(8))[0]
    assert out.prompt == "w010 w020 w030"
    assert out.prompt_token_ids == [10, 20, 30]
    assert out.token_ids == _tokens(llm, [10, 20, 30], greedy_params(8))
    assert out.text == llm.tokenizer.decode(out.token_ids)
    outs = llm.generate(["w010", "w011 w012"], greedy_params(4))
    assert [o.prompt_token_ids for o in outs] == [[10], [11, 12]]


def test_chat(llm):
    conv = [{"role": "system", "content": "w040"}, {"role": "user", "content": "w010 w011"}]
    out = llm.chat(conv, greedy_params(8))
    assert out.prompt == "<system> w040 <user> w010 w011 <assistant>"
    assert out.prompt_token_ids == [3, 40, 4, 10, 11, 5]
    assert out.token_ids == _tokens(llm, [3, 40, 4, 10, 11, 5], greedy_params(8))
    outs = llm.chat([conv, conv[1:]], greedy_params(8))
    assert isinstance(outs, list) and len(outs) == 2
    assert outs[0].token_ids == out.token_ids
    assert outs[1].prompt_token_ids == [4, 10, 11, 5]
    no_gen = llm.chat(conv[1:], greedy_params(2), add_generation_prompt=False)
    assert no_gen.prompt_token_ids == [4, 10, 11]


def test_metrics(llm):
    ids = prompt(12, seed=11)
    out = llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(10))[0]
    m = out.metrics
    for key in ("tokens", "seconds", "tokens_per_s", "ttft", "prompt_tokens"):
        assert key in m and m[key] > 0, (key, m.get(key))
    assert m["tokens"] == 10 and m["prompt_tokens"] == 12
    assert m["ttft"] <= m["seconds"]
    assert m["tokens_per_s"] == pytest.approx(10 / m["seconds"])


# ---- no tokenizer ----------------------------------------------------------------------------

def test_checkpoint_without_tokenizer(tmp_path, ckpt, llm):
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(ckpt / f, tmp_path / f)
    bare = load_llm(tmp_path)
    assert bare.tokenizer is None
    ids = prompt(7, seed=12)
    out = bare.generate(prompt_token_ids=[ids], sampling_params=greedy_params(8))[0]
    assert out.text is None
    assert out.token_ids == _tokens(llm, ids, greedy_params(8))
    with pytest.raises(ValueError, match="tokenizer"):
        bare.generate("w010 w011", greedy_params(4))
    with pytest.raises(ValueError, match="tokenizer"):
        bare.chat([{"role": "user", "content": "w010"}], greedy_params(4))
    # Still works after the errors.
    assert bare.generate(prompt_token_ids=[ids], sampling_params=greedy_params(8))[0].token_ids == out.token_ids


def test_give_exactly_one_prompt_kind(llm):
    with pytest.raises(ValueError):
        llm.generate()
    with pytest.raises(ValueError):
        llm.generate("w010", prompt_token_ids=[[10]])
    with pytest.raises(ValueError):
        llm.generate(prompt_token_ids=[[10], [11]], sampling_params=[greedy_params(2)])


# ---- threads ---------------------------------------------------------------------------------

def test_generate_in_thread_releases_gil(llm):
    prompts = [prompt(9, seed=s) for s in (13, 14)]
    params = greedy_params(48)
    expected = [o.token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]
    long_prompt = prompt(200, seed=15)

    outs = []

    def work(timed, advanced):
        for _ in range(20):
            outs.append(timed("generate", lambda: llm.generate(prompt_token_ids=prompts, sampling_params=params)))
            timed("prompt_logits", lambda: llm.prompt_logits(long_prompt))
            if advanced["generate"] and advanced["prompt_logits"]:
                return

    advanced = gil_released_during(work)
    assert all([o.token_ids for o in out] == expected for out in outs)
    assert advanced["generate"], "the main thread never ran during generate()"
    assert advanced["prompt_logits"], "the main thread never ran during prompt_logits()"


def test_concurrent_generate_calls_from_two_threads(llm):
    """Two threads calling generate() on one LLM: calls are serialized inside, results are the
    same as sequential calls."""
    jobs = {i: [prompt(6 + i, seed=30 + i)] for i in range(4)}
    expected = {i: [o.token_ids for o in llm.generate(prompt_token_ids=p, sampling_params=greedy_params(16))]
                for i, p in jobs.items()}
    got, errors = {}, []

    def run(keys):
        try:
            for i in keys:
                got[i] = [o.token_ids for o in llm.generate(prompt_token_ids=jobs[i], sampling_params=greedy_params(16))]
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=run, args=(ks,)) for ks in ([0, 1], [2, 3])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == expected
