"""The EAGLE-3 trainer's engine data backend (`--data-backend engine`): the C++ engine's greedy
responses and features (Engine.prompt_hidden_states + the final norm + lm_head) against the
transformers backend's on a float32 random-weight Llama, a tiny training run on the engine
backend, and the data-cache / unsupported-target errors."""
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from helpers import edit_tensors, greedy_params, load_llm, prompt, write_checkpoint  # noqa: E402

from specdec_native.eagle import data as D  # noqa: E402
from specdec_native.eagle import train as T  # noqa: E402
from specdec_native.eagle.checkpoint import load_head  # noqa: E402

torch.set_num_threads(1)

N_LAYERS = 4
# float32 on both sides: the engine's CPU kernels and torch sum in different orders
FEATURE_ATOL = 1e-4


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A float32 random-weight Llama (random final/layer norms, so a missing norm shows) and
    prompts of random ids."""
    path = tmp_path_factory.mktemp("eagle_engine_target")
    model = write_checkpoint(path, "llama", seed=3, num_hidden_layers=N_LAYERS)
    prompts = [prompt(4 + (i * 5) % 9, seed=40 + i) for i in range(12)]
    return path, model, prompts


@pytest.fixture(scope="module")
def llm(target):
    return load_llm(target[0], dtype="float32")


def _sequences(prompts, n_extra=9):
    return [{"ids": p + prompt(n_extra, seed=90 + i), "prompt_len": len(p)} for i, p in enumerate(prompts)]


def test_prompt_hidden_states_of_the_last_layer_is_before_the_final_norm(target, llm):
    """What engine_features relies on: layer l's row is transformers' hidden_states[l + 1] for
    l < N - 1, but for the last layer it is the raw residual stream, while transformers'
    hidden_states[N] is last_hidden_state, with the final norm applied."""
    _, model, prompts = target
    ids = prompts[0] + prompts[1]
    raw = []
    hook = model.model.layers[N_LAYERS - 1].register_forward_hook(
        lambda m, a, out: raw.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    finally:
        hook.remove()
    got = torch.from_numpy(llm.engine.prompt_hidden_states(ids, [0, N_LAYERS - 1]))
    assert len(hs) == N_LAYERS + 1
    torch.testing.assert_close(got[:, 0], hs[1][0], rtol=0, atol=FEATURE_ATOL)
    torch.testing.assert_close(got[:, 1], raw[0][0], rtol=0, atol=FEATURE_ATOL)
    with torch.no_grad():
        torch.testing.assert_close(model.model.norm(got[:, 1]), hs[N_LAYERS][0], rtol=0, atol=FEATURE_ATOL)
    assert (got[:, 1] - hs[N_LAYERS][0]).abs().max() > 0.1  # hidden_states[N] is not the raw output


@pytest.mark.parametrize("aux_ids", [(1, 1, 0), (1, 2, N_LAYERS - 1)])
def test_engine_features_equal_transformers_features(target, llm, aux_ids):
    _, model, prompts = target
    seqs = _sequences(prompts[:6])
    ref = D.target_features(model, seqs, aux_ids, batch_size=3, progress=False)
    got = D.engine_features(llm, model, seqs, aux_ids, progress=False)
    H = model.config.hidden_size
    for s, r, g in zip(seqs, ref, got):
        T_ = len(s["ids"])
        assert g["aux"].shape == r["aux"].shape == (T_, 3 * H) and g["final"].shape == r["final"].shape == (T_, H)
        assert g["aux"].dtype == g["final"].dtype == torch.float32 and g["argmax"].dtype == r["argmax"].dtype
        assert g["argmax"].shape == (T_,) and g["aux"].device.type == "cpu"
        torch.testing.assert_close(g["aux"], r["aux"], rtol=0, atol=FEATURE_ATOL)
        torch.testing.assert_close(g["final"], r["final"], rtol=0, atol=FEATURE_ATOL)
        assert torch.equal(g["argmax"], r["argmax"])


def test_engine_responses_equal_transformers_responses(target, llm):
    """Greedy, float32 on both sides. EOS is set (on the torch model only) to a token the target
    emits mid-response, so the cut after EOS (EOS kept) is exercised and the engine must stop on
    the trainer's EOS list, not on its checkpoint's."""
    _, model, prompts = target
    free = D.engine_responses(llm, prompts, 12, eos=[], progress=False)
    firsts = {s["ids"][s["prompt_len"]] for s in free}
    later = [t for s in free for t in s["ids"][s["prompt_len"] + 1:] if t not in firsts and t != 2]
    assert later, "the target emits no token usable as EOS"
    eos = max(set(later), key=later.count)
    old = model.config.eos_token_id, model.generation_config.eos_token_id
    model.config.eos_token_id = model.generation_config.eos_token_id = eos
    try:
        assert D.eos_ids(model) == [eos]
        ref = D.generate_responses(model, prompts, 12, batch_size=4, progress=False)
        got = D.engine_responses(llm, prompts, 12, D.eos_ids(model), chunk=5, progress=False)
    finally:
        model.config.eos_token_id, model.generation_config.eos_token_id = old
    assert got == ref
    cut = [s for s in got if len(s["ids"]) - s["prompt_len"] < 12]
    assert cut and all(s["ids"][-1] == eos for s in cut)


@pytest.mark.parametrize("label_prompts", [False, True])
def test_features_recorded_while_generating_equal_the_separate_pass(target, llm, label_prompts):
    """engine_responses(record=...): the features of every position the target read while
    generating, equal to engine_features' second pass on the finished sequences; a sequence cut
    after EOS has one row fewer (nothing follows EOS), the others all their rows (one token past
    max_new_tokens is generated, then dropped). The response rows' argmax is the engine's own next
    token, equal to the lm_head's; prompt rows have it only with label_prompts (else -1)."""
    _, model, prompts = target
    free = D.engine_responses(llm, prompts, 10, eos=[], progress=False)
    eos = [free[0]["ids"][free[0]["prompt_len"] + 4]]  # a token the target emits: some responses stop early
    recorded = {}
    record = D.Recording(model, (1, 2, 0), lambda s, f: recorded.__setitem__(tuple(s["ids"]), f), label_prompts)
    seqs = D.engine_responses(llm, prompts, 10, eos, chunk=5, progress=False, record=record)
    assert seqs == D.engine_responses(llm, prompts, 10, eos, chunk=5, progress=False)  # the same responses
    ref = D.engine_features(llm, model, seqs, (1, 2, 0), progress=False)
    assert len(recorded) == len(seqs)
    short = 0
    for s, r in zip(seqs, ref):
        got = recorded[tuple(s["ids"])]
        n, P = len(s["ids"]) - (s["ids"][-1] in eos), s["prompt_len"]
        short += n < len(s["ids"])
        assert got["aux"].shape == (n, r["aux"].shape[1]) and got["final"].shape[0] == got["argmax"].shape[0] == n
        torch.testing.assert_close(got["aux"], r["aux"][:n], rtol=0, atol=FEATURE_ATOL)
        torch.testing.assert_close(got["final"], r["final"][:n], rtol=0, atol=FEATURE_ATOL)
        assert torch.equal(got["argmax"][P - 1:], r["argmax"][P - 1:n])
        assert torch.equal(got["argmax"][P - 1:n - 1], torch.tensor(s["ids"][P:n]))  # the tokens themselves
        if label_prompts:
            assert torch.equal(got["argmax"][:P - 1], r["argmax"][:P - 1])
        else:
            assert (got["argmax"][:P - 1] == -1).all()
    assert 0 < short < len(seqs)  # both kinds were checked
    feats = [recorded[tuple(s["ids"])] for s in seqs[:2]]
    responses_only = T.collate(seqs[:2], feats, "cpu")["mask"]
    with_prompts = T.collate(seqs[:2], feats, "cpu", train_on_prompt=True)["mask"]
    for r, s in enumerate(seqs[:2]):  # prompt rows are labels exactly where their greedy token is known
        P = s["prompt_len"] - 1
        assert (responses_only[r, :P] == 0).all() and responses_only[r, P] == 1
        assert torch.equal(with_prompts[r, P:], responses_only[r, P:])
        assert (with_prompts[r, :P] == (1 if label_prompts else 0)).all()


