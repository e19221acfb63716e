"""Shared helpers for the model tests: tiny random-weight Hugging Face checkpoints written with
`transformers` (and a tiny `tokenizers` tokenizer), plus reference runs in CPU torch float32.

Everything here is deterministic: a checkpoint is a function of its arguments and the seed."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

torch.set_num_threads(2)

# A threads hint for the engine too: CI has 2 cores.
NUM_THREADS = 2

# Every CPU kernel set the core can be built with, worst to best; tests skip the ones this CPU lacks.
CPU_ISAS = ["portable", "avx2", "avx512", "amx"]

_ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
}

# Small enough for 2 CI cores, big enough to exercise GQA, several pages and Q8 blocks of 32.
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5, initializer_range=0.15, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=False)


def hf_config(arch: str = "llama", **overrides):
    cfg_name, _ = _ARCHS[arch]
    kwargs = dict(TINY)
    kwargs.update(overrides)
    return getattr(transformers, cfg_name)(**kwargs)


def write_checkpoint(path, arch: str = "llama", *, seed: int = 0, dtype=None,
                     max_shard_size: Optional[str] = None, fill_biases: bool = True,
                     **overrides):
    """Writes a random-weight checkpoint into `path` (config.json, model.safetensors[...],
    generation_config.json) and returns the HF model in float32 eval mode holding exactly the
    saved weights (for a bfloat16 save: the bf16-rounded weights, upcast)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = hf_config(arch, **overrides)
    _, model_name = _ARCHS[arch]
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        # Norm weights are ones at init; make them random so a missing/misapplied norm shows.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias") and fill_biases:
                # Random init may leave biases at zero; a zero bias would hide a missing one.
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    saved = model
    if dtype is not None and dtype != torch.float32:
        saved = model.to(dtype)
        # The reference is a fresh float32 model holding the rounded weights. (Upcasting `saved`
        # would also keep its RoPE inv_freq buffers rounded to `dtype`.)
        torch.manual_seed(seed)
        model = getattr(transformers, model_name)(config).eval()
        model.load_state_dict({k: v.float() for k, v in saved.state_dict().items()})
    kwargs = {"safe_serialization": True}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    saved.save_pretrained(str(path), **kwargs)
    return model


def hf_logits(model, ids: Sequence[int]) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor([list(ids)], dtype=torch.long))
    return out.logits[0].float().numpy()


def hf_greedy(model, ids: Sequence[int], n: int) -> List[int]:
    """n greedy tokens from HF generate(do_sample=False), EOS ignored (no early stop)."""
    gc = transformers.GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=0,
                                       eos_token_id=None, pad_token_id=0, bos_token_id=None)
    with torch.no_grad():
        out = model.generate(torch.tensor([list(ids)], dtype=torch.long), generation_config=gc)
    toks = out[0, len(ids):].tolist()
    assert len(toks) == n
    return toks


def prompt(n: int, seed: int = 0, vocab: int = 256, low: int = 3) -> List[int]:
    rng = np.random.default_rng(1000 + seed)
    return rng.integers(low, vocab, size=n).tolist()


def load_llm(path, **kwargs):
    from specdec_native import LLM

    kwargs.setdefault("num_threads", NUM_THREADS)
    kwargs.setdefault("progress", False)
    return LLM(str(path), **kwargs)


def greedy_params(n: int, **kw):
    from specdec_native import SamplingParams

    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


# ---- a tiny tokenizer ------------------------------------------------------------------------

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
ROLE_TOKENS = ["<system>", "<user>", "<assistant>"]

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def word(i: int) -> str:
    """The text of ordinary token id i: fixed width, so no word is a substring of another."""
    return f"w{i:03d}"


def token_text(i: int) -> str:
    """The text of token id i in the tokenizer below ('' for the special ids 0-2, which decode
    skips)."""
    fixed = SPECIAL_TOKENS + ROLE_TOKENS
    if i < len(SPECIAL_TOKENS):
        return ""
    return fixed[i] if i < len(fixed) else word(i)


def expected_text(ids: Sequence[int]) -> str:
    """What the tokenizer below decodes `ids` to: token texts joined by single spaces."""
    return " ".join(t for t in (token_text(i) for i in ids) if t)


