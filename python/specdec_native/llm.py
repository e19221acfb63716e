"""LLM: load a checkpoint once, generate from many prompts. The generation loop runs in C++
(specdec_native._core.Engine) with the GIL released; Python turns text into ids and back."""
from __future__ import annotations

import os
from typing import Iterator, List, Optional, Sequence, Union

from . import _core
from . import checkpoint as ckpt_mod
from . import draft_vocab
from .outputs import RequestOutput, result_metrics
from .request_tracker import RequestTracker
from .sampling_params import SamplingParams
from .speculative import SpeculativeConfig

_STOP, _CONTINUE = 1, 0


class LLM:
    """A Llama-family model (Llama, Qwen2, Mistral) on the CPU or an NVIDIA GPU.

    model: a Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json) or
      a .gguf file (converted once into ~/.cache/specdec_native, or $SPECDEC_CACHE).
    dtype: "auto" (the checkpoint's), "float32", "bfloat16", "float16", "int8" (weight-only,
      a scale per 32 weights, dequantized inside the matmul kernels) or "int4" (4-bit layers:
      a scale and minimum per 32 weights, like GGUF Q4_1, whose tensors it holds exactly;
      embedding and LM head stay int8).
    device: "cpu" (default), "cuda" (weights and KV on the GPU; needs the CUDA extension and a
      GPU, else RuntimeError) or "auto" (the GPU when one is present). Drafters run on the same
      device (an EAGLE head drafts on the CPU), and on "cuda" dtype is bfloat16 / float16 / int8 /
      int4 (float32 checkpoints run in bfloat16; int8 / int4 quantize the layers when loading, the
      embedding and LM head stay bfloat16).
    max_model_len: context length served (default: the checkpoint's).
    max_num_seqs: sequences decoded together in one batched forward (continuous batching:
      requests join and leave between steps).
    prefill_chunk: prompt tokens computed per step over all sequences (long prompts are
      prefilled in chunks while running sequences keep decoding).
    enable_prefix_caching: keep finished requests' KV pages in a radix tree so a request that
      starts with the same tokens (whole pages) prefills only the rest.
    num_blocks / page_size: the paged KV cache (default: room for max_num_seqs full contexts;
      memory is only committed as it is used).
    num_threads: CPU threads (default: one per core).
    draft: a draft checkpoint (directory or .gguf) sharing the target's vocabulary.
    speculative: SpeculativeConfig (or a dict of its fields). Speculation is lossless: at
      temperature 0 the tokens are the target's own; otherwise they follow its distribution.
    """

    def __init__(self, model: str, dtype: str = "auto", *, device: str = "cpu", max_model_len: Optional[int] = None,
                 max_num_seqs: int = 8, num_blocks: Optional[int] = None, page_size: int = 16,
                 num_threads: Optional[int] = None, prefill_chunk: int = 512, enable_prefix_caching: bool = True,
                 progress: bool = True,
                 draft: Optional[str] = None, speculative=None):
        from .cuda import resolve_device

        self.device = resolve_device(device)
        path = ckpt_mod.resolve(model, progress=progress)
        self.checkpoint = ckpt_mod.load(path)
        config = ckpt_mod.model_config(self.checkpoint)
        if max_model_len is not None:
            if not 1 < max_model_len <= self.checkpoint.max_model_len:
                raise ValueError(f"max_model_len must be in [2, {self.checkpoint.max_model_len}], got {max_model_len}")
            config.max_position_embeddings = max_model_len
        opts = _core.EngineOptions()
        opts.device = self.device
        opts.dtype = dtype
        opts.page_size = page_size
        opts.num_blocks = num_blocks or 0
        opts.max_num_seqs = max_num_seqs
        opts.prefill_chunk = prefill_chunk
        opts.enable_prefix_caching = enable_prefix_caching
        opts.num_threads = num_threads or 0
        self.tokenizer = None
        if (path / "tokenizer.json").is_file():
            from .tokenizer import Tokenizer

            self.tokenizer = Tokenizer(path)
        self.engine = _core.Engine(config, self.checkpoint.shards, opts, self.checkpoint.eos_token_ids,
                                   _progress_bar(f"loading {os.path.basename(str(model))}") if progress else None)
        self.speculative = SpeculativeConfig.coerce(speculative)
        if self.speculative is None and draft is not None:
            self.speculative = SpeculativeConfig(method="draft")
        if self.speculative is not None:
            self._attach_drafter(draft, dtype, progress)

    def _attach_drafter(self, draft: Optional[str], dtype: str, progress: bool) -> None:
        spec = self.speculative
        self.engine.adaptive_speculation = spec.adaptive
        acceptance = _core.AcceptanceConfig()
        acceptance.mode = spec.acceptance
        acceptance.typical_epsilon, acceptance.typical_delta = spec.typical_epsilon, spec.typical_delta
        acceptance.cascade_rule, acceptance.cascade_alpha = spec.cascade_rule, spec.cascade_alpha
        acceptance.validate()
        if spec.method == "ngram":
            self._attach_ngram(spec, draft)
        elif spec.is_self_draft:
            self._attach_self_draft(spec, draft)
        elif spec.method == "eagle":
            self._attach_eagle(spec, draft)
        else:
            self._attach_draft_model(spec, draft, dtype, progress)
        self.engine.set_acceptance(acceptance)

    def _attach_ngram(self, spec: SpeculativeConfig, draft: Optional[str]) -> None:
        if draft is not None:
            raise ValueError("method 'ngram' drafts from the context itself; do not pass draft=")
        o = _core.NgramOptions()
        o.min_n, o.max_n = spec.prompt_lookup_min, spec.prompt_lookup_max
        o.num_tokens = spec.num_speculative_tokens
        o.max_branches = (spec.tree or {}).get("max_branches", 1)
        self.engine.attach_ngram(o)

    def _attach_self_draft(self, spec: SpeculativeConfig, draft: Optional[str]) -> None:
        if draft is not None:
            raise ValueError(f"method {spec.method!r} drafts with the target itself; do not pass draft=")
        o = _core.SelfDraftOptions()
        o.num_tokens = spec.num_speculative_tokens
        o.min_confidence = spec.draft_confidence
        if spec.method == "layer_skip":
            o.layers = spec.layer_indices(self.config.num_layers)
        else:
            o.sink_tokens, o.window_tokens = spec.sink_tokens, spec.window_tokens
        self.engine.attach_self_drafter(o)

    def _attach_eagle(self, spec: SpeculativeConfig, draft: Optional[str]) -> None:
        if draft is None:
            raise ValueError("method 'eagle' needs a head: LLM(target, draft=HEAD_DIR, speculative={'method': 'eagle'})")
        self.engine.attach_eagle_head(str(draft), spec.draft_dtype or "auto", _draft_shape(_core.EagleOptions(), spec))

    def _attach_draft_model(self, spec: SpeculativeConfig, draft: Optional[str], dtype: str, progress: bool) -> None:
        if draft is None:
            raise ValueError("method 'draft' needs a draft model: LLM(target, draft=PATH, ...)")
        path = ckpt_mod.resolve(draft, progress=progress)
        draft_ckpt = ckpt_mod.load(path)
        draft_config = ckpt_mod.model_config(draft_ckpt)
        draft_config.max_position_embeddings = max(draft_config.max_position_embeddings, self.max_model_len)
        if draft_config.vocab_size != self.config.vocab_size:
            raise ValueError(f"the draft's vocabulary has {draft_config.vocab_size} tokens, the target's "
                             f"{self.config.vocab_size}: a draft must share the target's tokenizer")
        if self.tokenizer is not None and (path / "tokenizer.json").is_file():
            from .tokenizer import Tokenizer

            if Tokenizer(path).token_table() != self.tokenizer.token_table():
                raise ValueError("the draft's tokenizer maps tokens to different ids than the target's: "
                                 "a draft must share the target's vocabulary")
        o = _draft_shape(_core.DraftModelOptions(), spec)
        if spec.draft_vocab is not None:
            o.vocab = draft_vocab.resolve(spec.draft_vocab, self.config.vocab_size)
        self.engine.attach_draft_model(draft_config, draft_ckpt.shards, spec.draft_dtype or dtype, o,
                                       _progress_bar(f"loading draft {os.path.basename(str(draft))}") if progress else None)

    # ---- properties -----------------------------------------------------------------------
    @property
    def config(self):
        return self.engine.config

    @property
    def max_model_len(self) -> int:
        return self.engine.config.max_position_embeddings

    # ---- generation -----------------------------------------------------------------------
    def generate(self, prompts: Union[str, Sequence[str], None] = None,
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None, *,
                 prompt_token_ids: Optional[Sequence[Sequence[int]]] = None) -> List[RequestOutput]:
        """One RequestOutput per prompt, in order. Give text prompts or prompt_token_ids."""
        if (prompts is None) == (prompt_token_ids is None):
            raise ValueError("give exactly one of prompts (text) or prompt_token_ids")
        if prompts is not None:
            texts = [prompts] if isinstance(prompts, str) else list(prompts)
            ids = [self._require_tokenizer("text prompts").encode(t) for t in texts]
        else:
            texts = [None] * len(prompt_token_ids)
            ids = [_token_list(p) for p in prompt_token_ids]
        params = _per_request(sampling_params, len(ids))
        return self._run(texts, ids, params)

    def chat(self, messages, sampling_params: Optional[SamplingParams] = None,
             add_generation_prompt: bool = True):
        """Generates a reply to a conversation (a list of {"role", "content"} messages) with the
        checkpoint's chat template; a list of conversations gives a list of outputs."""
        many = bool(messages) and isinstance(messages[0], (list, tuple))
        conversations = messages if many else [messages]
        tok = self._require_tokenizer("chat")
        texts = [tok.apply_chat_template(list(c), add_generation_prompt) for c in conversations]
        ids = [tok.encode(t, add_special_tokens=False) for t in texts]
        outs = self._run(texts, ids, _per_request(sampling_params, len(ids)))
        return outs if many else outs[0]

    def stream(self, prompt: Union[str, Sequence[int]], sampling_params: Optional[SamplingParams] = None
               ) -> Iterator[str]:
        """Text deltas of one request as its tokens are committed (stop strings cut off). Breaking
        out of the loop ends the request and frees its blocks."""
        tok = self._require_tokenizer("stream()")
        ids = self.prompt_ids(prompt)
        params = sampling_params or SamplingParams()
        if self.engine.has_unfinished:
            raise RuntimeError("stream() needs an idle engine; use AsyncLLM to serve requests concurrently")
        tracker = RequestTracker("stream", ids, params, tok)
        self.engine.add_request(0, _to_request(ids, params))
        try:
            while not tracker.finished:
                for u in self.engine.step():
                    out = tracker.update(u.new_tokens, u.result if u.finished else None)
                    if tracker.stop_hit:
                        self.engine.abort_request(0)
                    if out is not None and out.text:
                        yield out.text
        finally:
            self.engine.abort_request(0)
            while self.engine.has_unfinished:  # the abort takes effect at the next step
                self.engine.step()

    def prompt_ids(self, prompt: Union[str, Sequence[int]]) -> List[int]:
        """Token ids of a text prompt (encoded with the tokenizer) or of a list of ids."""
        if isinstance(prompt, str):
            return self._require_tokenizer("text prompts").encode(prompt)
        return _token_list(prompt)

    def prompt_logits(self, token_ids: Sequence[int]):
        """Logits [len(token_ids), vocab] of every position (float32 numpy array)."""
        return self.engine.prompt_logits(_token_list(token_ids))

    # ---- internals ------------------------------------------------------------------------
    def _require_tokenizer(self, what: str):
        if self.tokenizer is None:
            raise ValueError(f"{what} need a tokenizer, and this checkpoint has no tokenizer.json; "
                             "use prompt_token_ids=...")
        return self.tokenizer

    def _run(self, texts, ids, params) -> List[RequestOutput]:
        requests = [_to_request(prompt, p) for prompt, p in zip(ids, params)]
        detok = None
        if self.tokenizer is not None:
            from .tokenizer import IncrementalDetokenizer

            detok = [IncrementalDetokenizer(self.tokenizer, p.stop) for p in params]

        def on_token(index, token):
            if detok is None or not params[index].stop:
                return _CONTINUE
            d = detok[index]
            d.add(token)
            return _STOP if d.stopped else _CONTINUE

        on_token_cb = on_token if detok is not None and any(p.stop for p in params) else None
        results = self.engine.generate(requests, on_token_cb)
        outs = []
        for i, res in enumerate(results):
            tokens = list(res.tokens)
            if detok is None:
                text = None
            elif params[i].stop:
                text = detok[i].text
            else:
                text = self.tokenizer.decode(tokens)
            outs.append(RequestOutput(prompt=texts[i], prompt_token_ids=ids[i], text=text, token_ids=tokens,
                                      finish_reason=res.finish_reason, metrics=result_metrics(res)))
        return outs