RUN = dict(max_prompts=8, eval_prompts=2, max_new_tokens=12, ttt_steps=2, draft_vocab_size=128, batch_size=2,
           eval_k=2, progress=False, log=lambda *a: None, threads=2)


@pytest.mark.parametrize("backend, label", [("engine", "engine (int4)"), ("transformers", "transformers")])
def test_tiny_training_prepares_then_trains_a_loadable_head(target, tmp_path, backend, label):
    path, model, prompts = target
    out = tmp_path / "head"
    run = dict(RUN, data_backend=backend)
    prep = T.train_draft(path, out, steps=4, prompts=prompts, prepare_only=True, **run)
    assert prep["data_backend"] == label and prep["train_sequences"] + prep["heldout_sequences"] == 10
    assert (out / "data.pt").is_file() and not (out / "checkpoint.pt").exists()
    m = T.train_draft(path, out, steps=4, prompts=None, **run)  # reuses data.pt
    assert m["steps"] == 4 and m["data_backend"] == label and m["heldout"]["anchors"] > 0
    head = load_head(out, target_embeddings=model.get_input_embeddings().weight, target_config=model.config)
    assert head.config.draft_vocab_size == 128 and int(head.t2d.sum()) == 128


def test_train_on_prompt_needs_data_with_prompt_labels(target, tmp_path):
    """Data prepared without --train-on-prompt has no greedy tokens on its prompt rows: training
    on it with --train-on-prompt says so instead of silently learning from the responses only."""
    path, _, prompts = target
    out = tmp_path / "head"
    T.train_draft(path, out, prompts=prompts, prepare_only=True, **RUN)
    with pytest.raises(ValueError, match="--train-on-prompt needs the target's greedy tokens on prompt rows"):
        T.train_draft(path, out, steps=1, train_on_prompt=True, **RUN)
    assert not (out / "checkpoint.pt").exists()


