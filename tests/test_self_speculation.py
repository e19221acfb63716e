"""Self-speculation: the target drafts for itself (method "layer_skip": a subset of its layers;
"sparse_kv": MagicDec's attention-sink + recent-window KV), and the draft-confidence early stop.

* The sparse page list: attention over it equals float64 dense attention over exactly the sink
  pages and the recent pages, and nothing else.
* The drafts themselves against transformers: a first-L layer-skip draft is the HF model cut to
  L layers; a sparse-KV draft is the HF model under a 4D mask: committed rows dense and causal
  (the committed KV is the full model's), the draft's own rows (root and drafts) each masked to
  its sinks and window.
* Lossless: temperature 0 token-identical to the target alone (batched, several k, with the
  confidence stop, under preemption); the sampled-token distribution test is in
  test_speculative.py (test_sampled_tokens_follow_the_target_distribution).
* Bad configurations raise ValueError.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from helpers import (assert_no_blocks_held, greedy_params, hf_greedy, load_llm, prompt, torch, write_checkpoint,
                     write_tokenizer)

from specdec_native import SamplingParams, SpeculativeConfig, _core, ops

LAYERS = 4
PROMPTS = [prompt(9, seed=11), prompt(37, seed=12), prompt(70, seed=13), [5, 6, 7, 8] * 10 + prompt(3, seed=14)]
MAX_TOKENS = [24, 17, 24, 30]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("self_spec")
    model = write_checkpoint(root, "llama", seed=41, num_hidden_layers=LAYERS)
    write_tokenizer(root, vocab_size=256)
    return root, model


@pytest.fixture(scope="module")
def reference(target):
    llm = load_llm(target[0])
    return [o.token_ids for o in llm.generate(prompt_token_ids=PROMPTS,
                                              sampling_params=[greedy_params(n) for n in MAX_TOKENS])]


# ---- the sparse page list ----------------------------------------------------------------------

def kept_tokens(n, page, sink, window):
    """The StreamingLLM token set at page granularity, written from the rule's words: every page
    holding one of the first `sink` tokens or one of the last `window` tokens."""
    keep = set()
    for t in range(n):
        first, last = (t // page) * page, min((t // page + 1) * page, n) - 1
        if first < sink or last >= n - window:
            keep.add(t)
    return sorted(keep)


@pytest.mark.parametrize("n,page,sink,window", [
    (100, 16, 4, 32), (100, 16, 16, 16), (100, 16, 0, 20), (64, 16, 16, 32), (40, 16, 16, 64),
    (257, 8, 9, 50), (33, 4, 1, 1), (200, 1, 3, 7),
])
def test_window_attention_equals_dense_attention_over_exactly_the_kept_tokens(n, page, sink, window):
    rng = np.random.default_rng(n + page)
    kv_heads, heads, dim = 2, 4, 16
    alloc = _core.BlockAllocator(n // page + 8)
    seq = _core.SeqPages(page)
    alloc.allocate(3)  # blocks out of order: the list must name the sequence's own blocks
    seq.append(alloc, n)
    blocks = _core.window_pages(seq, sink, window)
    k_cache = rng.standard_normal((alloc.num_blocks, page, kv_heads, dim)).astype(np.float32)
    v_cache = rng.standard_normal((alloc.num_blocks, page, kv_heads, dim)).astype(np.float32)
    keep = kept_tokens(n, page, sink, window)
    assert set(range(min(sink, n))) <= set(keep) and set(range(max(0, n - window), n)) <= set(keep)
    assert len(keep) < n or n <= sink + window + 2 * page  # sparse whenever the ranges do not meet
    # the list is exactly the pages of the kept tokens, in order
    assert blocks == [seq.blocks[p] for p in sorted({t // page for t in keep})]

    q = rng.standard_normal((1, heads, dim)).astype(np.float32)
    out = ops.paged_attention(q, k_cache, v_cache, np.array([0, 1], np.int32),
                              np.array([0, len(blocks)], np.int32), np.array(blocks, np.int32),
                              np.array([seq.last_page_len], np.int32))
    # float64 reference over exactly the kept tokens
    k = np.stack([k_cache[seq.blocks[t // page], t % page] for t in keep]).astype(np.float64)
    v = np.stack([v_cache[seq.blocks[t // page], t % page] for t in keep]).astype(np.float64)
    group = heads // kv_heads
    for h in range(heads):
        s = k[:, h // group] @ q[0, h].astype(np.float64) / np.sqrt(dim)
        w = np.exp(s - s.max())
        ref = (w / w.sum()) @ v[:, h // group]
        np.testing.assert_allclose(out[0, h], ref, rtol=2e-5, atol=2e-5)


def test_window_pages_bad_input():
    seq = _core.SeqPages(16)
    with pytest.raises(ValueError, match=">= 0"):
        _core.window_pages(seq, -1, 16)


# ---- the drafts against transformers -------------------------------------------------------------

def _draft(llm, ids, k):
    tokens, q = llm.engine.draft_chain(list(ids), k)
    return tokens, np.asarray(q, np.float64)


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_layer_skip_draft_is_the_target_cut_to_its_first_layers(target, num_layers):
    path, model = target
    llm = load_llm(path, speculative={"method": "layer_skip", "draft_layers": num_layers, "num_speculative_tokens": 6})
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = num_layers
    cut = type(model)(config).eval()
    dropped = tuple(f"layers.{i}." for i in range(num_layers, LAYERS))
    cut.load_state_dict({k: v for k, v in model.state_dict().items() if not any(d in k for d in dropped)})
    for ids in PROMPTS[:3]:
        tokens, q = _draft(llm, ids, 6)
        assert tokens == hf_greedy(cut, ids, 6)
        ctx = list(ids)
        for i, tok in enumerate(tokens):  # each step's distribution
            with torch.no_grad():
                logits = cut(torch.tensor([ctx])).logits[0, -1].numpy()
            np.testing.assert_allclose(q[i], _softmax(logits), atol=2e-4)
            ctx.append(tok)
    assert_no_blocks_held(llm.engine)


@pytest.mark.parametrize("page,sink,window", [(4, 4, 8), (8, 1, 10), (16, 16, 16)])
def test_sparse_kv_draft_attends_only_the_sinks_and_the_window(target, page, sink, window):
    path, model = target
    llm = load_llm(path, page_size=page, speculative={
        "method": "sparse_kv", "sink_tokens": sink, "window_tokens": window, "num_speculative_tokens": 4})
    sparse_rows = 0
    for ids in PROMPTS[1:]:
        tokens, q = _draft(llm, ids, 4)
        ctx = list(ids)
        root = len(ids) - 1
        for i, tok in enumerate(tokens):
            n = len(ctx)
            mask = torch.full((1, 1, n, n), float("-inf"))
            for r in range(root):  # committed rows: dense and causal (the target's own KV)
                mask[0, 0, r, :r + 1] = 0
            for r in range(root, n):  # the draft's rows (root, then its drafts): sinks + window only
                keep = kept_tokens(r + 1, page, sink, window)
                sparse_rows += len(keep) < r + 1
                mask[0, 0, r, keep] = 0
            with torch.no_grad():
                logits = model(torch.tensor([ctx]), attention_mask=mask).logits[0, -1].numpy()
            np.testing.assert_allclose(q[i], _softmax(logits), atol=2e-4)
            assert tok == int(np.argmax(logits))
            ctx.append(tok)
    assert sparse_rows >= 8  # really sparse at these lengths
    # and it is not the dense model: somewhere the distributions differ clearly
    dense = load_llm(path, page_size=page)
    full = _softmax(dense.prompt_logits(PROMPTS[2])[-1])
    assert np.abs(_draft(llm, PROMPTS[2], 1)[1][0] - full).max() > 1e-3


# ---- lossless end to end -------------------------------------------------------------------------

SELF_SPECS = {
    "first_layer": dict(method="layer_skip", draft_layers=1),
    "skip_set": dict(method="layer_skip", draft_layers=[0, 1, 3]),
    "sparse": dict(method="sparse_kv", sink_tokens=4, window_tokens=8),
    "sparse_confident": dict(method="sparse_kv", sink_tokens=4, window_tokens=8, draft_confidence=0.3),
    "skip_confident": dict(method="layer_skip", draft_layers=[0, 2, 3], draft_confidence=0.5),
}


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("name", list(SELF_SPECS))
def test_greedy_self_speculation_is_token_identical(target, reference, name, k):
    llm = load_llm(target[0], page_size=4, speculative=dict(SELF_SPECS[name], num_speculative_tokens=k))
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])
    assert [o.token_ids for o in outs] == reference
    drafted = sum(o.metrics["drafted"] for o in outs)
    accepted = sum(o.metrics["accepted"] for o in outs)
    assert drafted > 0 and 0 <= accepted <= drafted
    assert_no_blocks_held(llm.engine)


def test_self_drafts_are_partly_accepted(target):
    """The mixed path really runs: drafts both accepted and rejected."""
    for spec in (SELF_SPECS["skip_set"], dict(method="sparse_kv", sink_tokens=4, window_tokens=32)):
        llm = load_llm(target[0], page_size=4, speculative=dict(spec, num_speculative_tokens=4))
        outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])
        drafted = sum(o.metrics["drafted"] for o in outs)
        accepted = sum(o.metrics["accepted"] for o in outs)
        assert 0.05 < accepted / drafted < 0.98, (spec, accepted, drafted)


def test_confidence_stop_drafts_fewer_tokens(target):
    def drafted(conf):
        llm = load_llm(target[0], speculative=dict(method="layer_skip", draft_layers=[0, 2, 3],
                                                   num_speculative_tokens=6, draft_confidence=conf))
        outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])
        return sum(o.metrics["drafted"] for o in outs) / sum(o.metrics["steps"] for o in outs)
    assert drafted(0.9) < drafted(0.0) == pytest.approx(6.0, abs=0.5)


def test_self_speculation_under_preemption_equals_alone(target, reference):
    """A budget of blocks that forces preemptions: the draft's scratch KV must never leak into
    what is recomputed or cached."""
    llm = load_llm(target[0], page_size=4, num_blocks=40, max_num_seqs=4,
                   speculative=dict(SELF_SPECS["sparse"], num_speculative_tokens=3))
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])
    assert [o.token_ids for o in outs] == reference
    assert sum(o.metrics["preemptions"] for o in outs) > 0
    assert_no_blocks_held(llm.engine)


def test_sampled_self_speculation_repeats_and_batches(target):
    params = [SamplingParams(max_tokens=20, temperature=0.9, seed=s, ignore_eos=True) for s in range(4)]
    spec = dict(SELF_SPECS["skip_set"], num_speculative_tokens=3)
    llm = load_llm(target[0], speculative=spec)
    together = [o.token_ids for o in llm.generate(prompt_token_ids=PROMPTS, sampling_params=params)]
    alone = [llm.generate(prompt_token_ids=[p], sampling_params=[sp])[0].token_ids for p, sp in zip(PROMPTS, params)]
    assert together == alone


def test_cascade_acceptance_with_a_self_draft(target, reference):
    """Speculative cascades need the draft's q: a self-draft records it. Always deferring to the
    target (chow rule, alpha = 0: defer unless the draft is certain) keeps the target's output."""
    llm = load_llm(target[0], speculative=dict(SELF_SPECS["skip_set"], num_speculative_tokens=3,
                                               acceptance="cascade", cascade_rule="chow", cascade_alpha=0.0))
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])
    assert [o.token_ids for o in outs] == reference


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,match", [
    (dict(method="sparse_kv", tree=[[0], [1]]), "chains only"),
    (dict(method="layer_skip", draft_layers=2, tree={"top_k": 2, "max_nodes": 4}), "chains only"),
    (dict(method="layer_skip"), "needs draft_layers"),
    (dict(method="layer_skip", draft_layers=0), ">= 1"),
    (dict(method="layer_skip", draft_layers=[]), "non-empty"),
    (dict(method="layer_skip", draft_layers=[1, 1]), "duplicate"),
    (dict(method="layer_skip", draft_layers=[-1, 2]), "layer indices"),
    (dict(method="layer_skip", draft_layers="half"), "int or a list"),
    (dict(method="sparse_kv", draft_layers=2), "for method 'layer_skip'"),
    (dict(method="draft", draft_layers=2), "for method 'layer_skip'"),
    (dict(method="sparse_kv", window_tokens=2, num_speculative_tokens=4), "must hold the drafted chain"),
    (dict(method="sparse_kv", sink_tokens=-1), "sink_tokens"),
    (dict(method="sparse_kv", window_tokens=1.5), "window_tokens"),
    (dict(method="draft", draft_confidence=1.0), r"\[0, 1\)"),
    (dict(method="draft", draft_confidence=-0.1), r"\[0, 1\)"),
    (dict(method="ngram", draft_confidence=0.5), "n-gram"),
])
def test_bad_self_speculation_config(spec, match):
    with pytest.raises(ValueError, match=match):
        SpeculativeConfig(**spec)