def tokenizer_vocab(vocab_size: int) -> Dict[str, int]:
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + ROLE_TOKENS)}
    for i in range(len(vocab), vocab_size):
        vocab[word(i)] = i
    return vocab


def write_tokenizer(path, vocab_size: int = 256, chat_template: Optional[str] = CHAT_TEMPLATE):
    """A WordLevel tokenizer (whitespace split) with exactly `vocab_size` entries: ids 0-2 are
    <unk> <s> </s> (special), 3-5 role tags, the rest the words w006, w007, ... Decoding joins
    tokens with single spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = Path(path)
    tok = Tokenizer(models.WordLevel(vocab=tokenizer_vocab(vocab_size), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIAL_TOKENS)
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    tok.save(str(path / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": False,
           "tokenizer_class": "PreTrainedTokenizerFast"}
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    with open(path / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(cfg, f)


def set_generation_eos(path, eos: Sequence[int]):
    """Rewrites generation_config.json's eos_token_id (the EOS the engine stops on)."""
    p = Path(path) / "generation_config.json"
    gen = json.loads(p.read_text()) if p.exists() else {}
    gen["eos_token_id"] = list(eos)
    p.write_text(json.dumps(gen))


def edit_config(path, **changes):
    p = Path(path) / "config.json"
    cfg = json.loads(p.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    p.write_text(json.dumps(cfg))


def small_eagle_config(**kw):
    """A tiny EAGLE-3 head config (hidden 32, GQA 4/2, vocab 64, draft vocab 40)."""
    from specdec_native.eagle.config import Eagle3Config

    args = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=64, draft_vocab_size=40, aux_layer_ids=(1, 2, 3), rms_norm_eps=1e-5,
                rope_theta=10000.0, max_position_embeddings=128)
    args.update(kw)
    return Eagle3Config(**args)


def random_eagle_head(cfg=None, seed: int = 0):
    """A torch EAGLE-3 head (specdec_native.eagle.head) with random weights (norms near 1), a
    random embedding table and a random draft vocabulary."""
    from specdec_native.eagle.head import Eagle3Head

    cfg = cfg or small_eagle_config()
    head = Eagle3Head(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name != "embed_tokens.weight":
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    head.set_embeddings(torch.randn(cfg.vocab_size, cfg.hidden_size, generator=g))
    used = torch.randperm(cfg.vocab_size, generator=g)[:cfg.draft_vocab_size].sort().values
    t2d = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    t2d[used] = True
    head.set_vocab_map(used - torch.arange(cfg.draft_vocab_size), t2d)
    return head.eval()


def edit_tensors(path, fn):
    """Loads path/model.safetensors, lets fn change the dict of tensors, writes it back."""
    from safetensors.torch import load_file, save_file

    f = str(Path(path) / "model.safetensors")
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f)


def gil_released_during(work):
    """Runs work(timed, advanced) in a worker thread while this thread counts. timed(name, fn)
    returns fn() and records in advanced[name] whether the count moved meanwhile, which it
    cannot if fn held the GIL throughout; work retries until it has seen what it needs (a
    loaded machine may not schedule this thread during one short call). Returns `advanced`;
    re-raises the worker's error."""
    count = 0
    advanced, errors = {}, []
    done = threading.Event()

    def timed(name, fn):
        before = count
        out = fn()
        advanced[name] = advanced.get(name, False) or count > before
        return out

    def worker():
        try:
            work(timed, advanced)
        except BaseException as e:  # pragma: no cover - re-raised below
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=worker)
    t.start()
    while not done.is_set():
        count += 1
    t.join()
    if errors:
        raise errors[0]
    return advanced


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| (Frobenius)."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(-1) == b.argmax(-1)))




def write_noisy_copy(model, path, scale: float, seed: int = 0):
    """Saves a copy of HF `model` into `path` with Gaussian noise added to every weight (scale
    times that tensor's standard deviation): a draft that agrees with the model only partly.
    Returns the noisy model (float32, eval mode)."""
    import copy

    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=gen))
    noisy.save_pretrained(str(path), safe_serialization=True)
    return noisy


def assert_no_blocks_held(engine):
    """Idle engine: every KV block is free or held only by the prefix cache, and resetting the
    cache frees them all."""
    assert not engine.has_unfinished
    assert engine.num_free_blocks + engine.num_cached_blocks == engine.num_blocks - 1
    engine.reset_prefix_cache()
    assert engine.num_cached_blocks == 0
    assert engine.num_free_blocks == engine.num_blocks - 1


