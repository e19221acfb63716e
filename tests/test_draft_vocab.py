"""A draft model's reduced vocabulary (SpeculativeConfig(draft_vocab=...), FR-Spec): the draft's
LM head keeps only the given rows. Checked against transformers' full logits of the same draft
(its drafts are the argmax over the kept tokens, its q their softmax), T = 0 token identity with
the target alone, the head's bytes, the three ways to name the set, and bad input. The T > 0
statistical test is test_speculative.py's test_sampled_tokens_follow_the_target_distribution
("draft_vocab"). `specdec draft-vocab` (counting a set over text files) is checked against the
`tokenizers` library's own counts."""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import (assert_no_blocks_held, greedy_params, hf_logits, load_llm, prompt, random_eagle_head,
                     small_eagle_config, torch, transformers, write_checkpoint, write_noisy_copy, write_tokenizer)

from specdec_native import SpeculativeConfig
from specdec_native.draft_vocab import most_frequent, resolve
from specdec_native.eagle.checkpoint import save_head

V = 256
KEPT = sorted(set(range(0, V, 3)) | {5, 17})  # 88 of the 256 tokens
PROMPTS = [prompt(6, seed=1), prompt(19, seed=2), prompt(33, seed=3)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("draft_vocab")
    target = write_checkpoint(root / "target", "llama", seed=31)
    write_noisy_copy(target, root / "noisy", scale=0.1, seed=5)
    for name in ("target", "noisy"):
        write_tokenizer(root / name, vocab_size=V)
    return {"target": root / "target", "noisy": root / "noisy"}


def _spec(**kw):
    return dict({"num_speculative_tokens": 4, "draft_vocab": KEPT}, **kw)


@pytest.mark.parametrize("dtype", ["float32", "int4"])
def test_greedy_output_is_the_targets_and_drafts_stay_inside(ckpts, dtype):
    alone = load_llm(ckpts["target"], dtype=dtype)
    reference = [o.token_ids for o in alone.generate(prompt_token_ids=PROMPTS,
                                                     sampling_params=[greedy_params(24)] * 3)]
    llm = load_llm(ckpts["target"], dtype=dtype, draft=str(ckpts["noisy"]), speculative=_spec())
    outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=[greedy_params(24)] * 3)
    assert [o.token_ids for o in outs] == reference
    assert sum(o.metrics["accepted"] for o in outs) > 0
    assert_no_blocks_held(llm.engine)
    for p in PROMPTS:
        tokens, _ = llm.engine.draft_chain(p, 4)
        assert tokens and set(tokens) <= set(KEPT)


