"""The C++ EAGLE-3 head (_core.Eagle3Head, cpp/model/eagle_head.cpp) against the torch reference
(specdec_native.eagle.head): random-weight heads written with save_head, loaded by the C++ loader,
same logits and output hidden states for a full causal pass, a KV-cached continuation, greedy
drafting from the head's own outputs, tree-masked siblings and mixed feature/hidden rows; the
vocabulary map; bf16 weights; and the loader's errors."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from helpers import CPU_ISAS, MALFORMED_EAGLE_HEADS, edit_config, edit_tensors, random_eagle_head, small_eagle_config  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from specdec_native import _core  # noqa: E402
from specdec_native.eagle.checkpoint import save_head  # noqa: E402
from specdec_native.eagle.config import default_aux_layer_ids  # noqa: E402
from specdec_native.eagle.head import Eagle3Head  # noqa: E402

torch.set_num_threads(1)
TOL = dict(rtol=1e-4, atol=1e-4)


small_config, random_head = small_eagle_config, random_eagle_head


def target_config(hidden=32, vocab=64, layers=6):
    m = _core.ModelConfig()
    m.architecture = "LlamaForCausalLM"
    m.vocab_size, m.hidden_size, m.intermediate_size, m.num_layers = vocab, hidden, 64, layers
    m.num_heads, m.num_kv_heads, m.head_dim = 4, 2, hidden // 4
    m.rms_norm_eps = 1e-5
    return m


# name -> (head config changes, target hidden size, save the embedding table in the head)
CONFIGS = {
    "gqa": ({}, 32, False),
    "mha_head_dim16": (dict(num_key_value_heads=4, head_dim=16), 32, False),
    "wide_target_own_embed": (dict(target_hidden_size=48, num_key_value_heads=1), 48, True),
}


class Saved:
    def __init__(self, path, kind="gqa", seed=0):
        changes, self.target_hidden, self.own_embed = CONFIGS[kind]
        self.head = random_head(small_config(**changes), seed=seed)
        self.path = save_head(self.head, path, include_embeddings=self.own_embed)
        self.cfg = self.head.config
        self.target = target_config(hidden=self.target_hidden)
        # the target's token table; a head that carries its own needs none
        self.embed = None if self.own_embed else self.head.embed_tokens.weight.detach().numpy().copy()

    def load(self, dtype="float32"):
        return _core.Eagle3Head.load(str(self.path), self.target, dtype)

    def sequence(self, T, seed=3):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(T, 3 * self.cfg.target_hidden_size, generator=g),
                torch.randint(0, self.cfg.vocab_size, (T,), generator=g))


@pytest.fixture(params=sorted(CONFIGS))
def saved(tmp_path, request):
    return Saved(tmp_path / "head", request.param)


def ref_forward(head, h, ids, past=None):
    """Torch: (logits [T, draft_vocab], h' [T, H], past) of entries with input state h [T, H]."""
    with torch.no_grad():
        out, past = head.forward(h[None], ids[None], past)
        return head.logits(out)[0].numpy(), out[0].numpy(), past


def i32(t):
    return np.ascontiguousarray(np.asarray(t, dtype=np.int32))


def f32(t):
    return np.ascontiguousarray(t.detach().numpy() if torch.is_tensor(t) else t, dtype=np.float32)


# --- forward against torch --------------------------------------------------------------------
def test_full_forward_matches_torch(saved):
    ch = saved.load()
    aux, ids = saved.sequence(37)  # several pages of 16
    with torch.no_grad():
        ref_logits, ref_hidden, _ = ref_forward(saved.head, saved.head.fc(aux), ids)
    logits, hidden = ch.forward(i32(ids), features=f32(aux), embed=saved.embed)
    assert logits.shape == (37, saved.cfg.draft_vocab_size) and hidden.shape == (37, saved.cfg.hidden_size)
    np.testing.assert_allclose(logits, ref_logits, **TOL)
    np.testing.assert_allclose(hidden, ref_hidden, **TOL)


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_every_cpu_kernel_set(tmp_path, isa):
    if isa not in _core.ops.available_cpu_isas():
        pytest.skip(f"{isa} kernels are not available on this machine")
    s = Saved(tmp_path / "head", "gqa")
    aux, ids = s.sequence(37)
    with torch.no_grad():
        ref_logits, ref_hidden, _ = ref_forward(s.head, s.head.fc(aux), ids)
    prev = _core.ops.set_cpu_isa(isa)
    try:
        logits, hidden = s.load().forward(i32(ids), features=f32(aux), embed=s.embed)
    finally:
        _core.ops.set_cpu_isa(prev)
    np.testing.assert_allclose(logits, ref_logits, **TOL)
    np.testing.assert_allclose(hidden, ref_hidden, **TOL)


def test_kv_cached_continuation_equals_full_forward(saved):
    ch = saved.load()
    aux, ids = saved.sequence(37)
    full_logits, full_hidden = ch.forward(i32(ids), features=f32(aux), embed=saved.embed)
    seq = ch.sequence(embed=saved.embed, capacity=64, page_size=16)
    parts = []
    for a, b in ((0, 5), (5, 6), (6, 17), (17, 33), (33, 37)):
        parts.append(seq.forward(i32(ids[a:b]), features=f32(aux[a:b])))
    assert seq.num_tokens == 37
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), full_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), full_hidden, rtol=1e-5, atol=1e-5)


