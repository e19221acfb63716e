"""LLM(device=...): the CUDA forward (weights and K/V on the GPU) behind the core's one dispatch
point (model/forward_model.h, model/device_registry.h).

Everywhere: "auto" runs on the CPU without a GPU, "cuda" without a GPU (or without the extension)
is a RuntimeError that says which is missing, an unknown device a ValueError, and the core alone
(no factory registered) refuses "cuda" with a RuntimeError.

With a GPU (skipped without one), on tiny random-weight checkpoints with head_dim 64 (the CUDA
attention takes 64 or 128):
* prompt logits against the CPU engine in bfloat16: relative error <= 3e-2 (the GPU rounds the
  GEMM inputs and the K/V to bf16; the CPU keeps f32 activations) and argmax agreement >= 0.95;
* a token tree's rows (tree-mask attention) equal each chain's own prompt logits on the GPU
  (within 1e-2: the same rows through other work splits and GEMM shapes);
* T = 0: speculative decoding on the GPU (draft-model chain and tree, n-gram, layer-skip and
  sparse-KV self-speculation, an EAGLE-3 head as chain and tree: the head drafts on the CPU from
  the GPU target's captured features) is token-identical to autoregressive decoding on the GPU,
  request by request (verification forwards of <= 16 rows, the batch-invariant GEMV path),
  batched runs complete, and every KV block comes back;
* T > 0: the target as its own draft is accepted every time (p == q row for row), and seeded
  runs repeat; sampling and verification on the device (autoregressive, n-gram, draft-model
  chains and trees) draw the CPU engine's tokens for the same seeds in at least 5 of 8 requests;
* int8 and int4 layers on the GPU: logits close to the CPU's int8 / int4 engine (5e-2: the CPU
  also quantizes activations), fewer weight bytes, and speculation token-identical to GPU
  autoregressive;
* CUDA graphs (decode and verification forwards replayed) give the tokens of eager forwards;
* bad input is refused the same way as on the CPU (out-of-range ids, unknown dtypes, head_dim).
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from helpers import (argmax_agreement, assert_no_blocks_held, greedy_params, load_llm, prompt, random_eagle_head,
                     relative_error, small_eagle_config, write_checkpoint, write_tokenizer)

from specdec_native import _core, cuda
from specdec_native import checkpoint as ckpt_mod

needs_gpu = pytest.mark.skipif(not cuda.cuda_available(), reason="no CUDA GPU (or no CUDA extension) here")
no_gpu = pytest.mark.skipif(cuda.gpu_count() > 0, reason="a GPU is present")

# head_dim 64 (hidden 256 / 4 heads), GQA 2:1.
GPU_SHAPE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
PROMPTS = [prompt(5, seed=1), prompt(23, seed=2), [7, 8, 9, 10] * 5 + [7, 8], prompt(40, seed=3)]
MAX_TOKENS = [24, 17, 24, 21]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_model")
    write_checkpoint(root / "target", "qwen2", seed=41, **GPU_SHAPE)  # Qwen2: q/k/v biases too
    write_checkpoint(root / "draft", "qwen2", seed=42, num_hidden_layers=1, **GPU_SHAPE)
    write_checkpoint(root / "tiny", "llama", seed=43)  # head_dim 16
    for name in ("target", "draft", "tiny"):
        write_tokenizer(root / name, vocab_size=256)
    from specdec_native.eagle.checkpoint import save_head

    head = random_eagle_head(small_eagle_config(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                                num_key_value_heads=2, vocab_size=256, draft_vocab_size=200,
                                                aux_layer_ids=(0, 1, 1), max_position_embeddings=256), seed=4)
    save_head(head, root / "eagle")
    return root


def _greedy():
    return [greedy_params(n) for n in MAX_TOKENS]


def _tokens(llm, prompts=PROMPTS, params=None):
    return [o.token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params or _greedy())]


# ---- the device choice (runs everywhere) ------------------------------------------------------

def test_auto_picks_the_gpu_only_when_there_is_one(ckpts):
    llm = load_llm(ckpts / "tiny", device="auto")
    assert llm.device == ("cuda" if cuda.cuda_available() else "cpu")
    if llm.device == "cpu":
        assert _tokens(load_llm(ckpts / "tiny"), PROMPTS[:1], _greedy()[:1]) == _tokens(llm, PROMPTS[:1], _greedy()[:1])


@no_gpu
def test_cuda_without_a_gpu_is_a_clear_error(ckpts):
    with pytest.raises(RuntimeError, match="no GPU"):
        load_llm(ckpts / "tiny", device="cuda")


@no_gpu
def test_cli_device_cuda_without_a_gpu_fails_cleanly(ckpts, capsys):
    from specdec_native import cli

    assert cli.main(["generate", "--model", str(ckpts / "tiny"), "--device", "cuda", "--max-tokens", "2", "hi"]) == 2
    assert "no GPU" in capsys.readouterr().err


def test_unknown_device_is_a_value_error(ckpts):
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        load_llm(ckpts / "tiny", device="tpu")


def _core_engine(path, device):
    ck = ckpt_mod.load(path)
    opts = _core.EngineOptions()
    opts.device = device
    opts.num_threads = 2
    return _core.Engine(ckpt_mod.model_config(ck), ck.shards, opts, ck.eos_token_ids, None)


@pytest.mark.skipif(_core.has_model_factory("cuda"), reason="the CUDA model is registered in this process")
def test_core_refuses_cuda_without_the_extension(ckpts):
    with pytest.raises(RuntimeError, match="CUDA extension is not loaded"):
        _core_engine(ckpts / "tiny", "cuda")


def test_core_refuses_unknown_devices(ckpts):
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        _core_engine(ckpts / "tiny", "tpu")
    assert _core_engine(ckpts / "tiny", "cpu").options.device == "cpu"


def test_register_takes_only_a_model_factory_capsule():
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype = ctypes.py_object
    new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    wrong = new_capsule(ctypes.c_void_p(1), b"some.other.capsule", None)
    with pytest.raises(ValueError, match="specdec_native.ModelFactory"):
        _core._register_model_factory("cuda", wrong)
    with pytest.raises(TypeError):
        _core._register_model_factory("cuda", object())


# ---- on the GPU -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu(ckpts):
    return load_llm(ckpts / "target", device="cuda")


@needs_gpu
def test_gpu_prompt_logits_match_the_cpu(ckpts, gpu):
    cpu = load_llm(ckpts / "target", dtype="bfloat16")
    assert gpu.device == "cuda" and gpu.engine.dtype == "bfloat16"
    for ids in PROMPTS + [prompt(150, seed=9)]:  # 150 tokens: several pages, the cuBLAS path
        g, c = gpu.prompt_logits(ids), cpu.prompt_logits(ids)
        assert relative_error(g, c) <= 3e-2
        assert argmax_agreement(g, c) >= 0.95


@needs_gpu
def test_gpu_int8_matches_the_cpu_and_speculation_stays_exact(ckpts):
    # int8 layers (one scale per 32 weights, as the CPU's), bf16 tables; the GEMV at every M.
    gpu8 = load_llm(ckpts / "target", device="cuda", dtype="int8")
    cpu8 = load_llm(ckpts / "target", dtype="int8")
    assert gpu8.engine.dtype == "int8"
    assert gpu8.engine.weight_bytes_per_token < load_llm(ckpts / "target", device="cuda").engine.weight_bytes_per_token
    for ids in PROMPTS:
        g, c = gpu8.prompt_logits(ids), cpu8.prompt_logits(ids)
        assert relative_error(g, c) <= 5e-2  # the CPU also quantizes the activations to int8
        assert argmax_agreement(g, c) >= 0.9
    spec = load_llm(ckpts / "target", device="cuda", dtype="int8", draft=str(ckpts / "draft"),
                    speculative={"method": "draft", "num_speculative_tokens": 4})
    for p, sp in zip(PROMPTS, _greedy()):
        assert _tokens(spec, [p], [sp]) == _tokens(gpu8, [p], [sp])


@needs_gpu
def test_gpu_int4_matches_the_cpu_and_speculation_stays_exact(ckpts):
    # int4 layers (a scale and min per 32 weights, the CPU's quantizer), bf16 tables; the GEMV at every M.
    gpu4 = load_llm(ckpts / "target", device="cuda", dtype="int4")
    cpu4 = load_llm(ckpts / "target", dtype="int4")
    assert gpu4.engine.dtype == "int4"
    gpu8 = load_llm(ckpts / "target", device="cuda", dtype="int8")
    assert gpu4.engine.weight_bytes_per_token < gpu8.engine.weight_bytes_per_token
    for ids in PROMPTS:
        g, c = gpu4.prompt_logits(ids), cpu4.prompt_logits(ids)
        assert relative_error(g, c) <= 5e-2  # same 4-bit weights; the CPU quantizes the activations to int8
        assert argmax_agreement(g, c) >= 0.9
    spec = load_llm(ckpts / "target", device="cuda", dtype="int4", draft=str(ckpts / "draft"),
                    speculative={"method": "draft", "num_speculative_tokens": 4})
    for p, sp in zip(PROMPTS, _greedy()):
        assert _tokens(spec, [p], [sp]) == _tokens(gpu4, [p], [sp])


@needs_gpu
def test_gpu_tree_rows_equal_each_chains_logits(gpu):
    ctx = prompt(19, seed=5)
    tokens, parents = [11, 12, 13, 21, 22], [-1, 0, 1, -1, 3]  # two chains under the root
    rows = gpu.engine.tree_logits(ctx, tokens, parents)
    chains = {0: [11], 1: [11, 12], 2: [11, 12, 13], 3: [21], 4: [21, 22]}
    # Same keys and arithmetic per row, but other work splits and GEMM shapes: bf16 roundings of
    # the GEMM inputs may differ by an ulp. A wrong mask would move the logits by O(1).
    np.testing.assert_allclose(rows[0], gpu.prompt_logits(ctx)[-1], rtol=1e-2, atol=1e-2)
    for node, path in chains.items():
        np.testing.assert_allclose(rows[1 + node], gpu.prompt_logits(ctx + path)[-1], rtol=1e-2, atol=1e-2)


@needs_gpu
@pytest.mark.parametrize("spec", [
    {"method": "draft", "num_speculative_tokens": 4},
    {"method": "draft", "num_speculative_tokens": 3, "tree": {"top_k": 3, "max_nodes": 10}},
    {"method": "ngram", "num_speculative_tokens": 4},
    {"method": "layer_skip", "draft_layers": 1, "num_speculative_tokens": 3},
    {"method": "sparse_kv", "sink_tokens": 16, "window_tokens": 16, "num_speculative_tokens": 3},
    {"method": "eagle", "num_speculative_tokens": 3},
    {"method": "eagle", "num_speculative_tokens": 3, "tree": {"top_k": 2, "max_nodes": 6}},
])
def test_gpu_speculation_is_token_identical_to_gpu_autoregressive(ckpts, gpu, spec):
    # One request at a time: a verification forward then has at most 16 rows, where every GEMM
    # row runs the GEMV's row-count-independent arithmetic (cuda/device_llama.cu). Batched
    # prefill mixes in cuBLAS rows, so batched and alone need not agree bit for bit on the GPU.
    def alone(llm):
        return [_tokens(llm, [p], [sp])[0] for p, sp in zip(PROMPTS, _greedy())]

    reference = alone(gpu)
    draft = {"draft": str(ckpts / "draft"), "eagle": str(ckpts / "eagle")}.get(spec["method"])
    llm = load_llm(ckpts / "target", device="cuda", draft=draft, speculative=spec)
    assert alone(llm) == reference
    assert [len(t) for t in _tokens(llm)] == MAX_TOKENS  # batched runs through
    assert_no_blocks_held(llm.engine)


@needs_gpu
def test_gpu_sampling_self_draft_is_always_accepted_and_seeded_runs_repeat(ckpts):
    # The target as its own draft: p == q row for row (the draft's one-row forwards and the
    # verification's GEMV rows compute the same sums), so lossless sampling accepts every draft.
    from specdec_native import SamplingParams

    llm = load_llm(ckpts / "target", device="cuda", draft=str(ckpts / "target"),
                   speculative={"method": "draft", "num_speculative_tokens": 3})
    params = [SamplingParams(max_tokens=n, temperature=0.8, top_k=40 if i % 2 else 0, seed=7 + i, ignore_eos=True)
              for i, n in enumerate(MAX_TOKENS)]
    outs = [llm.generate(prompt_token_ids=[p], sampling_params=[sp])[0] for p, sp in zip(PROMPTS, params)]
    assert all(o.metrics["drafted"] > 0 and o.metrics["accepted"] == o.metrics["drafted"] for o in outs)
    again = [llm.generate(prompt_token_ids=[p], sampling_params=[sp])[0].token_ids for p, sp in zip(PROMPTS, params)]
    assert again == [o.token_ids for o in outs]
    assert_no_blocks_held(llm.engine)


@needs_gpu
@pytest.mark.parametrize("spec", [
    None,
    {"method": "ngram", "num_speculative_tokens": 4},
    {"method": "draft", "num_speculative_tokens": 4},  # chains: rounds after the first drawn on the device
    {"method": "draft", "num_speculative_tokens": 3, "tree": {"top_k": 3, "max_nodes": 10}},
])
def test_gpu_sampling_on_the_device_draws_the_cpus_tokens(ckpts, spec):
    # T > 0: the GPU samples and verifies where the logits are (cuda/device_sampling.h: the
    # processed distributions, then the lossless tree walk, with the CPU's Philox keys), so a
    # seeded run draws the tokens of the CPU engine in bfloat16. Only where the two engines' logits
    # (bf16 roundings in other places) move a draw across a boundary may a request part ways.
    from specdec_native import SamplingParams

    prompts = PROMPTS * 2
    params = [SamplingParams(max_tokens=MAX_TOKENS[i % 4], temperature=0.8, top_k=40 if i % 2 else 0,
                             top_p=0.95 if i % 3 == 0 else 1.0, seed=100 + i, ignore_eos=True) for i in range(8)]
    draft = str(ckpts / "draft") if spec and spec["method"] == "draft" else None
    gpu = load_llm(ckpts / "target", device="cuda", draft=draft, speculative=spec)
    cpu = load_llm(ckpts / "target", dtype="bfloat16", draft=draft, speculative=spec)
    g = [_tokens(gpu, [p], [sp])[0] for p, sp in zip(prompts, params)]
    c = [_tokens(cpu, [p], [sp])[0] for p, sp in zip(prompts, params)]
    assert sum(a == b for a, b in zip(g, c)) >= 5, (g, c)  # a wrong key or walk agrees on none
    assert_no_blocks_held(gpu.engine)


@needs_gpu
def test_gpu_cuda_graphs_change_no_token(ckpts, monkeypatch):
    # Forwards of <= 16 rows replay CUDA graphs after their first run (cuda/device_llama.cu);
    # SPECDEC_CUDA_GRAPHS=0 runs every forward eagerly. Same kernels with the same arguments
    # (the attention plan padded with empty work items), so the same tokens: greedy and seeded,
    # autoregressive and with a draft tree, and a 300-token prompt whose keys outgrow one
    # 256-key chunk (split KV: the merge step joins the graph, which is captured again).
    from specdec_native import SamplingParams

    spec = {"method": "draft", "num_speculative_tokens": 3, "tree": {"top_k": 2, "max_nodes": 6}}
    prompts = PROMPTS + [prompt(300, seed=11)]
    params = _greedy() + [greedy_params(40)]
    sampled = [SamplingParams(max_tokens=n, temperature=0.8, seed=3 + i, ignore_eos=True)
               for i, n in enumerate(MAX_TOKENS + [40])]

    def run(graphs):
        monkeypatch.setenv("SPECDEC_CUDA_GRAPHS", "1" if graphs else "0")
        ar = load_llm(ckpts / "target", device="cuda")
        sd = load_llm(ckpts / "target", device="cuda", draft=str(ckpts / "draft"), speculative=spec)
        out = []
        for llm in (ar, sd):
            for ps in (params, sampled):
                out.append([_tokens(llm, [p], [sp])[0] for p, sp in zip(prompts, ps)])
            assert_no_blocks_held(llm.engine)
        return out

    assert run(graphs=True) == run(graphs=False)


@needs_gpu
def test_gpu_bad_input(ckpts, gpu):
    with pytest.raises(ValueError, match="out of range"):
        gpu.generate(prompt_token_ids=[[1, 2, 256]], sampling_params=greedy_params(2))
    with pytest.raises(ValueError, match="dtype"):
        load_llm(ckpts / "target", device="cuda", dtype="int3")
    with pytest.raises(RuntimeError, match="head_dim 64 or 128"):
        load_llm(ckpts / "tiny", device="cuda")
    assert _tokens(gpu, PROMPTS[:1], _greedy()[:1])  # still serves after the errors
