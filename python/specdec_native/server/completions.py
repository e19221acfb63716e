"""/v1/completions and /v1/chat/completions after their checks: the response body, or its SSE
stream of chunks."""
import json
import time
import uuid
from typing import Any, AsyncIterator, Dict, List

from ..sampling_params import SamplingParams
from .errors import APIError, aborted, bad_request
from .generation import merge, start_all
from .requests import Served, chat_prompt, check_common, check_lengths, completion_prompts, sampling_params


class _Tally:
    """Per-choice text, token ids and finish reasons, and the request's usage."""

    def __init__(self, n: int):
        self.text = [""] * n
        self.token_ids: List[List[int]] = [[] for _ in range(n)]
        self.finish = [None] * n
        self.prompt_tokens = [0] * n
        self.cached_tokens = [0] * n
        self.output_tokens = [0] * n

    def add(self, i: int, out) -> None:
        self.text[i] += out.text or ""
        self.token_ids[i].extend(out.token_ids)
        self.prompt_tokens[i] = out.prompt_tokens
        self.cached_tokens[i] = out.cached_tokens
        self.output_tokens[i] = out.num_output_tokens
        if out.finished:
            self.finish[i] = out.finish_reason

    def usage(self) -> dict:
        prompt, completion = sum(self.prompt_tokens), sum(self.output_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": sum(self.cached_tokens)}}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class Completion:
    """One /v1/completions or /v1/chat/completions request after its checks."""

    def __init__(self, served: Served, req, prompts: List[List[int]], params: SamplingParams, chat: bool):
        self.served, self.req, self.prompts, self.params, self.chat = served, req, prompts, params, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.t0 = time.monotonic()
        self.include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def _envelope(self, choices, **extra) -> dict:
        obj = "chat.completion" if self.chat else "text_completion"
        if self.req.stream and self.chat:
            obj = "chat.completion.chunk"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.served.model_name,
                "system_fingerprint": None, "choices": choices, **extra}

    def _observe_latency(self) -> None:
        if self.served.latency is not None:
            self.served.latency.observe(time.monotonic() - self.t0)

    async def start(self) -> AsyncIterator:
        streams = await start_all(self.served, self.prompts, self.params, self.id, self.t0)
        return merge(streams)

    async def respond(self, outputs) -> dict:
        """The non-streamed response body."""
        tally = _Tally(len(self.prompts))
        try:
            async for i, out in outputs:
                tally.add(i, out)
        finally:
            await outputs.aclose()
        if "abort" in tally.finish or None in tally.finish:
            raise aborted()
        self._observe_latency()
        choices = [self._choice(i, tally) for i in range(len(self.prompts))]
        return self._envelope(choices, usage=tally.usage())

    def _choice(self, i: int, tally: _Tally) -> dict:
        c: Dict[str, Any] = {"index": i}
        if self.chat:
            c["message"] = {"role": "assistant", "content": tally.text[i], "refusal": None}
        else:
            c["text"] = tally.text[i]
        c["logprobs"] = None
        c["finish_reason"] = tally.finish[i]
        if self.req.return_token_ids:
            c["prompt_token_ids"] = self.prompts[i]
            c["token_ids"] = tally.token_ids[i]
        return c

    async def stream(self, outputs):
        """The streamed response: SSE chunks, then [DONE]. An aborted request ends the stream
        without [DONE]; an engine failure sends an error event instead."""
        tally = _Tally(len(self.prompts))
        usage = {"usage": None} if self.include_usage else {}
        try:
            if self.chat:
                yield _sse(self._envelope([self._delta(i, {"role": "assistant", "content": ""})
                                           for i in range(len(self.prompts))], **usage))
            async for i, out in outputs:
                tally.add(i, out)
                if out.finished and out.finish_reason == "abort":
                    return
                for chunk in self._chunks(i, out):
                    yield _sse(self._envelope([chunk], **usage))
            self._observe_latency()
            if self.include_usage:
                yield _sse(self._envelope([], usage=tally.usage()))
            yield "data: [DONE]\n\n"
        except Exception as e:  # the engine failed mid-stream: the status is sent, so say it here
            yield _sse(APIError(500, f"generation failed: {e}", type="server_error").body())
        finally:
            await outputs.aclose()

    def _chunks(self, i: int, out) -> List[dict]:
        finish = out.finish_reason if out.finished else None
        ids = {"token_ids": list(out.token_ids)} if self.req.return_token_ids else {}
        if not self.chat:
            if out.text or finish or ids.get("token_ids"):
                return [{"index": i, "text": out.text or "", "logprobs": None, "finish_reason": finish, **ids}]
            return []
        chunks = []
        if out.text or ids.get("token_ids"):
            chunks.append(self._delta(i, {"content": out.text or ""}, **ids))
        if finish:
            chunks.append(self._delta(i, {}, finish_reason=finish))
        return chunks

    @staticmethod
    def _delta(i: int, delta: dict, finish_reason=None, **extra) -> dict:
        return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason, **extra}


def completion_from(served: Served, req) -> Completion:
    """A /v1/completions request, checked."""
    served.check_model(req.model)
    check_common(req)
    prompts = completion_prompts(served.engine, req.prompt)
    max_tokens = check_lengths(served.engine, prompts, 16 if req.max_tokens is None else req.max_tokens)
    return Completion(served, req, prompts, sampling_params(req, max_tokens), chat=False)


def chat_from(served: Served, req) -> Completion:
    """A /v1/chat/completions request, checked."""
    served.check_model(req.model)
    check_common(req)
    if req.max_completion_tokens is not None and req.max_tokens is not None \
            and req.max_completion_tokens != req.max_tokens:
        raise bad_request("give max_completion_tokens or max_tokens, not both", param="max_completion_tokens")
    prompts = [chat_prompt(served.engine, req.messages)]
    name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = check_lengths(served.engine, prompts, getattr(req, name), name)
    return Completion(served, req, prompts, sampling_params(req, max_tokens), chat=True)