def test_drafts_and_q_are_the_full_logits_restricted_to_the_kept_rows(ckpts):
    """The first drafted token is transformers' argmax over KEPT; its q is the softmax of the
    kept logits and 0 elsewhere (float32 on both sides)."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(ckpts["noisy"]), torch_dtype=torch.float32)
    llm = load_llm(ckpts["target"], draft=str(ckpts["noisy"]), speculative=_spec(num_speculative_tokens=1))
    kept = np.array(KEPT)
    for p in PROMPTS:
        logits = hf_logits(hf, p)[-1].astype(np.float64)
        tokens, qs = llm.engine.draft_chain(p, 1)
        assert tokens[0] == kept[np.argmax(logits[kept])]
        want = np.zeros(V)
        e = np.exp(logits[kept] - logits[kept].max())
        want[kept] = e / e.sum()
        np.testing.assert_allclose(np.asarray(qs[0], np.float64), want, atol=1e-5)
        assert np.asarray(qs[0])[np.setdiff1d(np.arange(V), kept)].max() == 0


def test_the_head_read_per_drafted_token_shrinks_with_the_set(ckpts):
    full = load_llm(ckpts["target"], draft=str(ckpts["noisy"]), speculative={"num_speculative_tokens": 2})
    small = load_llm(ckpts["target"], draft=str(ckpts["noisy"]), speculative=_spec(num_speculative_tokens=2))
    H = full.engine.config.hidden_size
    assert (full.engine.draft_weight_bytes_per_token - small.engine.draft_weight_bytes_per_token
            == (V - len(KEPT)) * H * 4)  # float32 rows


def test_a_json_file_and_an_eagle_head_name_the_same_kind_of_set(tmp_path):
    (tmp_path / "ids.json").write_text(json.dumps([9, 2, 4]))
    assert resolve(tmp_path / "ids.json", 16) == [2, 4, 9]
    head = random_eagle_head(small_eagle_config(vocab_size=64, draft_vocab_size=40))
    save_head(head, tmp_path / "head")
    assert resolve(str(tmp_path / "head"), 64) == head.t2d.nonzero().flatten().tolist()
    assert resolve(np.array([3, 1]), 16) == [1, 3]
    assert most_frequent([[5, 5, 7, 1], [7, 5, 2]], 2, always=[15]) == [5, 7, 15]


@pytest.mark.parametrize("vocab, message", [
    ([], "empty"),
    ([1, 256], "out of range"),
    ([-1, 3], "out of range"),
    ([4, 4], "twice"),
    ([[1, 2]], "list of token ids"),
    ([1.5, 2.0], "list of token ids"),
    ("missing.json", "no such file"),
])
def test_bad_draft_vocab(ckpts, tmp_path, vocab, message):
    if vocab == "missing.json":
        vocab = str(tmp_path / vocab)
    with pytest.raises(ValueError, match=message):
        load_llm(ckpts["target"], draft=str(ckpts["noisy"]), speculative=_spec(draft_vocab=vocab))


def test_bad_draft_vocab_files_and_methods(ckpts, tmp_path):
    (tmp_path / "bad.json").write_text('{"ids": [1]}')
    with pytest.raises(ValueError, match="JSON list of integer"):
        resolve(tmp_path / "bad.json", V)
    (tmp_path / "head").mkdir()
    with pytest.raises(ValueError, match="EAGLE-3 head"):
        resolve(tmp_path / "head", V)
    with pytest.raises(ValueError, match="needs method 'draft'"):
        SpeculativeConfig(method="ngram", draft_vocab=[1, 2])
    with pytest.raises(ValueError, match="size must be >= 1"):
        most_frequent([[1]], 0)


def test_a_good_set_after_a_bad_one_still_loads(ckpts):
    """A refused draft vocabulary leaves the target engine as it was."""
    llm = load_llm(ckpts["target"])
    with pytest.raises(ValueError):
        llm._attach_draft_model(SpeculativeConfig(draft_vocab=[1, 999]), str(ckpts["noisy"]), "float32", False)
    out = llm.generate(prompt_token_ids=PROMPTS[:1], sampling_params=[greedy_params(8)])
    assert len(out[0].token_ids) == 8


def test_cli_draft_vocab_equals_plain_generation(ckpts, tmp_path, capsys):
    from specdec_native import cli

    (tmp_path / "vocab.json").write_text(json.dumps(KEPT))

    def run(*extra):
        code = cli.main(["generate", "--model", str(ckpts["target"]), "--max-tokens", "12", "--ignore-eos", "--json",
                         "--threads", "2", *extra, "w3 w4 w5"])
        captured = capsys.readouterr()
        return code, captured

    code, plain = run()
    assert code == 0
    code, reduced = run("--draft", str(ckpts["noisy"]), "--draft-vocab", str(tmp_path / "vocab.json"))
    assert code == 0
    assert json.loads(reduced.out)["token_ids"] == json.loads(plain.out)["token_ids"]
    assert json.loads(reduced.out)["metrics"]["drafted"] > 0
    code, bad = run("--draft", str(ckpts["noisy"]), "--draft-vocab", str(tmp_path / "none.json"))
    assert code == 2 and "no such file" in bad.err


@pytest.mark.parametrize("vocab, message", [([5, 3], "increasing order"), ([3, 3], "increasing order"),
                                            ([0, 256], "out of range")])
def test_the_core_refuses_a_bad_set_from_a_direct_caller(ckpts, vocab, message):
    """The core checks the set itself (a caller of _core, past draft_vocab.resolve), before it
    converts any weight, and the engine keeps working without a drafter."""
    from specdec_native import _core
    from specdec_native import checkpoint as ckpt_mod

    llm = load_llm(ckpts["target"])
    draft = ckpt_mod.load(ckpts["noisy"])
    o = _core.DraftModelOptions()
    o.num_tokens = 2
    o.vocab = vocab
    with pytest.raises(ValueError, match=message):
        llm.engine.attach_draft_model(ckpt_mod.model_config(draft), draft.shards, "float32", o)
    assert len(llm.generate(prompt_token_ids=PROMPTS[:1], sampling_params=[greedy_params(6)])[0].token_ids) == 6


def _texts(root):
    (root / "src" / "sub").mkdir(parents=True)
    (root / "src" / "a.py").write_text("w010 w010 w010 w011 w011 w012 w099")
    (root / "src" / "sub" / "b.py").write_text("w011 w013 w013")
    (root / "src" / "notes.txt").write_text("w200 w200 w200 w200")
    return root / "src"


def _reference_top(ckpt, files, size):
    """The `size` most frequent ids of the files under the `tokenizers` library itself, ties to
    the lower id, and their share of all tokens."""
    from collections import Counter

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    counts = Counter(i for f in files for i in tok.encode(f.read_text(), add_special_tokens=False).ids)
    top = sorted(counts, key=lambda t: (-counts[t], t))[:size]
    return set(top), sum(counts[t] for t in top) / sum(counts.values())


@pytest.mark.parametrize("extra, pattern", [([], "*.py"), (["--suffix", ".py", "--suffix", ".txt"], "*")])
def test_cli_draft_vocab_counts_the_files_tokens(ckpts, tmp_path, capsys, extra, pattern):
    from specdec_native import cli

    src = _texts(tmp_path)
    out = tmp_path / "vocab.json"
    assert cli.main(["draft-vocab", str(ckpts["target"]), str(src), "--size", "2", "--out", str(out), *extra]) == 0
    top, coverage = _reference_top(ckpts["target"], [f for f in src.rglob(pattern) if f.is_file()], 2)
    ids = json.loads(out.read_text())
    assert set(ids) == top | {0, 1, 2}  # plus the special tokens (<unk> <s> </s>, the EOS among them)
    assert resolve(str(out), V) == ids
    assert f"cover {100 * coverage:.2f}%" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["MISSING"], "no such file or directory"),
    (["EMPTYDIR"], "no files ending in .py"),
    (["EMPTYFILE"], "hold no tokens"),
    (["SRC", "--size", "0"], "size must be >= 1"),
    (["SRC", "--max-chars", "0"], "--max-chars must be >= 1"),
])
def test_cli_draft_vocab_bad_input(ckpts, tmp_path, capsys, args, message):
    from specdec_native import cli

    src = _texts(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.py").write_text("")
    names = {"MISSING": tmp_path / "missing", "EMPTYDIR": tmp_path / "empty", "EMPTYFILE": tmp_path / "empty.py", "SRC": src}
    out = tmp_path / "vocab.json"
    argv = [str(names.get(a, a)) for a in args]
    assert cli.main(["draft-vocab", str(ckpts["target"]), *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_draft_vocab_needs_a_tokenizer(ckpts, tmp_path, capsys):
    import shutil

    from specdec_native import cli

    bare = tmp_path / "bare"
    shutil.copytree(ckpts["target"], bare)
    (bare / "tokenizer.json").unlink()
    assert cli.main(["draft-vocab", str(bare), str(_texts(tmp_path)), "--out", str(tmp_path / "v.json")]) == 2
    assert "has no tokenizer.json" in capsys.readouterr().err