def test_train_on_prompt_draws_the_draft_vocabulary_from_prompts_too(target, tmp_path):
    path, model, prompts = target
    out = tmp_path / "head"
    T.train_draft(path, out, prompts=prompts, prepare_only=True, train_on_prompt=True,
                  **dict(RUN, draft_vocab_size=8))
    data = torch.load(out / "data.pt", weights_only=False)
    V = model.config.vocab_size
    _, with_prompts, _ = D.vocab_map(data["train"], V, 8, include_prompt=True)
    _, responses_only, _ = D.vocab_map(data["train"], V, 8)
    assert torch.equal(data["t2d"], with_prompts) and not torch.equal(with_prompts, responses_only)


def test_merge_data_trains_on_several_directories_with_their_features(target, tmp_path):
    """--merge-data: an empty OUT starts as the first directory (its held-out set included); the
    others add the training sequences OUT lacks, except those whose prompts OUT holds out, with
    their stored features (the target computes none again); the draft vocabulary is rebuilt."""
    path, model, prompts = target
    a, b, out, logs = tmp_path / "a", tmp_path / "b", tmp_path / "out", []
    T.train_draft(path, a, prompts=prompts[:6], prepare_only=True, **dict(RUN, max_prompts=4))
    # b: other response lengths, so its sequences of a's held-out prompts are new sequences
    T.train_draft(path, b, prompts=prompts, prepare_only=True, **dict(RUN, max_prompts=10, seed=1, max_new_tokens=10))
    da, db = (torch.load(d / "data.pt", weights_only=False) for d in (a, b))
    keys_a = {T.S.sequence_key(s) for s in da["train"] + da["heldout"]}
    held = {tuple(s["ids"][:s["prompt_len"]]) for s in da["heldout"]}
    left_out = [s for s in db["train"] if tuple(s["ids"][:s["prompt_len"]]) in held]
    added = [s for s in db["train"] if T.S.sequence_key(s) not in keys_a and s not in left_out]
    assert left_out and added  # both paths are taken
    m = T.train_draft(path, out, steps=2, merge_data=[a, b], **dict(RUN, log=logs.append))
    got = torch.load(out / "data.pt", weights_only=False)
    assert got["heldout"] == da["heldout"] and got["train"] == da["train"] + added
    assert m["train_sequences"] == len(da["train"]) + len(added)
    assert any(f"{len(left_out)} left out" in x for x in logs), "\n".join(logs)
    assert not any(x.startswith("target features of") for x in logs), "\n".join(logs)  # all reused
    _, t2d, _ = D.vocab_map(got["train"], model.config.vocab_size, 128)
    assert torch.equal(got["t2d"], t2d)
    head = load_head(out, target_embeddings=model.get_input_embeddings().weight, target_config=model.config)
    assert int(head.t2d.sum()) == 128
    # resuming with the same --merge-data adds nothing; a new directory once trained is refused
    assert T.train_draft(path, out, steps=3, merge_data=[a, b], **RUN)["start_step"] == 2
    c = tmp_path / "c"
    T.train_draft(path, c, prompts=prompts[6:], prepare_only=True, **dict(RUN, max_prompts=4, seed=2))
    with pytest.raises(ValueError, match="merge into a new --out"):
        T.train_draft(path, out, steps=3, merge_data=[c], **RUN)


