"""EAGLE-3 heads: the on-disk format (round trip, validation), the head's internal consistency
(KV-cached drafting == full causal forward == the training-time-test unroll) and a tiny
self-distillation run on a random-weight Llama (loss goes down, head loads, resume continues)."""
import ast
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from helpers import MALFORMED_EAGLE_HEADS, random_eagle_head, small_eagle_config  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from specdec_native.eagle import train as T  # noqa: E402
from specdec_native.eagle.checkpoint import expected_shapes, load_head, save_head, warm_start  # noqa: E402
from specdec_native.eagle.config import check_compatible, default_aux_layer_ids  # noqa: E402
from specdec_native.eagle.data import vocab_map  # noqa: E402

torch.set_num_threads(1)


small_config, random_head = small_eagle_config, random_eagle_head


# --- (a) round trip -------------------------------------------------------------------------
@pytest.mark.parametrize("with_embed", [True, False])
def test_save_load_round_trip(tmp_path, with_embed):
    head = random_head()
    save_head(head, tmp_path, include_embeddings=with_embed)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"]
    assert cfg["num_hidden_layers"] == 1 and cfg["tie_word_embeddings"] is False
    assert cfg["draft_vocab_size"] == 40 and cfg["vocab_size"] == 64
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert names == set(expected_shapes(head.config)) | ({"embed_tokens.weight"} if with_embed else set())

    embed = None if with_embed else head.embed_tokens.weight.clone()
    loaded = load_head(tmp_path, target_embeddings=embed)
    assert loaded.config == head.config
    a, b = head.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_warm_start_copies_layers_and_the_rows_of_shared_target_tokens(tmp_path):
    """warm_start: every layer of the saved head; lm_head rows matched by TARGET id across two
    different draft vocabularies (rows of tokens the old head lacks keep their values); a head
    of another shape or other aux layers is a ValueError."""
    old = random_head(seed=1)
    save_head(old, tmp_path / "old")
    new = random_head(small_config(draft_vocab_size=48), seed=2)
    before = new.lm_head.weight.detach().clone()
    rows = warm_start(new, tmp_path / "old")
    for name, t in old.state_dict().items():
        if name not in ("lm_head.weight", "d2t", "t2d", "embed_tokens.weight"):
            assert torch.equal(new.state_dict()[name], t), name
    old_ids = old.to_target_ids(torch.arange(40)).tolist()
    shared = 0
    for d, tid in enumerate(new.to_target_ids(torch.arange(48)).tolist()):
        if tid in old_ids:
            shared += 1
            assert torch.equal(new.lm_head.weight[d], old.lm_head.weight[old_ids.index(tid)])
        else:
            assert torch.equal(new.lm_head.weight[d], before[d])
    assert rows == shared and 0 < shared < 48
    with pytest.raises(ValueError, match="another shape.*intermediate_size: 48 vs 24"):
        warm_start(random_head(small_config(intermediate_size=24)), tmp_path / "old")
    with pytest.raises(ValueError, match="aux_layer_ids"):
        warm_start(random_head(small_config(aux_layer_ids=(0, 1, 2))), tmp_path / "old")


def test_loaded_head_without_embeddings_says_so(tmp_path):
    save_head(random_head(), tmp_path)
    head = load_head(tmp_path)
    with pytest.raises(RuntimeError, match="embedding"):
        head.draft(torch.zeros(1, 3, 96), torch.zeros(1, 4, dtype=torch.long), 2)


