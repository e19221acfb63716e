"""EAGLE-3 heads drafting inside the engine (method "eagle"): the target's forward captures the
head's aux layers in prefill and verification, the head catches up on the committed tokens'
features and drafts greedy chains from its own hidden states.

* The engine's first chain after a prompt equals the torch reference head's greedy chain
  (specdec_native.eagle.head.Eagle3Head.draft) fed transformers' hidden states of the target,
  and its recorded q is the head's softmax spread over the target's vocabulary: features,
  pairing of entries with tokens, positions and the draft-vocabulary map all line up.
* Lossless: temperature 0 token-identical to the target alone (batched, several k, prefix-cache
  hits, preemption), with the confidence stop and with cascades deferring to the target; seeded
  sampling batched equals alone (and the sampled-token histograms test in test_speculative.py).
* Bad heads and configurations raise ValueError.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import (assert_no_blocks_held, edit_config, greedy_params, load_llm, prompt, random_eagle_head,
                     small_eagle_config, torch, write_checkpoint, write_tokenizer)

from specdec_native import SamplingParams, SpeculativeConfig
from specdec_native.eagle.checkpoint import save_head

LAYERS = 4
AUX = (0, 1, 2)
PROMPTS = [prompt(9, seed=21), prompt(37, seed=22), prompt(70, seed=23), [5, 6, 7, 8] * 10 + prompt(3, seed=24)]
MAX_TOKENS = [24, 17, 24, 30]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eagle")
    target = write_checkpoint(root / "target", "llama", seed=43, num_hidden_layers=LAYERS)
    write_tokenizer(root / "target", vocab_size=256)
    cfg = small_eagle_config(hidden_size=64, intermediate_size=96, vocab_size=256, draft_vocab_size=200,
                             aux_layer_ids=AUX, max_position_embeddings=256)
    head = random_eagle_head(cfg, seed=7)
    head.set_embeddings(target.model.embed_tokens.weight.detach().clone())  # the engine embeds with the target's table
    save_head(head, root / "head")
    return {"target": root / "target", "model": target, "head_dir": root / "head", "head": head}


@pytest.fixture(scope="module")
def reference(setup):
    llm = load_llm(setup["target"])
    return [o.token_ids for o in llm.generate(prompt_token_ids=PROMPTS,
                                              sampling_params=[greedy_params(n) for n in MAX_TOKENS])]


def _eagle(setup, k=4, **kw):
    return load_llm(setup["target"], draft=str(setup["head_dir"]),
                    speculative={"method": "eagle", "num_speculative_tokens": k, "tree": "chain"}, **kw)


def test_first_chain_equals_the_torch_head_on_transformers_features(setup):
    llm = _eagle(setup, k=5)
    for ids in PROMPTS:
        tokens, q = llm.engine.draft_chain(ids, 5)
        with torch.no_grad():
            hs = setup["model"](torch.tensor([ids[:-1]]), output_hidden_states=True).hidden_states
            aux = torch.cat([hs[layer + 1] for layer in AUX], dim=-1)
            ref, ref_logits = setup["head"].draft(aux, torch.tensor([ids]), 5, return_logits=True)
        assert tokens == ref[0].tolist()
        # q: the head's softmax over its draft vocabulary, spread over the target's (0 elsewhere)
        d2t = setup["head"].to_target_ids(torch.arange(200)).numpy()
        for i in range(5):
            expect = np.zeros(256)
            expect[d2t] = torch.softmax(ref_logits[i][0].double(), -1).numpy()
            np.testing.assert_allclose(q[i], expect, atol=1e-5)
    assert_no_blocks_held(llm.engine)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_eagle_is_token_identical(setup, reference, k):
    llm = _eagle(setup, k=k, page_size=4)
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])
    assert [o.token_ids for o in outs] == reference
    assert sum(o.metrics["drafted"] for o in outs) > 0
    # again: every prompt's pages now come from the prefix cache, so the head starts later
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])
    assert [o.token_ids for o in outs] == reference
    assert sum(o.metrics["cached_prompt_tokens"] for o in outs) > 0
    assert_no_blocks_held(llm.engine)


def test_eagle_under_preemption_equals_alone(setup, reference):
    llm = _eagle(setup, k=3, page_size=4, num_blocks=40, max_num_seqs=4)
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])
    assert [o.token_ids for o in outs] == reference
    assert sum(o.metrics["preemptions"] for o in outs) > 0
    assert_no_blocks_held(llm.engine)


def test_sampled_eagle_batched_equals_alone(setup):
    """Seeded sampling repeats when the drafts do; with prefix caching a repeated prompt would give
    the head fewer features (other drafts: the same distribution, other draws), so it is off."""
    params = [SamplingParams(max_tokens=20, temperature=0.9, seed=s, ignore_eos=True) for s in range(4)]
    llm = _eagle(setup, k=3, enable_prefix_caching=False)
    together = [o.token_ids for o in llm.generate(prompt_token_ids=PROMPTS, sampling_params=params)]
    alone = [llm.generate(prompt_token_ids=[p], sampling_params=[sp])[0].token_ids for p, sp in zip(PROMPTS, params)]
    assert together == alone


def test_eagle_with_the_confidence_stop_and_cascades(setup, reference):
    """draft_confidence shortens chains; cascade acceptance always deferring to the target
    (chow, alpha = 0) keeps the target's output: both need the head's distributions."""
    def run(**spec):
        llm = load_llm(setup["target"], draft=str(setup["head_dir"]),
                       speculative=dict({"method": "eagle", "num_speculative_tokens": 6, "tree": "chain"}, **spec))
        return llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])

    def drafted_per_step(outs):
        return sum(o.metrics["drafted"] for o in outs) / sum(o.metrics["steps"] for o in outs)

    plain, confident = run(), run(draft_confidence=0.2)
    assert [o.token_ids for o in confident] == reference
    assert drafted_per_step(confident) < drafted_per_step(plain) == pytest.approx(6.0, abs=0.5)
    cascade = run(acceptance="cascade", cascade_rule="chow", cascade_alpha=0.0)
    assert [o.token_ids for o in cascade] == reference


def test_bad_eagle_heads_and_configs(setup, tmp_path):
    with pytest.raises(ValueError, match="needs a head"):
        load_llm(setup["target"], speculative={"method": "eagle"})
    with pytest.raises(ValueError, match="elder sibling"):
        SpeculativeConfig(method="eagle", tree=[[0], [2]])
    # a head trained for a target with another vocabulary
    other = random_eagle_head(small_eagle_config(hidden_size=64, intermediate_size=96, vocab_size=300,
                                                 draft_vocab_size=200, aux_layer_ids=AUX))
    save_head(other, tmp_path / "other")
    with pytest.raises(ValueError, match="vocab"):
        load_llm(setup["target"], draft=str(tmp_path / "other"), speculative={"method": "eagle"})
    # aux layers the target does not have
    save_head(setup["head"], tmp_path / "deep")
    edit_config(tmp_path / "deep", eagle_config={"eagle_aux_hidden_state_layer_ids": [0, 1, 9]})
    with pytest.raises(ValueError, match="aux layer"):
        load_llm(setup["target"], draft=str(tmp_path / "deep"), speculative={"method": "eagle"})
    with pytest.raises(ValueError, match="dtype must be auto, float32"):
        load_llm(setup["target"], draft=str(setup["head_dir"]), speculative={"method": "eagle", "draft_dtype": "fp8"})
    with pytest.raises(ValueError, match="config.json"):
        load_llm(setup["target"], draft=str(tmp_path / "missing"), speculative={"method": "eagle"})


# ---- trees (EAGLE-2) --------------------------------------------------------------------------

@torch.no_grad()
def _reference_tree(head, model, ids, top_k, depth, max_nodes):
    """EAGLE-2's dynamic tree, written from the paper's description over the torch head: every
    node's logits come from running the head along its path from the root (so a node sees its
    ancestors only); each level expands the top_k best-scoring nodes (score = cumulative
    log-probability) with their top_k children; the max_nodes best nodes are kept."""
    hs = model(torch.tensor([ids[:-1]]), output_hidden_states=True).hidden_states
    aux = torch.cat([hs[layer + 1] for layer in AUX], dim=-1)
    h, past = head.forward(head.fc(aux), torch.tensor([ids[1:]]))
    root_h = h[:, -1:]

    def path_logits(path):
        h, kv = root_h, past
        for tok in path:
            h, kv = head.forward(h, torch.tensor([[tok]]), kv)
        return head.logits(h)[0, -1].double().numpy()

    tokens, parents, scores = [], [], []

    def path(i):
        out = []
        while i >= 0:
            out.append(tokens[i])
            i = parents[i]
        return out[::-1]

    def expand(node, logits):
        lsm = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        for d in np.argsort(-logits, kind="stable")[:top_k]:
            tokens.append(int(head.to_target_ids(torch.tensor(int(d)))))
            parents.append(node)
            scores.append((scores[node] if node >= 0 else 0.0) + lsm[d])

    expand(-1, path_logits([]))
    level = list(range(len(tokens)))
    for _ in range(depth - 1):
        frontier = sorted(sorted(level, key=lambda i: (-scores[i], i))[:top_k])
        begin = len(tokens)
        for f in frontier:
            expand(f, path_logits(path(f)))
        level = list(range(begin, len(tokens)))
    keep = sorted(sorted(range(len(tokens)), key=lambda i: -scores[i])[:max_nodes])
    index = {}
    out_tokens, out_parents = [], []
    for i in keep:
        if parents[i] >= 0 and parents[i] not in index:
            continue
        index[i] = len(out_tokens)
        out_tokens.append(tokens[i])
        out_parents.append(-1 if parents[i] < 0 else index[parents[i]])
    return out_tokens, out_parents


@pytest.mark.parametrize("top_k,depth,max_nodes", [(2, 3, 5), (3, 4, 9), (4, 2, 16)])
def test_first_tree_equals_an_eagle2_reference(setup, top_k, depth, max_nodes):
    llm = load_llm(setup["target"], draft=str(setup["head_dir"]),
                   speculative={"method": "eagle", "num_speculative_tokens": depth,
                                "tree": {"top_k": top_k, "max_nodes": max_nodes}})
    expected = [_reference_tree(setup["head"], setup["model"], ids, top_k, depth, max_nodes) for ids in PROMPTS]
    for ids, ref in zip(PROMPTS, expected):
        tokens, parents = llm.engine.draft_tree(ids, max_nodes)
        assert (tokens, parents) == ref
        assert len(tokens) == min(max_nodes, top_k + top_k * top_k * (depth - 1))
    # a batch's trees grow together, one head forward per level: the same trees
    assert [tuple(t) for t in llm.engine.draft_trees(PROMPTS, max_nodes)] == [tuple(r) for r in expected]
    with pytest.raises(ValueError, match="draft_tree"):
        llm.engine.draft_chain(PROMPTS[0], 3)
    assert_no_blocks_held(llm.engine)


@pytest.mark.parametrize("tree", [{"top_k": 3, "max_nodes": 10}, [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]]])
def test_greedy_eagle_trees_are_token_identical(setup, reference, tree):
    llm = load_llm(setup["target"], draft=str(setup["head_dir"]), page_size=4,
                   speculative={"method": "eagle", "num_speculative_tokens": 4, "tree": tree})
    for _ in range(2):  # the second pass starts from prefix-cache hits
        outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])
        assert [o.token_ids for o in outs] == reference
        assert sum(o.metrics["drafted"] for o in outs) > 0
    assert sum(o.metrics["cached_prompt_tokens"] for o in outs) > 0
    small = load_llm(setup["target"], draft=str(setup["head_dir"]), page_size=4, num_blocks=40, max_num_seqs=4,
                     speculative={"method": "eagle", "num_speculative_tokens": 4, "tree": tree})
    outs = small.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])
    assert [o.token_ids for o in outs] == reference
    assert sum(o.metrics["preemptions"] for o in outs) > 0
    assert_no_blocks_held(llm.engine)
    assert_no_blocks_held(small.engine)


def test_greedy_adaptive_eagle_tree_is_token_identical(setup, reference):
    """The cost model sizes the head's dynamic trees (and prunes their frontier); with verify
    costs pinned compute-bound the trees shrink below the 10-node budget, the output stays the
    target's, preemption included."""
    spec = {"method": "eagle", "num_speculative_tokens": 4, "tree": {"top_k": 3, "max_nodes": 10}, "adaptive": True}
    for kw in ({}, {"num_blocks": 40, "max_num_seqs": 4}):
        llm = load_llm(setup["target"], draft=str(setup["head_dir"]), page_size=4, speculative=spec, **kw)
        llm.engine.set_verify_costs([(n, max(1.0, n / 2)) for n in range(1, 12)])
        outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(n) for n in MAX_TOKENS])
        assert [o.token_ids for o in outs] == reference
        drafted = sum(o.metrics["drafted"] for o in outs)
        steps = sum(o.metrics["steps"] for o in outs)
        assert 0 < drafted < 0.75 * 10 * steps, (drafted, steps)
        assert_no_blocks_held(llm.engine)
    assert sum(o.metrics["preemptions"] for o in outs) > 0