def test_merge_data_refuses_other_targets_and_missing_data(target, tmp_path):
    path, _, prompts = target
    a, other, out = tmp_path / "a", tmp_path / "other", tmp_path / "out"
    T.train_draft(path, a, prompts=prompts[:6], prepare_only=True, **dict(RUN, max_prompts=4))
    other.mkdir()
    data = torch.load(a / "data.pt", weights_only=False)
    T.S.save_atomic(dict(data, target="/elsewhere/model"), other / "data.pt")
    with pytest.raises(ValueError, match="holds data for target '/elsewhere/model'"):
        T.train_draft(path, out, steps=1, merge_data=[a, other], **RUN)
    with pytest.raises(ValueError, match="no data.pt there"):
        T.train_draft(path, tmp_path / "out2", steps=1, merge_data=[tmp_path / "nowhere"], **RUN)
    assert T.main(["--target", str(path), "--out", str(tmp_path / "out3"), "--steps", "1", "--no-progress",
                   "--merge-data", str(a), str(tmp_path / "nowhere")]) == 2
    T.S.save_atomic(dict(data, data_backend="transformers"), other / "data.pt")
    with pytest.raises(ValueError, match="transformers data backend, not the engine"):
        T.train_draft(path, out, steps=1, merge_data=[other], **RUN)


def test_a_cache_from_the_other_backend_is_refused(target, tmp_path):
    path, _, prompts = target
    out = tmp_path / "head"
    T.train_draft(path, out, prompts=prompts, prepare_only=True, **dict(RUN, data_backend="transformers"))
    with pytest.raises(ValueError,
                       match=r"made with the transformers data backend, not the engine \(int4\).*another --out"):
        T.train_draft(path, out, steps=1, **RUN)
    with pytest.raises(ValueError, match=r"transformers data backend, not the engine \(float32\)"):
        T.train_draft(path, out, steps=1, **dict(RUN, engine_dtype="float32"))
    assert T.main(["--target", str(path), "--out", str(out), "--steps", "1", "--no-progress"]) == 2


def test_a_target_the_engine_cannot_load_says_to_use_transformers(tmp_path):
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                 bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="use --data-backend transformers"):
        T.train_draft(tmp_path / "gpt2", tmp_path / "out", steps=1, prompts=[[5, 6, 7]] * 4,
                      **dict(RUN, max_prompts=3, eval_prompts=1, draft_vocab_size=32))
    with pytest.raises(ValueError, match="data_backend must be one of"):
        T.train_draft(tmp_path / "gpt2", tmp_path / "out", data_backend="vllm")


def test_features_are_cached_and_the_head_may_be_narrower(target, tmp_path):
    """A resumed run reuses OUT/features.pt (the target's features take longest to make) as long
    as they were made for the same sequences; --head-intermediate-size gives a narrower head that
    both loaders accept."""
    path, model, prompts = target
    out, logs = tmp_path / "head", []
    run = dict(RUN, log=logs.append, head_intermediate_size=24)
    first = T.train_draft(path, out, steps=2, prompts=prompts, **run)
    assert (out / "features.pt").is_file() and not any("reusing" in m and "features" in m for m in logs[:-4])
    assert any("recorded the target features of 10 sequences while generating" in m for m in logs), logs
    logs.clear()
    second = T.train_draft(path, out, steps=4, **run)
    assert any("features.pt" in m for m in logs) and second["start_step"] == 2 == first["steps"]
    head = load_head(out, target_embeddings=model.get_input_embeddings().weight, target_config=model.config)
    assert head.config.intermediate_size == 24
    llm = load_llm(path, draft=str(out), speculative={"method": "eagle", "num_speculative_tokens": 2})
    assert llm.generate(prompt_token_ids=[[5, 6, 7, 8]], sampling_params=[greedy_params(5)])[0].token_ids
    with pytest.raises(ValueError, match="intermediate_size must be >= 1"):
        T.train_draft(path, tmp_path / "bad", steps=1, prompts=prompts, **dict(run, head_intermediate_size=0))