# --- (b) malformed directories and mismatched targets -----------------------------------------
@pytest.mark.parametrize("breakage, message", MALFORMED_EAGLE_HEADS)
def test_malformed_directory_raises(tmp_path, breakage, message):
    save_head(random_head(), tmp_path)
    breakage(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_head(tmp_path)


def test_not_a_directory(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_head(tmp_path / "nope")


def test_check_compatible():
    cfg = small_config()
    target = {"hidden_size": 32, "vocab_size": 64, "num_hidden_layers": 6}
    assert check_compatible(cfg, target) == (1, 2, 3)
    assert check_compatible(cfg.to_dict(), transformers.LlamaConfig(**target)) == (1, 2, 3)
    with pytest.raises(ValueError, match="hidden size mismatch.*32.*48"):
        check_compatible(cfg, dict(target, hidden_size=48))
    with pytest.raises(ValueError, match="vocab size mismatch.*64.*65"):
        check_compatible(cfg, dict(target, vocab_size=65))
    with pytest.raises(ValueError, match=r"aux layer ids \[1, 2, 3\] out of range for a 3-layer target.*\[3\]"):
        check_compatible(cfg, dict(target, num_hidden_layers=3))
    # without explicit ids the SpecForge default for the target applies
    assert check_compatible(small_config(aux_layer_ids=None), dict(target, num_hidden_layers=32)) == (1, 15, 28)
    assert default_aux_layer_ids(2) == (1, 0, 0)


def test_load_head_checks_target(tmp_path):
    save_head(random_head(), tmp_path)
    with pytest.raises(ValueError, match="vocab size mismatch"):
        load_head(tmp_path, target_config={"hidden_size": 32, "vocab_size": 128, "num_hidden_layers": 8})


def test_vocab_map_is_specforge_style():
    seqs = [{"ids": [9, 9, 5, 7, 7, 7, 3], "prompt_len": 2}]  # response: 5, 7, 7, 7, 3
    d2t, t2d, covered = vocab_map(seqs, vocab_size=10, draft_vocab_size=2)
    assert t2d.nonzero().flatten().tolist() == [5, 7] or t2d.nonzero().flatten().tolist() == [3, 7]
    assert (torch.arange(2) + d2t).tolist() == t2d.nonzero().flatten().tolist()
    assert covered == pytest.approx(4 / 5)
    d2t, t2d, _ = vocab_map(seqs, vocab_size=10, draft_vocab_size=5)  # 3 distinct: lowest ids fill up
    assert t2d.nonzero().flatten().tolist() == [0, 1, 3, 5, 7]


# --- (c) internal consistency ---------------------------------------------------------------
def _sequence(cfg, T, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, T, 3 * cfg.target_hidden_size, generator=g),
            torch.randint(0, cfg.vocab_size, (1, T), generator=g))


def test_kv_cached_forward_equals_full_causal_forward():
    head = random_head()
    aux, ids = _sequence(head.config, 12)
    with torch.no_grad():
        h = head.fc(aux)
        full, _ = head.forward(h, ids)
        parts, past = [], None
        for a, b in ((0, 5), (5, 6), (6, 7), (7, 12)):
            out, past = head.forward(h[:, a:b], ids[:, a:b], past)
            parts.append(out)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_training_time_test_unroll_equals_autoregressive_drafting():
    """Row t, step j of `unroll` is exactly the j-th draft of `draft` from anchor t (fed the
    draft's own tokens): same logits, hence the same greedy tokens."""
    head = random_head()
    k, T = 4, 14
    aux, ids = _sequence(head.config, T)
    for t in (0, 3, 8):
        tokens, logits = head.draft(aux[:, :t + 1], ids[:, :t + 2], k, return_logits=True)
        # teacher-forced sequence: the real prefix, then the draft's own tokens
        seq = torch.cat((ids[:, :t + 2], tokens[:, :k - 1]), dim=1)
        feats = torch.cat((aux[:, :t + 1], torch.zeros(1, seq.shape[1] - t - 1, aux.shape[-1])), dim=1)
        with torch.no_grad():
            hs = head.unroll(feats, seq, k)
            tail = head.unroll(feats, seq, k, first_row=t)  # rows before t as context only
        for j in range(k):
            torch.testing.assert_close(head.logits(hs[j])[:, t], logits[j], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(tail[j], hs[j][:, t:], rtol=1e-5, atol=1e-5)
            assert head.to_target_ids(head.logits(hs[j])[:, t].argmax(-1)).item() == tokens[0, j].item()
        assert bool(head.t2d[tokens].all())  # drafts are target ids inside the draft vocabulary


# --- (d, e) training on a tiny random target ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory):
    path = tmp_path_factory.mktemp("eagle_target")
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rms_norm_eps=1e-5, initializer_range=0.3, bos_token_id=1, eos_token_id=2,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 256, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist()
               for _ in range(28)]
    return path, prompts


RUN = dict(max_prompts=24, eval_prompts=4, max_new_tokens=24, ttt_steps=3, draft_vocab_size=128, lr=3e-3,
           batch_size=4, eval_k=3, progress=False, log=lambda *a: None)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_tiny_training_lowers_loss_and_writes_a_loadable_head(tiny_target, tmp_path, precision):
    target, prompts = tiny_target
    m = T.train_draft(target, tmp_path / "head", steps=60, prompts=prompts, precision=precision, **RUN)
    assert m["steps"] == 60 and m["start_step"] == 0 and m["precision"] == precision
    assert m["loss_last"] < 0.85 * m["loss_first"], (m["loss_first"], m["loss_last"])
    assert m["heldout"]["anchors"] > 0 and 1.0 <= m["heldout"]["mean_accepted_length"] <= 4.0
    assert m["aux_layer_ids"] == [1, 1, 0]  # SpecForge's 1, N//2-1, N-4 for N = 4
    tcfg = transformers.AutoConfig.from_pretrained(target)
    model = transformers.AutoModelForCausalLM.from_pretrained(target)
    head = load_head(tmp_path / "head", target_embeddings=model.get_input_embeddings().weight, target_config=tcfg)
    assert head.config.draft_vocab_size == 128 and head.config.aux_layer_ids == (1, 1, 0)
    assert int(head.t2d.sum()) == 128
    # the saved head drafts from the target's real features
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    aux = torch.cat([hs[i + 1] for i in (1, 1, 0)], dim=-1)
    drafts = head.draft(aux, torch.cat((ids, ids[:, -1:]), dim=1), 3)
    assert drafts.shape == (1, 3) and bool(head.t2d[drafts].all())


def test_bfloat16_training_autocasts_the_matmuls(tiny_target, tmp_path):
    """Same data, same seed: the first step's loss in bfloat16 is close to float32's but not
    equal (the matmuls did run in bfloat16), and "auto" picks bfloat16 exactly where the CPU
    has it natively."""
    target, prompts = tiny_target
    a = T.train_draft(target, tmp_path / "a", steps=1, prompts=prompts, precision="float32", **RUN)
    b = T.train_draft(target, tmp_path / "b", steps=1, prompts=prompts, precision="bfloat16", **RUN)
    first = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["history"][0]["loss"] for d in "ab"]
    assert first[0] != first[1] and first[1] == pytest.approx(first[0], rel=0.05), first
    assert a["heldout_before"] == b["heldout_before"]  # the estimate stays float32
    assert T.training_precision("auto", "cpu") == ("bfloat16" if T.native_bfloat16("cpu") else "float32")
    with pytest.raises(ValueError, match="precision must be one of"):
        T.train_draft(target, tmp_path / "c", steps=1, prompts=prompts, precision="float8", **RUN)