def test_greedy_drafting_matches_torch_draft(saved):
    """The head's own output h' fed back as the next entry's h (KV-cached), as Eagle3Head.draft."""
    ch = saved.load()
    d2t = np.asarray(ch.draft_to_target)
    k = 5
    aux, ids = saved.sequence(24, seed=5)
    for n in (1, 9, 20):
        tokens, ref_logits = saved.head.draft(aux[None, :n], ids[None, :n + 1], k, return_logits=True)
        seq = ch.sequence(embed=saved.embed, capacity=n + k)
        logits, hidden = seq.forward(i32(ids[1:n + 1]), features=f32(aux[:n]))
        for j in range(k):
            np.testing.assert_allclose(logits[-1], ref_logits[j][0].numpy(), **TOL)
            tok = int(d2t[int(np.argmax(logits[-1]))])
            assert tok == int(tokens[0, j])
            logits, hidden = seq.forward(i32([tok]), hidden=hidden[-1:])


def test_tree_mask_siblings_match_separate_runs(saved):
    """Two drafted siblings at the same position in one call, each seeing the prefix and itself."""
    ch = saved.load()
    n = 18
    aux, ids = saved.sequence(n + 2, seed=7)
    g = torch.Generator().manual_seed(8)
    hs = torch.randn(2, saved.cfg.hidden_size, generator=g)
    with torch.no_grad():
        _, _, past = ref_forward(saved.head, saved.head.fc(aux[:n]), ids[:n])
    refs = [ref_forward(saved.head, hs[i:i + 1], ids[n + i:n + i + 1], past)[:2] for i in range(2)]

    seq = ch.sequence(embed=saved.embed, capacity=n + 2)
    seq.forward(i32(ids[:n]), features=f32(aux[:n]))
    mask = np.zeros((2, n + 2), dtype=bool)
    mask[:, :n] = True
    mask[0, n] = mask[1, n + 1] = True
    logits, hidden = seq.forward(i32(ids[n:]), hidden=f32(hs), positions=i32([n, n]), mask=mask)
    for i in range(2):
        np.testing.assert_allclose(logits[i], refs[i][0][0], **TOL)
        np.testing.assert_allclose(hidden[i], refs[i][1][0], **TOL)
    # rolling back the siblings and appending one of them causally gives the same entry
    seq.truncate(n)
    logits1, hidden1 = seq.forward(i32(ids[n + 1:]), hidden=f32(hs[1:]))
    np.testing.assert_allclose(logits1[0], logits[1], rtol=1e-5, atol=1e-5)