@pytest.mark.parametrize("record", [False, True], ids=["separate_pass", "recorded"])
def test_extend_data_adds_sequences_and_computes_only_their_features(target, tmp_path, record):
    """--extend-data: the held-out sequences stay, new prompts only are answered, the features of
    the old sequences come from features.pt (also from a format-1 file, found by order), and a
    directory with a training checkpoint refuses (its head knows the old draft vocabulary)."""
    path, model, prompts = target
    out, logs = tmp_path / "head", []
    run = dict(RUN, log=logs.append, max_prompts=4, eval_prompts=2, record_features=record)
    T.train_draft(path, out, steps=0, prompts=prompts[:6], **run)  # features of 6 sequences, no checkpoint...
    (out / "checkpoint.pt").unlink()  # ...steps=0 still saves one: this directory starts over
    old = torch.load(out / "data.pt", weights_only=False)
    # the features file as runs before format 2 wrote it: a list in train + heldout order
    stored = torch.load(out / "features.pt", weights_only=False)
    seqs = old["train"] + old["heldout"]
    T.S.save_atomic({"key": {"backend": "engine (int4)", "aux_layers": stored["aux_layers"],
                             "lengths": [len(s["ids"]) for s in seqs]},
                     "feats": [stored["feats"][T.S.sequence_key(s)] for s in seqs]}, out / "features.pt")
    logs.clear()
    m = T.train_draft(path, out, steps=2, prompts=prompts, extend_data=True, **dict(run, max_prompts=8))
    new = torch.load(out / "data.pt", weights_only=False)
    assert new["heldout"] == old["heldout"] and new["train"][:4] == old["train"] and len(new["train"]) == 8
    assert {tuple(s["ids"][:s["prompt_len"]]) for s in new["train"][4:]}.isdisjoint(
        tuple(s["ids"][:s["prompt_len"]]) for s in seqs)
    if record:  # the new sequences' features came with their responses
        assert any("recorded the target features of 4 sequences" in x for x in logs), logs
        assert any("reusing" in x and "of 10 sequences" in x for x in logs), logs
    else:
        assert any("reusing" in x and "of 6 sequences" in x for x in logs), logs
        assert any("target features of 4 sequences" in x for x in logs), logs
    assert m["train_sequences"] == 8 and m["heldout_sequences"] == 2
    feats = torch.load(out / "features.pt", weights_only=False)
    assert feats["format"] == T.S.FEATURES_FORMAT and len(feats["feats"]) == 10
    with pytest.raises(ValueError, match="training checkpoint.*new --out"):
        T.train_draft(path, out, steps=2, prompts=prompts, extend_data=True, **dict(run, max_prompts=10))
    with pytest.raises(ValueError, match="no prompts beyond the 10"):
        (out / "checkpoint.pt").unlink()
        T.train_draft(path, out, steps=2, prompts=prompts[:6], extend_data=True, **dict(run, max_prompts=10))


@pytest.mark.parametrize("record", [False, True], ids=["separate_pass", "recorded"])
def test_features_are_saved_chunk_by_chunk(target, tmp_path, monkeypatch, record):
    """Features are made FEATURE_CHUNK sequences at a time, each chunk appended to OUT as a part
    file (however much is stored, only the new chunk is written), so a run stopped during the
    (long) feature pass keeps what it made; once all are there they are folded into one
    features.pt."""
    path, model, prompts = target
    out = tmp_path / "head"
    monkeypatch.setattr(T, "FEATURE_CHUNK", 2)
    appends, parts_seen = [], []
    real_append = T.S.append_features

    def append(*a):
        appends.append(len(a[3]))
        new = real_append(*a)
        parts_seen.append(len(list(out.glob("features.part-*.pt"))))
        return new

    monkeypatch.setattr(T.S, "append_features", append)
    T.train_draft(path, out, steps=0, prompts=prompts[:6],
                  **dict(RUN, max_prompts=4, eval_prompts=2, record_features=record))
    assert appends == [2, 2, 2] and parts_seen == [1, 2, 3]  # three chunks of 2 sequences, each written
    assert not list(out.glob("features.part-*.pt"))  # folded into features.pt
    stored = torch.load(out / "features.pt", weights_only=False)
    assert len(stored["feats"]) == 6


