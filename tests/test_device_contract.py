"""The engine's contract with device models, checked on the CPU. Device "shadow"
(cpp/model/shadow_model.h, registered for tests only) runs the CPU model over a private mirror
of the KV pages while the engine's own cache holds no storage, exactly the arrangement of the
GPU model (cuda/device_llama.cu). Every drafter and both sampling modes must give the tokens the
"cpu" device gives, batched, with prefix caching on and the blocks all returned: any path that
reached the K/V other than through ForwardModel::forward / copy_tokens would crash on the
storage-less cache or diverge here, before a GPU ever sees it."""
from __future__ import annotations

from unittest import mock

import pytest

from helpers import (assert_no_blocks_held, greedy_params, load_llm, prompt, random_eagle_head, small_eagle_config,
                     write_checkpoint, write_noisy_copy, write_tokenizer)

from specdec_native import SamplingParams, _core, cuda

PROMPTS = [prompt(5, seed=1), prompt(23, seed=2), [7, 8, 9, 10] * 5 + [7, 8], prompt(40, seed=3)]
MAX_TOKENS = [24, 17, 24, 21]
SPECS = {
    "autoregressive": None,
    "draft chain": {"method": "draft", "num_speculative_tokens": 4},
    "draft tree": {"method": "draft", "num_speculative_tokens": 3, "tree": {"top_k": 3, "max_nodes": 8}},
    "ngram": {"method": "ngram", "num_speculative_tokens": 4},
    "layer skip": {"method": "layer_skip", "draft_layers": 1, "num_speculative_tokens": 3},
    "sparse kv": {"method": "sparse_kv", "sink_tokens": 4, "window_tokens": 8, "num_speculative_tokens": 3},
    "eagle chain": {"method": "eagle", "num_speculative_tokens": 3},
    "eagle tree": {"method": "eagle", "num_speculative_tokens": 3, "tree": {"top_k": 2, "max_nodes": 6}},
}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from specdec_native.eagle.checkpoint import save_head

    root = tmp_path_factory.mktemp("contract")
    target = write_checkpoint(root / "target", "llama", seed=31)
    write_noisy_copy(target, root / "noisy", scale=0.1, seed=5)  # a draft accepted in part
    for name in ("target", "noisy"):
        write_tokenizer(root / name, vocab_size=256)
    head = random_eagle_head(small_eagle_config(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                                num_key_value_heads=2, vocab_size=256, draft_vocab_size=200,
                                                aux_layer_ids=(0, 1, 1), max_position_embeddings=256), seed=3)
    head.set_embeddings(target.model.embed_tokens.weight.detach().clone())  # so some drafts are accepted
    save_head(head, root / "eagle")
    _core._register_shadow_device()
    return root


def _llm(ckpts, name, device):
    spec = SPECS[name]
    draft = {"draft": ckpts / "noisy", "eagle": ckpts / "eagle"}.get((spec or {}).get("method"))
    # LLM only lets users pick cpu / cuda / auto; the test device goes straight to the core.
    with mock.patch.object(cuda, "resolve_device", lambda device: device):
        return load_llm(ckpts / "target", device=device, page_size=4, draft=str(draft) if draft else None,
                        speculative=spec)


def _params(sampled: bool):
    if not sampled:
        return [greedy_params(n) for n in MAX_TOKENS]
    return [SamplingParams(max_tokens=n, temperature=0.8, top_p=0.9 if i % 2 else 1.0, seed=11 + i, ignore_eos=True)
            for i, n in enumerate(MAX_TOKENS)]


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("name", list(SPECS))
def test_shadow_device_gives_the_cpu_tokens(ckpts, name, sampled):
    cpu, shadow = _llm(ckpts, name, "cpu"), _llm(ckpts, name, "shadow")
    assert shadow.engine.kv_cache_bytes == 0 < cpu.engine.kv_cache_bytes  # the engine's cache holds nothing
    for _ in range(2):  # the second round hits the prefix cache
        want = [o.token_ids for o in cpu.generate(prompt_token_ids=PROMPTS, sampling_params=_params(sampled))]
        outs = shadow.generate(prompt_token_ids=PROMPTS, sampling_params=_params(sampled))
        assert [o.token_ids for o in outs] == want
    if SPECS[name] is not None and not sampled:
        assert sum(o.metrics["drafted"] for o in outs) > 0
    assert_no_blocks_held(shadow.engine)


def test_shadow_device_reports_itself_and_unknown_devices_stay_errors(ckpts):
    assert _core.has_model_factory("shadow")
    shadow = _llm(ckpts, "autoregressive", "shadow")
    assert shadow.device == "shadow"
    assert shadow.prompt_logits(PROMPTS[1]).shape == (len(PROMPTS[1]), 256)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        _llm(ckpts, "autoregressive", "tpu")