def test_trees_refuse_chain_only_options():
    with pytest.raises(ValueError, match="draft_confidence"):
        SpeculativeConfig(method="eagle", tree={"top_k": 2, "max_nodes": 4}, draft_confidence=0.3)
    with pytest.raises(ValueError, match="both 'top_k' and 'max_nodes'"):
        SpeculativeConfig(method="eagle", tree={"top_k": 2})
    with pytest.raises(ValueError, match="cascade"):
        SpeculativeConfig(method="eagle", tree={"top_k": 2, "max_nodes": 4}, acceptance="cascade")


def test_tree_chain_means_a_chain():
    assert SpeculativeConfig(method="eagle", tree="chain").tree is None
    assert SpeculativeConfig(method="eagle").tree is None  # the default: a chain
    with pytest.raises(ValueError, match="'chain'"):
        SpeculativeConfig(method="eagle", tree="bush")


def test_cli_eagle_trees_and_chains_equal_plain_generation(setup, capsys):
    import json

    from specdec_native import cli

    def run(*extra):
        assert cli.main(["generate", "--model", str(setup["target"]), "--max-tokens", "12", "--ignore-eos", "--json",
                         "--threads", "2", *extra, "w3 w4 w5"]) == 0
        return json.loads(capsys.readouterr().out)

    plain = run()
    tree = run("--method", "eagle", "--draft", str(setup["head_dir"]), "--tree", '{"top_k": 3, "max_nodes": 8}')
    chain = run("--method", "eagle", "--draft", str(setup["head_dir"]), "--tree", "chain", "--num-speculative-tokens", "3")
    assert tree["token_ids"] == plain["token_ids"] == chain["token_ids"]
    assert tree["metrics"]["drafted"] > chain["metrics"]["drafted"] > 0