def test_resume_continues_the_step_counter(tiny_target, tmp_path):
    target, prompts = tiny_target
    out = tmp_path / "head"
    first = T.train_draft(target, out, steps=5, prompts=prompts, **RUN)
    assert first["start_step"] == 0 and torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 5
    second = T.train_draft(target, out, steps=10, prompts=None, **RUN)  # data.pt is reused: no prompts needed
    assert second["start_step"] == 5 and second["steps"] == 10
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 10 and [h["step"] for h in ck["history"]] == list(range(1, 11))
    with pytest.raises(ValueError, match="draft_vocab_size=128"):
        T.train_draft(target, out, steps=10, **dict(RUN, draft_vocab_size=64))


def test_a_new_run_warm_starts_from_another_head(tiny_target, tmp_path):
    """init_from: a new run starts from the other head's weights (its held-out estimate before
    training is the other head's), a resumed run ignores it."""
    target, prompts = tiny_target
    first = T.train_draft(target, tmp_path / "a", steps=30, prompts=prompts, **RUN)
    logs = []
    warm = T.train_draft(target, tmp_path / "b", steps=0, prompts=prompts, init_from=tmp_path / "a",
                         **dict(RUN, log=logs.append))
    assert any("warm start from" in m and "128 of 128 lm_head rows" in m for m in logs), logs
    assert warm["heldout_before"] == first["heldout"]
    a, b = load_head(tmp_path / "a").state_dict(), load_head(tmp_path / "b").state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    logs.clear()
    T.train_draft(target, tmp_path / "b", steps=2, init_from=tmp_path / "missing", **dict(RUN, log=logs.append))
    assert any("resuming from step 0" in m for m in logs) and not any("warm start" in m for m in logs)