def test_bad_self_speculation_for_this_target(target):
    path = target[0]
    with pytest.raises(ValueError, match="does not fit the target's 4 layers"):
        load_llm(path, speculative=dict(method="layer_skip", draft_layers=[0, 4]))
    with pytest.raises(ValueError, match="every layer"):
        load_llm(path, speculative=dict(method="layer_skip", draft_layers=4))
    with pytest.raises(ValueError, match="drafts with the target itself"):
        load_llm(path, draft=str(path), speculative=dict(method="sparse_kv"))
    llm = load_llm(path)
    with pytest.raises(ValueError, match="ascending"):
        o = _core.SelfDraftOptions()
        o.layers = [2, 1]
        llm.engine.attach_self_drafter(o)
    with pytest.raises(ValueError, match="skip layers or attend a KV window"):
        llm.engine.attach_self_drafter(_core.SelfDraftOptions())
    with pytest.raises(ValueError, match="needs a drafter that runs a model"):
        llm.engine.draft_chain([1, 2, 3], 2)
    # the engine still works after every refusal
    assert len(llm.generate(prompt_token_ids=[PROMPTS[0]], sampling_params=[greedy_params(5)])[0].token_ids) == 5


def test_cli_self_speculation_equals_plain_generation(target, capsys):
    from specdec_native import cli

    def run(*extra):
        assert cli.main(["generate", "--model", str(target[0]), "--max-tokens", "12", "--ignore-eos", "--json",
                         "--threads", "2", *extra, "w3 w4 w5"]) == 0
        return json.loads(capsys.readouterr().out)

    plain = run()
    skip = run("--method", "layer_skip", "--draft-layers", "[0, 2]", "--num-speculative-tokens", "3",
               "--draft-confidence", "0.2")
    sparse = run("--method", "sparse_kv", "--sink-tokens", "4", "--window-tokens", "8")
    assert skip["token_ids"] == plain["token_ids"] == sparse["token_ids"]
    assert skip["metrics"]["drafted"] > 0 and sparse["metrics"]["drafted"] > 0
    assert cli.main(["generate", "--model", str(target[0]), "--method", "layer_skip", "--draft-layers", "9", "x"]) == 2
    assert "does not fit the target's 4 layers" in capsys.readouterr().err