def test_bad_aux_layers_are_refused_before_any_response_is_generated(target, tmp_path):
    path, _, prompts = target
    out = tmp_path / "head"
    with pytest.raises(ValueError, match="aux_layer_ids must be three non-negative layer indices"):
        T.train_draft(path, out, steps=1, prompts=prompts, **dict(RUN, aux_layer_ids=(1, 2)))
    assert not (out / "data.pt").exists() and not (out / "features.pt").exists()


def _stop_a_data_run_after(n, path, out, prompts, run, monkeypatch):
    """A --prepare-only run into `out` stopped (KeyboardInterrupt) once its journal holds n responses."""
    real_append = T.S.ResponseJournal.append

    def append_then_stop(journal, seq):
        if len(journal.done) == n:
            raise KeyboardInterrupt
        real_append(journal, seq)

    monkeypatch.setattr(T.S.ResponseJournal, "append", append_then_stop)
    with pytest.raises(KeyboardInterrupt):
        T.train_draft(path, out, steps=0, prompts=prompts, prepare_only=True, **run)
    monkeypatch.setattr(T.S.ResponseJournal, "append", real_append)


@pytest.mark.parametrize("backend", ["engine", "transformers"])
def test_a_stopped_data_run_resumes_from_its_response_journal(target, tmp_path, monkeypatch, backend):
    """Each response is journaled (OUT/responses.jsonl) as the target finishes it: a run stopped
    while generating (here after 3 responses, then a line torn by the stop) resumes by answering
    only the other prompts, ends with the same data as an unstopped run, and drops the journal."""
    path, _, prompts = target
    run = dict(RUN, max_prompts=6, eval_prompts=2, data_backend=backend)
    T.train_draft(path, tmp_path / "ref", steps=0, prompts=prompts[:8], prepare_only=True, **run)
    ref = torch.load(tmp_path / "ref" / "data.pt", weights_only=False)
    assert not (tmp_path / "ref" / T.S.ResponseJournal.NAME).exists()

    out = tmp_path / "head"
    _stop_a_data_run_after(3, path, out, prompts[:8], run, monkeypatch)
    journal = out / T.S.ResponseJournal.NAME
    assert not (out / "data.pt").exists() and len(journal.read_text().splitlines()) == 1 + 3
    with open(journal, "a") as f:
        f.write('{"ids": [1, 2')  # the stop cut this line short

    asked = []
    gen = "engine_responses" if backend == "engine" else "generate_responses"
    real_gen = getattr(T.D, gen)
    monkeypatch.setattr(T.D, gen, lambda model, todo, *a, **k: asked.append(len(todo)) or real_gen(model, todo, *a, **k))
    T.train_draft(path, out, steps=0, prompts=prompts[:8], prepare_only=True, **run)
    assert sum(asked) == 8 - 3  # held-out prompts first, then the training ones
    data = torch.load(out / "data.pt", weights_only=False)
    assert data["train"] == ref["train"] and data["heldout"] == ref["heldout"]
    assert not journal.exists()
    if backend == "engine":  # the stopped run's recorded features were kept too (a part file)
        aux = T.resolve_aux_layer_ids(None, N_LAYERS)
        parts = sorted(out.glob("features.part-*.pt"))
        # 4: the sink had the 4th sequence (the one the stop kept out of the journal) too
        assert [len(torch.load(p, weights_only=False)["feats"]) for p in parts] == [4, 5]
        assert set(T.S.load_features(out, "engine (int4)", aux, [])) == \
            {T.S.sequence_key(s) for s in data["train"] + data["heldout"]}