# Ways to break a saved small_eagle_config() head directory, and what the loader must say (the
# torch loader and the C++ one alike).
MALFORMED_EAGLE_HEADS = [
    (lambda p: (p / "config.json").unlink(), "missing config.json"),
    (lambda p: (p / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda p: edit_config(p, architectures=["LlamaForCausalLM"]), "LlamaForCausalLMEagle3"),
    (lambda p: edit_config(p, draft_vocab_size=None), r"missing required keys \['draft_vocab_size'\]"),
    (lambda p: edit_config(p, draft_vocab_size=100), "exceeds vocab_size"),
    (lambda p: edit_config(p, hidden_size=32.5), "hidden_size must be a positive integer"),
    (lambda p: edit_config(p, num_hidden_layers=2), "one-layer"),
    (lambda p: edit_config(p, rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rope_scaling"),
    (lambda p: edit_config(p, eagle_config={"eagle_aux_hidden_state_layer_ids": [1, 2]}),
     "three non-negative layer indices"),
    (lambda p: (p / "model.safetensors").unlink(), "missing model.safetensors"),
    (lambda p: (p / "model.safetensors").write_bytes(b"garbage"), "unreadable safetensors"),
    (lambda p: edit_tensors(p, lambda t: t.pop("fc.weight")), r"missing tensors \['fc.weight'\]"),
    (lambda p: edit_tensors(p, lambda t: t.update({"lm_head.weight": torch.zeros(41, 32)})),
     r"lm_head.weight has shape \[41, 32\], expected \[40, 32\]"),
    (lambda p: edit_tensors(p, lambda t: t.update({"extra.weight": torch.zeros(2)})), "unexpected tensors"),
    (lambda p: edit_tensors(p, lambda t: t.update({"t2d": torch.ones(64, dtype=torch.bool)})), "disagree"),
    (lambda p: edit_tensors(p, lambda t: t.update({"t2d": torch.ones(64)})), r"t2d (has dtype F32|must be bool)"),
    (lambda p: edit_tensors(p, lambda t: t.update({"d2t": t["d2t"] + 1000})), "outside the target vocabulary"),
    (lambda p: edit_tensors(p, lambda t: t.update({"norm.weight": torch.zeros(32, dtype=torch.int32)})),
     r"norm.weight (has dtype I32|must be floating point)"),
]


# ---- verify_tree's bad inputs (the CPU op and the CUDA op refuse the same ones) ----------------
BAD_VERIFY_TREE_CASES = ["length_mismatch", "parent_self", "parent_later", "parent_below_minus_one", "p_rows_short",
                         "p_rows_long", "q_rows", "q_vocab", "token_out_of_range", "negative_token", "p_1d"]


def bad_verify_tree_args(case: str, V: int) -> dict:
    """verify_tree keyword arguments for a two-node chain over V tokens, broken as `case` says."""
    p = np.full((3, V), 1.0 / V, np.float32)
    q = np.full((2, V), 1.0 / V, np.float32)
    args = dict(tokens=[1, 2], parents=[-1, 0], target_probs=p, draft_probs=q)
    broken = {
        "length_mismatch": ("parents", [-1]),
        "parent_self": ("parents", [-1, 1]),
        "parent_later": ("parents", [1, -1]),
        "parent_below_minus_one": ("parents", [-1, -2]),
        "p_rows_short": ("target_probs", p[:2]),
        "p_rows_long": ("target_probs", np.full((4, V), 1.0 / V, np.float32)),
        "q_rows": ("draft_probs", q[:1]),
        "q_vocab": ("draft_probs", np.full((2, V + 1), 1.0 / (V + 1), np.float32)),
        "token_out_of_range": ("tokens", [1, V]),
        "negative_token": ("tokens", [-1, 2]),
        "p_1d": ("target_probs", p[0]),
    }
    key, value = broken[case]
    args[key] = value
    return args


# ---- draft trees -------------------------------------------------------------------------------
def random_parents(rng, n: int):
    """A random parent-first tree of n nodes (node 0 hangs off the prefix)."""
    return [-1] + [int(rng.integers(0, i)) for i in range(1, n)]
