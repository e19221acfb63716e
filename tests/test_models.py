"""Whole models against Hugging Face transformers (CPU torch, float32) on tiny random-weight
checkpoints these tests save themselves.

Tolerances (measured on these configs; logits reach |5-7|):
  float32 engine vs HF float32:          max |diff| ~1e-5      -> assert max |diff| < 1e-4
  bf16 checkpoint, dtype="auto" vs HF
    float32 on the same bf16 weights:    max |diff| ~1e-5      -> assert max |diff| < 1e-4
  f32 checkpoint (initializer_range 0.1, logits up to ~3.5), relative error
  ||ours - hf|| / ||hf|| over all prompt logits, measured on 3 seeds:
    dtype="float16":                     0.9e-3                -> assert < 5e-3,  argmax >= 95%
    dtype="bfloat16":                    0.7e-2                -> assert < 2e-2,  argmax >= 90%
    dtype="int8" (weights and activations
      quantized, a scale per 32):        2.9-3.1e-2            -> assert < 5e-2,  argmax >= 85%
                                                                  (measured 91-95%)
    dtype="int4" (4-bit weights, int8
      activations; 4 bits lose much more
      on random normal weights than on
      trained ones):                     0.23-0.31             -> assert < 0.4,   argmax >= 50%
                                                                  (measured 58-66%; a wrong
                                                                  kernel gives ~1.4 and ~1%)
  The real-model check of int4 is on SmolLM2 (test_gguf_convert.py): there it reproduces the
  GGUF's Q4_1 weights exactly.
Greedy tokens are compared exactly (32 tokens against HF generate(do_sample=False)).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import (argmax_agreement, assert_no_blocks_held, greedy_params, hf_config, hf_greedy, hf_logits, load_llm,
                     prompt, relative_error, torch, transformers, write_checkpoint)

from specdec_native import SamplingParams

F32_ATOL = 1e-4
N_GREEDY = 32

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}

# name -> (arch, config overrides). rope_theta values differ from 10000 so a dropped theta shows.
CONFIGS = {
    "llama_gqa_untied": ("llama", dict(rope_theta=5000.0)),
    "llama_gqa_tied": ("llama", dict(tie_word_embeddings=True, num_key_value_heads=1)),
    "llama3_rope_scaling": ("llama", dict(max_position_embeddings=512, rope_scaling=LLAMA3_ROPE,
                                          rope_theta=20000.0)),
    "llama_head_dim_override": ("llama", dict(head_dim=32, num_hidden_layers=3)),
    "qwen2_bias": ("qwen2", dict(rope_theta=1e6, tie_word_embeddings=True)),
    "mistral": ("mistral", dict(sliding_window=None, rope_theta=1e6)),
}

# Long enough to pass the llama3 original context (64) and to span several 16-token KV pages.
PROMPT_LEN = 100


@pytest.fixture(scope="module", params=list(CONFIGS))
def model_case(request, tmp_path_factory):
    arch, overrides = CONFIGS[request.param]
    path = tmp_path_factory.mktemp(request.param)
    hf = write_checkpoint(path, arch, seed=len(request.param), **overrides)
    return request.param, path, hf, load_llm(path)


def test_config_is_what_we_meant(model_case):
    name, path, hf, llm = model_case
    c = llm.config
    if name.startswith("llama_gqa") or name == "mistral":
        assert c.num_kv_heads < c.num_heads
    if name == "llama_gqa_tied":
        assert c.tie_word_embeddings and c.num_kv_heads == 1
    if name == "llama_head_dim_override":
        assert c.head_dim == 32 != c.hidden_size // c.num_heads
    if name == "llama3_rope_scaling":
        assert c.rope_scaling.type == "llama3" and c.rope_scaling.factor == 8.0
        assert c.rope_scaling.original_max_position_embeddings == 64
        assert llm.max_model_len == 512
    if name == "qwen2_bias":
        from safetensors.numpy import load_file

        tensors = load_file(str(path / "model.safetensors"))
        for proj in ("q", "k", "v"):
            b = tensors[f"model.layers.0.self_attn.{proj}_proj.bias"]
            assert np.abs(b).min() > 0 and np.abs(b).mean() > 0.1, f"{proj}_proj.bias is ~zero"
        assert c.attention_bias
    expected_theta = {"llama_gqa_untied": 5000.0, "llama3_rope_scaling": 20000.0, "qwen2_bias": 1e6,
                      "mistral": 1e6}.get(name, 10000.0)
    assert c.rope_theta == pytest.approx(expected_theta)


def test_prompt_logits_match_hf(model_case):
    name, _, hf, llm = model_case
    ids = prompt(PROMPT_LEN, seed=1)
    ref = hf_logits(hf, ids)
    ours = llm.prompt_logits(ids)
    assert ours.shape == ref.shape == (PROMPT_LEN, hf.config.vocab_size)
    diff = float(np.abs(ours - ref).max())
    assert diff < F32_ATOL, f"{name}: max |logit diff| {diff:.3g} >= {F32_ATOL}"


@pytest.mark.parametrize("plen", [1, 23])
def test_greedy_tokens_match_hf_generate(model_case, plen):
    name, _, hf, llm = model_case
    ids = prompt(plen, seed=plen)
    ref = hf_greedy(hf, ids, N_GREEDY)
    out = llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(N_GREEDY))[0]
    assert out.token_ids == ref, name
    assert out.finish_reason == "length"


def test_llama3_scaling_matters(tmp_path):
    """The llama3 comparison above has teeth: past position 64 the scaled and unscaled models
    differ by far more than the tolerance, and the engine follows the scaled one."""
    hf = write_checkpoint(tmp_path, "llama", seed=3, max_position_embeddings=512, rope_scaling=LLAMA3_ROPE)
    plain = transformers.LlamaForCausalLM(hf_config("llama", max_position_embeddings=512)).eval()
    plain.load_state_dict(hf.state_dict())
    ids = prompt(PROMPT_LEN, seed=3)
    ref, unscaled = hf_logits(hf, ids), hf_logits(plain, ids)
    assert np.abs(ref[64:] - unscaled[64:]).max() > 100 * F32_ATOL
    ours = load_llm(tmp_path).prompt_logits(ids)
    assert np.abs(ours - ref).max() < F32_ATOL

    # transformers < 5 writes the same thing as top-level 'rope_scaling' and 'rope_theta'
    # (transformers >= 5 as 'rope_parameters'); both spellings load the same model.
    cfg = json.loads((tmp_path / "config.json").read_text())
    params = cfg.pop("rope_parameters", None) or dict(cfg.pop("rope_scaling"), rope_theta=cfg.pop("rope_theta"))
    cfg["rope_theta"] = params.pop("rope_theta")
    cfg["rope_scaling"] = params
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    v4 = load_llm(tmp_path)
    assert v4.config.rope_scaling.type == "llama3"
    assert np.abs(v4.prompt_logits(ids) - ours).max() == 0


def test_mistral_sliding_window_caps_context(tmp_path):
    """A sliding window smaller than max_position_embeddings caps the served context; inside
    the window attention is ordinary causal attention and matches HF."""
    hf = write_checkpoint(tmp_path, "mistral", seed=5, sliding_window=128, max_position_embeddings=256)
    llm = load_llm(tmp_path)
    assert llm.max_model_len == 128
    ids = prompt(PROMPT_LEN, seed=5)
    assert np.abs(llm.prompt_logits(ids) - hf_logits(hf, ids)).max() < F32_ATOL
    with pytest.raises(ValueError):
        llm.prompt_logits(prompt(128, seed=5))


# ---- dtypes --------------------------------------------------------------------------------

def test_bf16_checkpoint_auto_dtype(tmp_path):
    hf = write_checkpoint(tmp_path, "llama", seed=7, dtype=torch.bfloat16)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    llm = load_llm(tmp_path, dtype="auto")
    assert llm.engine.dtype == "bfloat16"
    ids = prompt(PROMPT_LEN, seed=7)
    # HF runs in float32 on the bf16-rounded weights; the engine reads bf16 weights and
    # computes in float32, so the two agree as closely as float32 runs do.
    diff = float(np.abs(llm.prompt_logits(ids) - hf_logits(hf, ids)).max())
    assert diff < F32_ATOL, diff
    ids = prompt(11, seed=8)
    assert llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(N_GREEDY))[0].token_ids == \
        hf_greedy(hf, ids, N_GREEDY)


@pytest.fixture(scope="module")
def f32_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("f32")
    # A milder init than the other tests: random models amplify rounding errors layer by layer,
    # more so with larger weights; 0.1 keeps the reduced-precision errors representative.
    hf = write_checkpoint(path, "llama", seed=11, initializer_range=0.1)
    return path, hf


@pytest.mark.parametrize("dtype,max_rel,min_agree", [
    ("float16", 5e-3, 0.95),
    ("bfloat16", 2e-2, 0.90),
    ("int8", 5e-2, 0.85),
    ("int4", 0.4, 0.50),
])
def test_reduced_precision_close_to_float32(f32_checkpoint, dtype, max_rel, min_agree):
    path, hf = f32_checkpoint
    llm = load_llm(path, dtype=dtype)
    assert llm.engine.dtype == dtype
    ids = prompt(PROMPT_LEN, seed=11)
    ref = hf_logits(hf, ids)
    ours = llm.prompt_logits(ids)
    rel = relative_error(ours, ref)
    agree = argmax_agreement(ours, ref)
    assert rel < max_rel, f"{dtype}: relative logit error {rel:.3g} >= {max_rel}"
    assert agree >= min_agree, f"{dtype}: argmax agrees on {agree:.0%} of positions"
    # Reduced precision really is in use (not silently float32).
    assert rel > 1e-5
    # And it still generates, deterministically.
    p = greedy_params(8)
    a = llm.generate(prompt_token_ids=[ids[:9]], sampling_params=p)[0].token_ids
    assert a == llm.generate(prompt_token_ids=[ids[:9]], sampling_params=p)[0].token_ids


# ---- batching, KV budget, chunked prefill, shards --------------------------------------------

BATCH_LENS = [5, 17, 30, 41]


def _batch_prompts():
    return [prompt(n, seed=100 + n) for n in BATCH_LENS]


def _params(temperature):
    if temperature == 0:
        return [greedy_params(N_GREEDY) for _ in BATCH_LENS]
    return [SamplingParams(max_tokens=N_GREEDY, temperature=temperature, seed=1234 + i, ignore_eos=True)
            for i in range(len(BATCH_LENS))]


def _alone(llm, prompts, params):
    return [llm.generate(prompt_token_ids=[p], sampling_params=sp)[0].token_ids for p, sp in zip(prompts, params)]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_batched_equals_alone(f32_checkpoint, temperature):
    path, hf = f32_checkpoint
    prompts, params = _batch_prompts(), _params(temperature)
    llm = load_llm(path)
    alone = _alone(llm, prompts, params)
    together = [o.token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]
    assert together == alone
    if temperature == 0:
        assert alone[0] == hf_greedy(hf, prompts[0], N_GREEDY)
    else:
        assert len({tuple(t) for t in alone}) == len(alone)

    # A KV budget far below 4 x (prompt + 32): requests wait for blocks (and for one of the two
    # sequence slots) and still give exactly the same tokens; every block comes back.
    small = load_llm(path, num_blocks=9, max_num_seqs=2)  # 8 usable blocks of 16 tokens
    need = [-(-(n + N_GREEDY) // 16) for n in BATCH_LENS]
    assert sum(need) > 8 and max(need) <= 8
    outs = small.generate(prompt_token_ids=prompts, sampling_params=params)
    assert [o.token_ids for o in outs] == alone
    assert all(o.finish_reason == "length" for o in outs)
    assert_no_blocks_held(small.engine)


def test_chunked_prefill_matches_unchunked(f32_checkpoint):
    """prefill_chunk=7 splits prompts across chunks and 16-token pages. (prompt_logits runs the
    whole prompt in one forward, so the chunked path is checked by its tokens.)"""
    path, hf = f32_checkpoint
    prompts = [prompt(n, seed=200 + n) for n in (3, 7, 8, 15, 16, 45)]
    whole = load_llm(path)
    chunked = load_llm(path, prefill_chunk=7)
    for params in (_params(0.0)[:1] * len(prompts),
                   [SamplingParams(max_tokens=N_GREEDY, temperature=0.8, seed=77 + i, ignore_eos=True)
                    for i in range(len(prompts))]):
        a = [o.token_ids for o in whole.generate(prompt_token_ids=prompts, sampling_params=params)]
        b = [o.token_ids for o in chunked.generate(prompt_token_ids=prompts, sampling_params=params)]
        assert a == b
    ref = hf_greedy(hf, prompts[-1], N_GREEDY)
    assert chunked.generate(prompt_token_ids=[prompts[-1]], sampling_params=greedy_params(N_GREEDY))[0].token_ids == ref
    ids = prompt(PROMPT_LEN, seed=13)
    assert np.abs(chunked.prompt_logits(ids) - hf_logits(hf, ids)).max() < F32_ATOL


def test_sharded_checkpoint(tmp_path):
    hf = write_checkpoint(tmp_path, "qwen2", seed=17, max_shard_size="100KB")
    index = tmp_path / "model.safetensors.index.json"
    assert index.is_file() and not (tmp_path / "model.safetensors").exists()
    shards = set(json.loads(index.read_text())["weight_map"].values())
    assert len(shards) > 1
    llm = load_llm(tmp_path)
    assert len(llm.checkpoint.shards) == len(shards)
    ids = prompt(PROMPT_LEN, seed=17)
    assert np.abs(llm.prompt_logits(ids) - hf_logits(hf, ids)).max() < F32_ATOL
    ids = prompt(9, seed=18)
    assert llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(N_GREEDY))[0].token_ids == \
        hf_greedy(hf, ids, N_GREEDY)


def test_prompt_hidden_states_are_the_layer_outputs(tmp_path):
    """The features an EAGLE-3 head reads: the residual stream after a decoder layer, equal to
    transformers' hidden_states[l + 1] (which is the raw output of layer l for l < N - 1)."""
    model = write_checkpoint(tmp_path, "qwen2", seed=5, num_hidden_layers=4)
    llm = load_llm(tmp_path)
    ids = prompt(21, seed=3)
    with torch.no_grad():
        ref = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    got = llm.engine.prompt_hidden_states(ids, [2, 0, 1])
    assert got.shape == (21, 3, model.config.hidden_size)
    for j, layer in enumerate([2, 0, 1]):
        np.testing.assert_allclose(got[:, j], ref[layer + 1][0].numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="at least one layer"):
        llm.engine.prompt_hidden_states(ids, [])
    with pytest.raises(ValueError, match="does not run"):
        llm.engine.prompt_hidden_states(ids, [4])