def test_mixed_feature_and_hidden_rows(saved):
    ch = saved.load()
    T = 11
    aux, ids = saved.sequence(T, seed=9)
    g = torch.Generator().manual_seed(10)
    own = torch.randn(T, saved.cfg.hidden_size, generator=g)
    flags = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0], dtype=bool)
    with torch.no_grad():
        h = torch.where(torch.from_numpy(flags)[:, None], own, saved.head.fc(aux))
    ref_logits, ref_hidden, _ = ref_forward(saved.head, h, ids)
    logits, hidden = ch.forward(i32(ids), features=f32(aux), hidden=f32(own), from_hidden=flags,
                                embed=saved.embed)
    np.testing.assert_allclose(logits, ref_logits, **TOL)
    np.testing.assert_allclose(hidden, ref_hidden, **TOL)


# --- metadata -----------------------------------------------------------------------------------
def test_vocab_map_and_config(tmp_path):
    s = Saved(tmp_path / "head")
    ch = s.load()
    expected = (torch.arange(s.cfg.draft_vocab_size) + s.head.d2t).tolist()
    assert ch.draft_to_target == expected
    assert expected != list(range(s.cfg.draft_vocab_size))  # a real remapping
    assert all(bool(s.head.t2d[t]) for t in ch.draft_to_target)
    assert (ch.hidden_size, ch.target_hidden_size, ch.vocab_size, ch.draft_vocab_size) == (32, 32, 64, 40)
    assert (ch.num_heads, ch.num_kv_heads, ch.head_dim, ch.intermediate_size) == (4, 2, 8, 48)
    assert ch.aux_layer_ids == [1, 2, 3] and not ch.has_embeddings and ch.dtype == "float32"
    assert ch.rms_norm_eps == pytest.approx(1e-5) and ch.rope_theta == 10000.0


def test_default_aux_layers_follow_the_target(tmp_path):
    head = random_head(small_config(aux_layer_ids=None))
    save_head(head, tmp_path)
    for layers in (4, 6, 32):
        ch = _core.Eagle3Head.load(str(tmp_path), target_config(layers=layers), "float32")
        assert ch.aux_layer_ids == list(default_aux_layer_ids(layers))


def test_top_level_aux_key_and_int32_d2t(tmp_path):
    s = Saved(tmp_path / "head")
    edit_config(s.path, eagle_config=None, eagle_aux_hidden_state_layer_ids=[0, 4, 5])
    edit_tensors(s.path, lambda t: t.update({"d2t": t["d2t"].to(torch.int32)}))
    ch = s.load()
    assert ch.aux_layer_ids == [0, 4, 5]
    assert ch.draft_to_target == (torch.arange(s.cfg.draft_vocab_size) + s.head.d2t).tolist()


# --- other weight dtypes ------------------------------------------------------------------------
def _rounded(head, norms):
    """A copy of the head with its matrices (and, with `norms`, its norm weights) rounded to bf16."""
    ref = random_head(head.config)
    ref.load_state_dict(head.state_dict())
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name != "embed_tokens.weight" and (norms or not name.endswith("norm.weight")):
                p.copy_(p.to(torch.bfloat16).float())
    return ref


def test_bf16_checkpoint_and_bf16_load(tmp_path):
    s = Saved(tmp_path / "f32")
    aux, ids = s.sequence(21)
    # an f32 checkpoint converted to bf16 at load time (the norms stay f32)
    ref = _rounded(s.head, norms=False)
    with torch.no_grad():
        ref_logits, ref_hidden, _ = ref_forward(ref, ref.fc(aux), ids)
    logits, hidden = s.load("bfloat16").forward(i32(ids), features=f32(aux), embed=s.embed)
    np.testing.assert_allclose(logits, ref_logits, **TOL)
    np.testing.assert_allclose(hidden, ref_hidden, **TOL)
    # a bf16 checkpoint (d2t stays int64) loaded as f32
    bf = random_head(s.cfg)
    bf.load_state_dict(s.head.state_dict())
    bf.to(torch.bfloat16)
    save_head(bf, tmp_path / "bf16")
    assert load_file(str(tmp_path / "bf16" / "model.safetensors"))["fc.weight"].dtype == torch.bfloat16
    ref = _rounded(s.head, norms=True)
    with torch.no_grad():
        ref_logits, ref_hidden, _ = ref_forward(ref, ref.fc(aux), ids)
    ch = _core.Eagle3Head.load(str(tmp_path / "bf16"), s.target, "float32")
    logits, hidden = ch.forward(i32(ids), features=f32(aux), embed=s.embed)
    np.testing.assert_allclose(logits, ref_logits, **TOL)
    np.testing.assert_allclose(hidden, ref_hidden, **TOL)