def _to_request(prompt_ids: List[int], p: SamplingParams):
    r = _core.GenerationRequest()
    r.prompt = prompt_ids
    s = _core.SamplingConfig()
    s.temperature, s.top_k, s.top_p, s.min_p, s.seed = p.temperature, p.top_k, p.top_p, p.min_p, p.seed
    r.sampling = s
    r.max_tokens = p.max_tokens
    r.stop_token_ids = p.stop_token_ids
    r.ignore_eos = p.ignore_eos
    return r


def _token_list(p) -> List[int]:
    try:
        ids = [int(t) for t in p]
    except (TypeError, ValueError):
        raise ValueError(f"prompt_token_ids must be lists of integers, got {p!r}") from None
    if not ids:
        raise ValueError("a prompt must have at least one token")
    return ids


def _per_request(sampling_params, n) -> List[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * n
    params = list(sampling_params)
    if len(params) != n:
        raise ValueError(f"got {len(params)} SamplingParams for {n} prompts")
    return params


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = None

    def update(done, total):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="layer", leave=False)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _draft_shape(o, spec: SpeculativeConfig):
    """Fills a C++ DraftShape (DraftModelOptions, EagleOptions) from the config: chain, static
    tree choices or a dynamic tree."""
    o.num_tokens = spec.num_speculative_tokens
    o.min_confidence = spec.draft_confidence
    if isinstance(spec.tree, list):
        o.tree_choices = spec.tree
    elif isinstance(spec.tree, dict):
        o.top_k, o.max_nodes = spec.tree["top_k"], spec.tree["max_nodes"]
    return o
