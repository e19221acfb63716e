"""An OpenAI-compatible HTTP server over AsyncLLM (FastAPI + uvicorn: `pip install specdec_native[serve]`).

    specdec serve --model PATH --port 8000
    curl localhost:8000/v1/completions -d '{"model": "PATH", "prompt": "Hello", "max_tokens": 16}'

Endpoints: POST /v1/completions, POST /v1/chat/completions (both stream over SSE with
"stream": true), GET /v1/models, GET /health, GET /metrics (Prometheus text). Errors come back
in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with status 400 for a bad
request, 404 for an unknown model. Extensions beyond OpenAI's parameters (as vLLM names them):
top_k, min_p, ignore_eos, stop_token_ids, return_token_ids.

fastapi, uvicorn and prometheus_client are imported on first use, so importing this module
(and specdec_native) works without the `serve` extra.
"""
import asyncio
import inspect
import json
import time
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence, Tuple

from .sampling_params import SamplingParams

# Parameters we do not implement, with the values that mean "off": anything else is a 400.
_UNSUPPORTED = {
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

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0)
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                    50.0, 60.0, 120.0, 240.0, 480.0)


# ---- errors ------------------------------------------------------------------------------------

class APIError(Exception):
    """An error answered as OpenAI does: an HTTP status and {"error": {...}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _validation_error(errors: Sequence[dict]) -> APIError:
    """A 400 from pydantic's errors (malformed JSON, a missing or wrongly typed field)."""
    if not errors:
        return bad_request("invalid request body")
    e = errors[0]
    if e.get("type") == "json_invalid":
        detail = (e.get("ctx") or {}).get("error", "")
        return bad_request(f"the request body is not valid JSON: {detail}".rstrip(": "))
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    # Union members show up as loc parts like "str" or "list[int]": keep only the field path.
    path = ".".join(x for x in loc if "[" not in x and x not in ("str", "int", "float", "bool"))
    message = f"{path}: {e.get('msg', 'invalid value')}" if path else e.get("msg", "invalid request body")
    return bad_request(message, param=path or None)


# ---- request bodies ----------------------------------------------------------------------------

_PROTOCOL = None


def protocol():
    """The request bodies as pydantic models (pydantic comes with fastapi, so it is imported on
    first use). Types are strict: "5" is not an integer, true is not a number."""
    global _PROTOCOL
    if _PROTOCOL is not None:
        return _PROTOCOL
    from types import SimpleNamespace
    from typing import Union

    from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr

    Number = Union[StrictInt, StrictFloat]

    class StreamOptions(BaseModel):
        include_usage: Optional[StrictBool] = False

    class Sampling(BaseModel):
        model_config = ConfigDict(extra="allow")  # unknown fields pass; _UNSUPPORTED ones are checked
        model: Optional[StrictStr] = None
        max_tokens: Optional[StrictInt] = None
        temperature: Optional[Number] = None
        top_p: Optional[Number] = None
        top_k: Optional[StrictInt] = None
        min_p: Optional[Number] = None
        seed: Optional[StrictInt] = None
        stop: Union[StrictStr, List[StrictStr], None] = None
        n: Optional[StrictInt] = None
        stream: Optional[StrictBool] = False
        stream_options: Optional[StreamOptions] = None
        ignore_eos: Optional[StrictBool] = False
        stop_token_ids: Optional[List[StrictInt]] = None
        return_token_ids: Optional[StrictBool] = False

    class CompletionRequest(Sampling):
        prompt: Union[StrictStr, List[StrictInt], List[StrictStr], List[List[StrictInt]]]

    class ContentPart(BaseModel):
        model_config = ConfigDict(extra="allow")
        type: StrictStr
        text: Optional[StrictStr] = None

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: StrictStr
        content: Union[StrictStr, List[ContentPart], None] = None
        name: Optional[StrictStr] = None

    class ChatRequest(Sampling):
        messages: List[Message]
        max_completion_tokens: Optional[StrictInt] = None

    _PROTOCOL = SimpleNamespace(CompletionRequest=CompletionRequest, ChatRequest=ChatRequest)
    return _PROTOCOL


