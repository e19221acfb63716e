"""A request's checks before any generation starts: the model, the parameters, the prompts as
token ids, their lengths against the context, and the SamplingParams to generate with."""
from typing import Any, Dict, List, Optional

from ..sampling_params import SamplingParams
from .errors import APIError, bad_request

# Parameters we do not implement, with the values that mean "off": anything else is a 400.
UNSUPPORTED = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "repetition_penalty": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "tools": (None, []),
    "functions": (None, []),
}


class Served:
    """What every request needs: the engine, the model's name, counters the server keeps."""

    def __init__(self, engine, model_name: str, ttft=None, latency=None):
        self.engine = engine
        self.model_name = model_name
        self.ttft = ttft          # prometheus Histograms (or None)
        self.latency = latency

    def check_model(self, model: Optional[str]) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


def check_common(req) -> None:
    """n, unsupported parameters, stream_options: the checks shared by both endpoints."""
    if req.n is not None and req.n != 1:
        raise bad_request(f"only n=1 is supported, got n={req.n}", param="n")
    fields = dict(req.model_extra or {})
    for name, off in UNSUPPORTED.items():
        value = fields.get(name)
        if value not in off:
            raise bad_request(f"{name} is not supported", param=name)
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed with stream=true", param="stream_options")


def _require_tokenizer(engine, what: str):
    if engine.tokenizer is None:
        raise bad_request(f"{what} need a tokenizer, and this model has none: send token ids", param="prompt")
    return engine.tokenizer


def completion_prompts(engine, prompt) -> List[List[int]]:
    """The request's prompts as token id lists (one or several)."""
    if isinstance(prompt, str):
        prompts = [prompt]
    elif prompt and isinstance(prompt[0], (str, list)):
        prompts = list(prompt)
    else:
        prompts = [prompt]
    if not prompts:
        raise bad_request("prompt must not be empty", param="prompt")
    return [_require_tokenizer(engine, "text prompts").encode(p) if isinstance(p, str) else list(p)
            for p in prompts]


def chat_prompt(engine, messages) -> List[int]:
    """The conversation through the checkpoint's chat template, as token ids."""
    tok = _require_tokenizer(engine, "chat completions")
    if not messages:
        raise bad_request("messages must not be empty", param="messages")
    try:
        text = tok.apply_chat_template([_message_dict(m) for m in messages], add_generation_prompt=True)
    except ValueError as e:
        raise bad_request(str(e), param="messages") from None
    except Exception as e:  # a template error (jinja2.TemplateError): the conversation does not fit it
        raise bad_request(f"chat template: {e}", param="messages") from None
    return tok.encode(text, add_special_tokens=False)


def _message_dict(m) -> dict:
    content = m.content
    if isinstance(content, list):
        kinds = {p.type for p in content} - {"text"}
        if kinds:
            raise bad_request(f"message content of type {sorted(kinds)[0]!r} is not supported", param="messages")
        content = "\n".join(p.text or "" for p in content)
    d = {"role": m.role, "content": content or ""}
    if m.name is not None:
        d["name"] = m.name
    return d


def check_lengths(engine, prompts: List[List[int]], max_tokens: Optional[int], name: str = "max_tokens") -> int:
    """The max_tokens to use: the request's, or all the context left. 400 when a prompt (plus
    max_tokens) does not fit the context."""
    limit = engine.max_model_len
    if max_tokens is not None and max_tokens < 1:
        raise bad_request(f"{name} must be at least 1, got {max_tokens}", param=name)
    for ids in prompts:
        if not ids:
            raise bad_request("prompt must not be empty", param="prompt")
        want = len(ids) + (max_tokens or 1)
        if want > limit:
            asked = f"{len(ids)} in the prompt" + (f", {max_tokens} in the completion" if max_tokens else "")
            raise bad_request(f"This model's maximum context length is {limit} tokens. However, you "
                              f"requested {want} tokens ({asked}).", param="prompt" if max_tokens is None
                              or len(ids) >= limit else name, code="context_length_exceeded")
    return max_tokens if max_tokens is not None else limit - max(len(p) for p in prompts)


def sampling_params(req, max_tokens: int) -> SamplingParams:
    kw: Dict[str, Any] = {"max_tokens": max_tokens, "stop": req.stop, "ignore_eos": bool(req.ignore_eos),
                          "stop_token_ids": list(req.stop_token_ids or [])}
    for name in ("temperature", "top_p", "top_k", "min_p", "seed"):
        value = getattr(req, name)
        if value is not None:
            kw[name] = value
    try:
        return SamplingParams(**kw)
    except ValueError as e:
        message = str(e)
        param = message.split(" ", 1)[0]
        raise bad_request(message, param=param if param in kw else None) from None