def test_main_cli_reports_bad_input(tmp_path, capsys):
    assert T.main(["--target", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_specdec_train_draft_command_forwards_to_the_trainer(tmp_path, capsys):
    from specdec_native import cli

    assert cli.main(["train-draft", "--target", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_stdlib_prompts_grow_by_rounds_over_files():
    """A larger limit extends the list a smaller one gives, and the standard library yields well
    over the 550 prompts one definition pair per file gave."""
    from specdec_native.eagle.data import stdlib_prompts

    small, large = stdlib_prompts(40), stdlib_prompts(1200)
    assert len(small) == 40 and large[:40] == small
    assert len(large) == 1200 and len(set(large)) > 1180  # a few definitions repeat across modules


def test_code_prompts_from_other_sources(tmp_path):
    """--prompt-sources mines any Python tree like the standard library: its documented public
    definitions become prompts (tests folders skipped); no roots means the standard library."""
    from specdec_native.eagle.data import code_prompts, stdlib_prompts

    pkg = tmp_path / "pkg"
    (pkg / "tests").mkdir(parents=True)
    doc = "Return the sum of the squares of the numbers in the iterable, as an int."
    (pkg / "maths.py").write_text(f'def sum_squares(xs):\n    """{doc}"""\n    return sum(x * x for x in xs)\n\n'
                                  f'def _private(xs):\n    """{doc}"""\n    return 0\n')
    (pkg / "tests" / "test_maths.py").write_text(f'def test_it():\n    """{doc}"""\n')
    prompts = code_prompts(10, [pkg])
    assert len(prompts) == 1 and "sum_squares" in prompts[0] and "maths" in prompts[0]
    assert code_prompts(30) == stdlib_prompts(30)
    with pytest.raises(ValueError, match="not a directory"):
        code_prompts(5, [tmp_path / "missing"])


def test_prompt_kinds_choose_what_each_definition_becomes(tiny_target, tmp_path):
    """kinds=("complete",): every mined definition is a Completion (signature + docstring, raw
    code), the same definitions as the default mix in the same order; bad kinds are refused
    before any model is loaded."""
    from specdec_native.eagle.data import Completion, code_prompts

    mixed, completions = code_prompts(30), code_prompts(30, kinds=("complete",))
    assert all(isinstance(p, Completion) for p in completions) and len(completions) == 30
    assert [p for p in mixed if isinstance(p, Completion)] == completions[2::3]
    chat = code_prompts(20, kinds=("explain", "write"))
    assert not any(isinstance(p, Completion) for p in chat) and chat[0].startswith("Explain")
    # "source": each whole definition, dedented, beginning with its "complete" prompt and
    # parsing as Python on its own (methods included: their class indentation is removed).
    sources = code_prompts(30, kinds=("source",))
    assert all(isinstance(p, Completion) for p in sources) and len(sources) == 30
    for head, whole in zip(completions, sources):
        assert whole.startswith(head)  # equal for a definition that is only its docstring
        ast.parse(whole)
    assert sum(len(whole) > len(head) for head, whole in zip(completions, sources)) >= 20
    assert any(p.startswith("def ") and "self" in p.split("\n")[0] for p in sources)  # a method
    for bad in ((), ("complete", "complete"), ("summarise",)):
        with pytest.raises(ValueError, match="prompt kinds must be distinct names"):
            code_prompts(5, kinds=bad)
    with pytest.raises(ValueError, match="prompt kinds"):
        T.train_draft(tiny_target[0], tmp_path / "head", steps=1, prompt_kinds=("poems",), **RUN)
    with pytest.raises(ValueError, match="use it with train_on_prompt"):
        T.train_draft(tiny_target[0], tmp_path / "head", steps=1, prompt_kinds=("source",), **RUN)
    assert not (tmp_path / "head" / "data.pt").exists()


def test_prompt_sources_exclude_other_prompts(tiny_target, tmp_path):
    target, prompts = tiny_target
    with pytest.raises(ValueError, match="not several"):
        T.train_draft(target, tmp_path / "head", steps=1, prompts=prompts, prompt_sources=[str(tmp_path)], **RUN)


def test_completion_prompts_skip_the_chat_template(tmp_path):
    """Every third mined prompt is a Completion (signature + docstring, dedented even for a
    method), encoded without the chat template; JSONL takes {"completion": ...} lines too."""
    import transformers
    from helpers import write_tokenizer

    from specdec_native.eagle.data import Completion, code_prompts, encode_prompts, jsonl_prompts

    doc = "Return the sum of the squares of the numbers in the iterable, as an int."
    src = "".join(f'def f{i}(xs):\n    """{doc}"""\n    return {i}\n\n' for i in range(2))
    src += f'class Box:\n    def area(self):\n        """{doc}"""\n        return 0\n'
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text(src)
    prompts = code_prompts(3, [tmp_path / "src"], per_file=3)
    assert [isinstance(p, Completion) for p in prompts] == [False, False, True]
    assert str(prompts[2]).endswith('"""\n') and str(prompts[2]).startswith("def ") and "return" not in prompts[2]

    (tmp_path / "tok").mkdir()
    write_tokenizer(tmp_path / "tok", vocab_size=256)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"))
    tok.chat_template = "{% for m in messages %}<user> {{ m['content'] }} {% endfor %}<assistant>"
    text = "alpha beta"
    raw, chat = encode_prompts([Completion(text), text], tok, 256, 100)
    assert raw == list(tok(text)["input_ids"]) and chat != raw

    lines = tmp_path / "p.jsonl"
    lines.write_text('{"completion": "def f():\\n"}\n{"prompt": "hi"}\n')
    got = jsonl_prompts(lines)
    assert isinstance(got[0], Completion) and not isinstance(got[1], Completion)