# ---- request checks ----------------------------------------------------------------------------

class _Served:
    """What every request needs: the engine, the model's name, counters the server keeps."""

    def __init__(self, engine, model_name: str, ttft=None, latency=None):
        self.engine = engine
        self.model_name = model_name
        self.ttft = ttft          # prometheus Histograms (or None)
        self.latency = latency

    def check_model(self, model: Optional[str]) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


def _check_common(req) -> None:
    """n, unsupported parameters, stream_options: the checks shared by both endpoints."""
    if req.n is not None and req.n != 1:
        raise bad_request(f"only n=1 is supported, got n={req.n}", param="n")
    fields = dict(req.model_extra or {})
    for name, off in _UNSUPPORTED.items():
        value = fields.get(name)
        if value not in off:
            raise bad_request(f"{name} is not supported", param=name)
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed with stream=true", param="stream_options")


def _require_tokenizer(engine, what: str):
    if engine.tokenizer is None:
        raise bad_request(f"{what} need a tokenizer, and this model has none: send token ids", param="prompt")
    return engine.tokenizer


def _completion_prompts(engine, prompt) -> List[List[int]]:
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


def _chat_prompt(engine, messages) -> List[int]:
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


def _check_lengths(engine, prompts: List[List[int]], max_tokens: Optional[int], name: str = "max_tokens") -> int:
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


def _sampling_params(req, max_tokens: int) -> SamplingParams:
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


# ---- running generations -----------------------------------------------------------------------

async def _shielded(awaitable) -> None:
    """Awaits even inside a cancelled scope (a stream whose client left), so cleanup completes."""
    import anyio

    with anyio.CancelScope(shield=True):
        await awaitable


async def _generation(engine, ids: List[int], params: SamplingParams, request_id: str):
    """engine.generate's outputs; leaving early (client gone, task cancelled) aborts the request
    so its KV blocks are freed."""
    gen = engine.generate(ids, params, request_id=request_id)
    done = False
    try:
        async for out in gen:
            done = out.finished
            yield out
    except ValueError:
        done = True  # rejected before it started: nothing to abort
        raise
    finally:
        if not done:
            await _shielded(engine.abort(request_id))
        await _shielded(gen.aclose())


async def _start(engine, ids, params, request_id) -> Tuple[Any, AsyncIterator]:
    """Starts one generation and waits for its first output, so a prompt the engine rejects
    becomes a 400 before any response is sent. Returns (first output, the rest)."""
    gen = _generation(engine, ids, params, request_id)
    try:
        first = await gen.__anext__()
    except ValueError as e:
        raise bad_request(str(e), param="prompt") from None
    except BaseException:
        await gen.aclose()
        raise
    return first, gen


