"""Bad checkpoints and bad requests: each gives a clear Python exception (never a crash), and an
LLM that was loaded keeps working afterwards."""
from __future__ import annotations

import json
import shutil
import struct

import pytest

from helpers import assert_no_blocks_held, edit_config, greedy_params, load_llm, prompt, write_checkpoint

from specdec_native import SamplingParams

VOCAB = 256


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("good")
    write_checkpoint(path, "llama", seed=31)
    return path


@pytest.fixture(scope="module")
def llm(good):
    return load_llm(good)


@pytest.fixture(scope="module")
def reference(llm):
    ids = prompt(10, seed=31)
    return ids, llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(12))[0].token_ids


def still_works(llm, reference):
    ids, expected = reference
    assert llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(12))[0].token_ids == expected
    assert_no_blocks_held(llm.engine)  # nothing leaked


@pytest.fixture
def copy(good, tmp_path):
    """A fresh copy of the good checkpoint to break."""
    dst = tmp_path / "ckpt"
    shutil.copytree(good, dst)
    return dst


# ---- checkpoints -------------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_llm(tmp_path / "does-not-exist")


def test_directory_without_config(copy):
    (copy / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        load_llm(copy)


def test_config_not_json(copy):
    (copy / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match="JSON"):
        load_llm(copy)


def test_unknown_architecture(copy):
    edit_config(copy, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        load_llm(copy)


def test_missing_config_field(copy):
    edit_config(copy, hidden_size=None)
    with pytest.raises(ValueError, match="hidden_size"):
        load_llm(copy)


@pytest.mark.parametrize("key,scaling", [
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    ("rope_scaling", {"type": "dynamic", "factor": 2.0}),
    ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),  # transformers 5
])
def test_unsupported_rope_scaling(copy, key, scaling):
    edit_config(copy, **{"rope_scaling": None, "rope_parameters": None, key: scaling})
    kind = scaling.get("rope_type", scaling.get("type"))
    with pytest.raises(ValueError, match=kind):
        load_llm(copy)


def test_no_safetensors(copy):
    (copy / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="safetensors"):
        load_llm(copy)


def test_truncated_safetensors(copy):
    f = copy / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:len(data) // 2])
    with pytest.raises(RuntimeError):
        load_llm(copy)


@pytest.mark.parametrize("how", ["garbage_json", "huge_length", "tiny_file"])
def test_corrupted_header(copy, how):
    f = copy / "model.safetensors"
    data = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    if how == "garbage_json":
        data[8:8 + n] = b"#" * n
    elif how == "huge_length":
        data[:8] = struct.pack("<Q", 1 << 60)
    else:
        data = data[:5]
    f.write_bytes(bytes(data))
    with pytest.raises(RuntimeError):
        load_llm(copy)


def _rewrite_tensors(path, edit):
    from safetensors.numpy import load_file, save_file

    f = path / "model.safetensors"
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def test_wrong_shape_tensor(copy):
    name = "model.layers.1.mlp.down_proj.weight"
    _rewrite_tensors(copy, lambda t: t.__setitem__(name, t[name][:, :64].copy()))
    with pytest.raises(RuntimeError, match=name.replace(".", r"\.")):
        load_llm(copy)


def test_missing_tensor(copy):
    name = "model.layers.1.self_attn.k_proj.weight"
    _rewrite_tensors(copy, lambda t: t.pop(name))
    with pytest.raises(RuntimeError, match=name.replace(".", r"\.")):
        load_llm(copy)


def test_integer_weight_tensor(copy):
    name = "model.layers.0.mlp.up_proj.weight"
    _rewrite_tensors(copy, lambda t: t.__setitem__(name, t[name].astype("int32")))
    with pytest.raises(RuntimeError, match=name.replace(".", r"\.")):
        load_llm(copy)


def test_shard_index_names_missing_file(copy):
    (copy / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(ValueError, match="model-00001-of-00002"):
        load_llm(copy)


def test_bad_dtype(good):
    with pytest.raises(ValueError, match="int3.*not one of auto, float32, bfloat16, float16, int8, int4"):
        load_llm(good, dtype="int3")


# ---- requests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 1000, -1, -(2**31)])
def test_token_id_out_of_range(llm, reference, bad):
    ids = [5, 6, bad, 7]
    with pytest.raises(ValueError, match=str(bad)):
        llm.generate(prompt_token_ids=[ids], sampling_params=greedy_params(4))
    with pytest.raises(ValueError, match=str(bad)):
        llm.prompt_logits(ids)
    still_works(llm, reference)


def test_token_id_not_an_integer(llm, reference):
    for bad in (["a", "b"], [1.5, None], 3):
        with pytest.raises(ValueError):
            llm.generate(prompt_token_ids=[bad], sampling_params=greedy_params(4))
    with pytest.raises((ValueError, TypeError)):
        llm.prompt_logits([2**40])
    still_works(llm, reference)


def test_one_bad_request_in_a_batch(llm, reference):
    ids, _ = reference
    with pytest.raises(ValueError, match="request 1"):
        llm.generate(prompt_token_ids=[ids, [1, VOCAB], ids], sampling_params=greedy_params(4))
    still_works(llm, reference)


@pytest.mark.parametrize("kwargs", [
    {"max_tokens": 0}, {"max_tokens": -3}, {"max_tokens": 2.5},
    {"temperature": -0.1}, {"temperature": float("nan")}, {"temperature": float("inf")},
    {"top_p": 0.0}, {"top_p": -0.5}, {"top_p": 1.5},
    {"top_k": -2}, {"min_p": 1.5}, {"seed": -1},
    {"stop": [""]}, {"stop_token_ids": [-1]},
])
def test_bad_sampling_params(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_empty_prompt(llm, reference):
    with pytest.raises(ValueError):
        llm.generate(prompt_token_ids=[[]], sampling_params=greedy_params(4))
    with pytest.raises(ValueError):
        llm.prompt_logits([])
    still_works(llm, reference)


def test_prompt_longer_than_context(good, reference):
    small = load_llm(good, max_model_len=64)
    assert small.max_model_len == 64
    for n in (64, 65, 300):
        with pytest.raises(ValueError, match="context"):
            small.generate(prompt_token_ids=[prompt(n)], sampling_params=greedy_params(4))
        with pytest.raises(ValueError):
            small.prompt_logits(prompt(n))
    # One token short of the context: the prompt fits and one token comes out.
    out = small.generate(prompt_token_ids=[prompt(63)], sampling_params=greedy_params(4))[0]
    assert (len(out.token_ids), out.finish_reason) == (1, "length")
    still_works(small, reference)


def test_bad_max_model_len(good):
    for bad in (0, 1, 10**6):
        with pytest.raises(ValueError, match="max_model_len"):
            load_llm(good, max_model_len=bad)


def test_request_needs_more_kv_blocks_than_the_cache(good, reference):
    tiny = load_llm(good, num_blocks=4)  # 3 usable blocks of 16 tokens = 48 tokens
    ids, _ = reference
    with pytest.raises(RuntimeError, match="KV blocks"):
        tiny.generate(prompt_token_ids=[ids], sampling_params=greedy_params(64))
    with pytest.raises(RuntimeError, match="KV blocks"):  # checked before any request runs
        tiny.generate(prompt_token_ids=[ids, ids], sampling_params=[greedy_params(4), greedy_params(64)])
    with pytest.raises(RuntimeError):
        tiny.prompt_logits(prompt(60))
    assert_no_blocks_held(tiny.engine)
    still_works(tiny, reference)  # 10 + 12 tokens fit in 2 blocks


def test_bad_engine_options(good):
    for kwargs in ({"page_size": 0}, {"max_num_seqs": 0}, {"prefill_chunk": 0}, {"num_blocks": -1}):
        with pytest.raises(ValueError):
            load_llm(good, **kwargs)


def test_callback_error_propagates(llm, reference):
    """A Python exception inside the stop-string machinery (here: a broken tokenizer) reaches
    the caller and leaves the engine usable."""
    class Broken:
        def decode(self, ids, skip_special_tokens=True):
            raise KeyError("boom")

    saved = llm.tokenizer
    llm.tokenizer = Broken()
    try:
        with pytest.raises(KeyError, match="boom"):
            llm.generate(prompt_token_ids=[reference[0]], sampling_params=greedy_params(8, stop="x"))
    finally:
        llm.tokenizer = saved
    still_works(llm, reference)