@pytest.mark.parametrize("backend", ["engine", "transformers"])
def test_a_data_time_limit_trains_on_the_responses_made_so_far(target, tmp_path, monkeypatch, backend):
    """--max-data-minutes: once the limit has passed no more training prompts are answered; the
    held-out ones are answered anyway (first), and data.pt holds them and the training responses
    made before (here by a run stopped after 5)."""
    path, _, prompts = target
    run = dict(RUN, max_prompts=6, eval_prompts=2, data_backend=backend)
    T.train_draft(path, tmp_path / "ref", steps=0, prompts=prompts[:8], prepare_only=True, **run)
    ref = torch.load(tmp_path / "ref" / "data.pt", weights_only=False)

    out = tmp_path / "head"
    _stop_a_data_run_after(5, path, out, prompts[:8], run, monkeypatch)
    lines = (out / T.S.ResponseJournal.NAME).read_text().splitlines()[1:]
    made = [json.loads(x) for x in lines]
    trained_before = [s for s in ref["train"] if {"ids": s["ids"], "prompt_len": s["prompt_len"]} in made]
    assert trained_before, "the stopped run should have answered some training prompts"

    logs = []
    T.train_draft(path, out, steps=0, prompts=prompts[:8], prepare_only=True, max_data_minutes=1e-9,
                  **dict(run, log=logs.append))
    data = torch.load(out / "data.pt", weights_only=False)
    assert data["heldout"] == ref["heldout"] and data["train"] == trained_before
    assert len(data["train"]) < len(ref["train"])
    assert any("data time limit reached" in m for m in logs), logs
    assert not (out / T.S.ResponseJournal.NAME).exists()


def test_a_data_time_limit_must_be_positive(target, tmp_path):
    with pytest.raises(ValueError, match="max_data_minutes"):
        T.train_draft(target[0], tmp_path / "head", steps=0, prompts=target[2], max_data_minutes=0, **RUN)


def test_a_journal_made_with_other_settings_is_dropped(tmp_path):
    seq = {"ids": [5, 6, 7, 8], "prompt_len": 2}
    j = T.S.ResponseJournal(tmp_path, {"max_new_tokens": 12})
    j.append(seq)
    j.close()
    j = T.S.ResponseJournal(tmp_path, {"max_new_tokens": 12})
    assert j.get([5, 6]) == seq and j.get([5]) is None
    j.close()
    j = T.S.ResponseJournal(tmp_path, {"max_new_tokens": 16})
    assert j.get([5, 6]) is None
    j.close()
    assert len((tmp_path / T.S.ResponseJournal.NAME).read_text().splitlines()) == 1


def test_responses_made_with_other_end_tokens_are_not_resumed_from():
    from types import SimpleNamespace as NS

    def settings(generation_eos):
        model = NS(config=NS(eos_token_id=2), generation_config=NS(eos_token_id=generation_eos))
        return T._journal_settings("target", "engine", 12, model)

    assert settings([2, 0])["eos"] == [0, 2]
    assert settings(2) != settings([2, 0])  # so ResponseJournal drops the other's responses


def _tables_equal(path):
    from specdec_native.eagle.target import load_target
    full, _ = load_target(path)
    tables, _ = load_target(path, tables_only=True)
    assert tables.tables_only and not full.tables_only
    assert torch.equal(tables.get_input_embeddings().weight, full.get_input_embeddings().weight)
    assert torch.equal(tables.get_output_embeddings().weight, full.get_output_embeddings().weight)
    assert torch.equal(tables.base_model.norm.weight, full.base_model.norm.weight)
    assert tables.config.num_hidden_layers == full.config.num_hidden_layers
    assert D.eos_ids(tables) == D.eos_ids(full)
    assert next(tables.base_model.layers.parameters()).device.type == "meta"  # no layer weights held
    return tables


def test_the_engine_backend_reads_only_the_targets_tables(target, tmp_path):
    """tables_only (the engine backend): the embedding, final norm and lm_head equal the full
    transformers model's, from safetensors (tied and untied) and from a real GGUF file."""
    path = target[0]
    _tables_equal(path)
    tied = tmp_path / "tied"
    write_checkpoint(tied, "llama", seed=4, num_hidden_layers=2, tie_word_embeddings=True)
    m = _tables_equal(tied)
    assert m.get_output_embeddings().weight is m.get_input_embeddings().weight
    from test_gguf_convert import smollm2_gguf
    _tables_equal(smollm2_gguf())


@pytest.mark.parametrize("table", ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"])
def test_a_table_of_the_wrong_shape_is_refused(tmp_path, table):
    from specdec_native.eagle.target import load_target
    path = tmp_path / "target"
    write_checkpoint(path, "llama", seed=5, num_hidden_layers=2)
    edit_tensors(path, lambda t: t.__setitem__(table, t[table][:-1].clone()))  # one row (or entry) short
    with pytest.raises(ValueError, match=r"of shape .*expected .* from its config"):
        load_target(path, tables_only=True)