def test_int8_load_is_close(tmp_path):
    s = Saved(tmp_path / "head")
    aux, ids = s.sequence(21)
    with torch.no_grad():
        ref_logits, _, _ = ref_forward(s.head, s.head.fc(aux), ids)
    logits, _ = s.load("int8").forward(i32(ids), features=f32(aux), embed=s.embed)
    assert np.isfinite(logits).all()
    assert np.abs(logits - ref_logits).max() < 0.05 * np.abs(ref_logits).max()


# --- errors ---------------------------------------------------------------------------------------
def test_mismatched_target_raises(tmp_path):
    s = Saved(tmp_path / "head")
    load = lambda t: _core.Eagle3Head.load(str(s.path), t, "float32")  # noqa: E731
    with pytest.raises(ValueError, match=r"hidden size mismatch.*size 32 \(3 x 32 in\), the target has 48"):
        load(target_config(hidden=48))
    with pytest.raises(ValueError, match="vocab size mismatch.*64-token vocabulary, the target has 65"):
        load(target_config(vocab=65))
    with pytest.raises(ValueError, match=r"aux layer ids \[1, 2, 3\] out of range for a 3-layer target"):
        load(target_config(layers=3))
    with pytest.raises(ValueError, match="dtype must be one of"):
        _core.Eagle3Head.load(str(s.path), s.target, "float64")
    # a head narrower than its target embeds with the target's table only if it carries its own
    narrow = random_head(small_config(target_hidden_size=48))
    save_head(narrow, tmp_path / "narrow")
    with pytest.raises(ValueError, match="embeds tokens with the target's table"):
        _core.Eagle3Head.load(str(tmp_path / "narrow"), target_config(hidden=48), "float32")


@pytest.mark.parametrize("breakage, message", MALFORMED_EAGLE_HEADS)
def test_malformed_directory_raises(tmp_path, breakage, message):
    s = Saved(tmp_path / "head")
    breakage(s.path)
    with pytest.raises(ValueError, match=message):
        s.load()


def test_not_a_directory(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        _core.Eagle3Head.load(str(tmp_path / "nope"), target_config(), "float32")


def test_forward_argument_errors(tmp_path):
    s = Saved(tmp_path / "head")
    ch = s.load()
    aux, ids = s.sequence(6)
    with pytest.raises(ValueError, match="features"):
        ch.forward(i32(ids), features=f32(aux[:, :10]), embed=s.embed)
    with pytest.raises(ValueError, match="out of range"):
        ch.forward(i32([0, 64]), features=f32(aux[:2]), embed=s.embed)
    with pytest.raises(ValueError, match="no embedding table"):
        ch.forward(i32(ids), features=f32(aux))
    with pytest.raises(ValueError, match="embedding table is"):
        ch.forward(i32(ids), features=f32(aux), embed=s.embed[:, :16].copy())
    with pytest.raises(ValueError, match="hidden states but none"):
        ch.forward(i32(ids), features=f32(aux), from_hidden=np.ones(6, dtype=bool), embed=s.embed)
    seq = ch.sequence(embed=s.embed, capacity=4)
    with pytest.raises(ValueError, match="capacity is 4"):
        seq.forward(i32(ids), features=f32(aux))
    seq.forward(i32(ids[:3]), features=f32(aux[:3]))
    with pytest.raises(ValueError, match="mask"):
        seq.forward(i32(ids[3:4]), features=f32(aux[3:4]), mask=np.ones((1, 3), dtype=bool))
    assert seq.num_tokens == 3  # a failed call adds nothing