async def _start_all(served: "_Served", prompts, params, base_id: str, t0: float) -> List[AsyncIterator]:
    """Starts every prompt's generation together; each stream yields all its outputs. On any
    failure the others are aborted."""
    async def start(i, ids):
        first, rest = await _start(served.engine, ids, params, f"{base_id}-{i}")
        if served.ttft is not None:
            served.ttft.observe(time.monotonic() - t0)
        return first, rest

    results = await asyncio.gather(*(start(i, ids) for i, ids in enumerate(prompts)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for r in results:
            if not isinstance(r, BaseException):
                await r[1].aclose()
        raise errors[0]
    return [_chain(first, rest) for first, rest in results]


async def _chain(first, rest):
    try:
        yield first
        if not first.finished:
            async for out in rest:
                yield out
    finally:
        await rest.aclose()


async def _merge(streams: List[AsyncIterator]):
    """(index, output) pairs from several streams as they come; closing it closes them all."""
    if len(streams) == 1:
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, stream):
        try:
            async for out in stream:
                await queue.put((i, out, None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            await queue.put((i, None, e))
            return
        finally:
            await stream.aclose()
        await queue.put((i, None, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, out, err = await queue.get()
            if out is not None:
                yield i, out
                continue
            remaining -= 1
            if err is not None and not isinstance(err, asyncio.CancelledError):
                raise err
    finally:
        for t in tasks:
            t.cancel()
        await _shielded(asyncio.gather(*tasks, return_exceptions=True))


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


def _aborted() -> APIError:
    return APIError(503, "the request was aborted", type="server_error", code="request_aborted")


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ---- the endpoints' work -----------------------------------------------------------------------

class _Completion:
    """One /v1/completions or /v1/chat/completions request after its checks."""

    def __init__(self, served: _Served, req, prompts: List[List[int]], params: SamplingParams, chat: bool):
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
        streams = await _start_all(self.served, self.prompts, self.params, self.id, self.t0)
        return _merge(streams)

    async def respond(self, outputs) -> dict:
        """The non-streamed response body."""
        tally = _Tally(len(self.prompts))
        try:
            async for i, out in outputs:
                tally.add(i, out)
        finally:
            await outputs.aclose()
        if "abort" in tally.finish or None in tally.finish:
            raise _aborted()
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


def _completion_from(served: _Served, req) -> _Completion:
    served.check_model(req.model)
    _check_common(req)
    prompts = _completion_prompts(served.engine, req.prompt)
    max_tokens = _check_lengths(served.engine, prompts, 16 if req.max_tokens is None else req.max_tokens)
    return _Completion(served, req, prompts, _sampling_params(req, max_tokens), chat=False)


def _chat_from(served: _Served, req) -> _Completion:
    served.check_model(req.model)
    _check_common(req)
    if req.max_completion_tokens is not None and req.max_tokens is not None \
            and req.max_completion_tokens != req.max_tokens:
        raise bad_request("give max_completion_tokens or max_tokens, not both", param="max_completion_tokens")
    prompts = [_chat_prompt(served.engine, req.messages)]
    name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = _check_lengths(served.engine, prompts, getattr(req, name), name)
    return _Completion(served, req, prompts, _sampling_params(req, max_tokens), chat=True)


async def _run(completion: _Completion):
    from fastapi.responses import JSONResponse, StreamingResponse

    outputs = await completion.start()
    if completion.req.stream:
        return StreamingResponse(completion.stream(outputs), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(await completion.respond(outputs))


async def _wait_disconnect(request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel_on_disconnect(request, work):
    """Runs `work`, cancelling it (so its requests are aborted) if the client disconnects before
    the response starts: a queued or non-streamed request whose client gave up frees its blocks."""
    from fastapi.responses import Response

    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watch.cancel()
        await _shielded(asyncio.gather(task, watch, return_exceptions=True))
    if task.cancelled():
        return Response(status_code=499)  # nobody is listening
    return task.result()


# ---- metrics -----------------------------------------------------------------------------------

class _EngineCollector:
    """Prometheus metrics read from engine.metrics() at each scrape."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.engine.metrics()

        def gauge(name, doc, value):
            return GaugeMetricFamily(f"specdec_{name}", doc, value=float(value))

        def counter(name, doc, key):
            return CounterMetricFamily(f"specdec_{name}", doc, value=float(m.get(key, 0)))

        total, free, cached = m.get("kv_blocks_total", 0), m.get("kv_blocks_free", 0), m.get("kv_blocks_cached", 0)
        used = max(total - free - cached, 0)
        prompt, hit = m.get("prompt_tokens_total", 0), m.get("cached_prompt_tokens_total", 0)
        drafted, accepted = m.get("drafted_tokens_total", 0), m.get("accepted_tokens_total", 0)
        steps = m.get("target_steps_total", 0)
        yield gauge("num_requests_running", "Requests in the running batch.", m.get("running", 0))
        yield gauge("num_requests_waiting", "Requests waiting to be scheduled.", m.get("waiting", 0))
        yield gauge("kv_blocks_total", "KV cache blocks in all.", total)
        yield gauge("kv_blocks_used", "KV cache blocks held by requests.", used)
        yield gauge("kv_blocks_free", "KV cache blocks free.", free)
        yield gauge("kv_blocks_cached", "Free KV cache blocks kept for prefix reuse.", cached)
        yield gauge("kv_cache_usage_ratio", "Fraction of KV cache blocks held by requests.",
                    used / total if total else 0)
        yield counter("prompt_tokens", "Prompt tokens received.", "prompt_tokens_total")
        yield counter("prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache.",
                      "cached_prompt_tokens_total")
        yield gauge("prefix_cache_hit_rate", "Cached prompt tokens / prompt tokens, since start.",
                    hit / prompt if prompt else 0)
        yield counter("generation_tokens", "Tokens generated.", "generation_tokens_total")
        yield counter("requests_finished", "Requests finished (any reason).", "requests_finished_total")
        yield counter("spec_decode_draft_tokens", "Draft tokens proposed.", "drafted_tokens_total")
        yield counter("spec_decode_accepted_tokens", "Draft tokens accepted.", "accepted_tokens_total")
        yield counter("target_steps", "Target model forward steps (decode and verify).", "target_steps_total")
        yield gauge("spec_decode_acceptance_rate", "Accepted / drafted tokens, since start.",
                    accepted / drafted if drafted else 0)
        yield gauge("spec_decode_mean_accepted_length", "Tokens emitted per target step: 1 + accepted / steps.",
                    1 + accepted / steps if steps else 0)
        yield counter("num_preemptions", "Requests preempted for KV space.", "preemptions_total")


def _metrics_registry(engine):
    """A registry of the engine's metrics plus the server's own TTFT and latency histograms."""
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    registry.register(_EngineCollector(engine))
    ttft = Histogram("specdec_time_to_first_token_seconds", "Time from request arrival to the first token.",
                     buckets=_TTFT_BUCKETS, registry=registry)
    latency = Histogram("specdec_e2e_request_latency_seconds", "Time from request arrival to the last token.",
                        buckets=_LATENCY_BUCKETS, registry=registry)
    return registry, ttft, latency


# ---- the app -----------------------------------------------------------------------------------

def build_app(engine, served_model_name: str, *, shutdown_engine: bool = False):
    """The FastAPI app serving `engine` (an AsyncLLM) as `served_model_name`. With
    shutdown_engine, the engine is shut down when the server stops."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    P = protocol()
    registry, ttft, latency = _metrics_registry(engine)
    served = _Served(engine, served_model_name, ttft, latency)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if shutdown_engine:
            result = engine.shutdown()
            if inspect.isawaitable(result):
                await result

    app = FastAPI(title="specdec_native", lifespan=lifespan)
    app.state.engine = engine

    def error_response(err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request, exc: RequestValidationError):
        return error_response(_validation_error(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _pydantic_validation(request, exc: ValidationError):
        return error_response(_validation_error(exc.errors()))

    @app.exception_handler(json.JSONDecodeError)
    async def _json_error(request, exc: json.JSONDecodeError):
        return error_response(bad_request(f"the request body is not valid JSON: {exc}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(APIError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    @app.post("/v1/completions")
    async def completions(body: P.CompletionRequest, request: Request):
        return await _cancel_on_disconnect(request, _run(_completion_from(served, body)))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: P.ChatRequest, request: Request):
        return await _cancel_on_disconnect(request, _run(_chat_from(served, body)))

    created = int(time.time())

    def model_card() -> dict:
        return {"id": served_model_name, "object": "model", "created": created, "owned_by": "specdec_native",
                "max_model_len": engine.max_model_len}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        served.check_model(model)
        return model_card()

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(engine, served_model_name: str, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Serves `engine` over HTTP until interrupted, then shuts the engine down."""
    import uvicorn

    app = build_app(engine, served_model_name, shutdown_engine=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
