"""The OpenAI-compatible server (specdec_native.server) over the real AsyncLLM on a tiny
random-weight checkpoint, served by uvicorn in a background thread and driven with the official
`openai` client and raw httpx: parity with LLM.generate, streaming, 64 concurrent requests,
client disconnects, bad requests, /health, /v1/models and /metrics."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from helpers import NUM_THREADS, expected_text, load_llm, prompt, write_checkpoint, write_tokenizer

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

from specdec_native import SamplingParams  # noqa: E402
from specdec_native.server import build_app  # noqa: E402

NAME = "tiny-llama"
# The context: long enough that a request running to its end takes seconds (attention over
# thousands of positions), so a test can tell an aborted request from one that finished.
CONTEXT = 4096


# ---- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve")
    write_checkpoint(path, "llama", seed=41, max_position_embeddings=CONTEXT)
    write_tokenizer(path, vocab_size=256)
    return path


@pytest.fixture(scope="module")
def llm(ckpt):
    """The reference: the synchronous LLM on the same checkpoint."""
    return load_llm(ckpt)


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 (a free port) from a background thread."""

    def __init__(self, app):
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        return url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def served(ckpt):
    """(base url, engine, KV blocks held at rest): the real AsyncLLM behind the real server."""
    from specdec_native.async_llm import AsyncLLM

    engine = AsyncLLM(str(ckpt), num_threads=NUM_THREADS, progress=False, max_num_seqs=16)
    held_at_rest = _blocks_held(engine.metrics())
    assert held_at_rest <= 1  # at most the reserved null block
    server = ServerThread(build_app(engine, NAME, shutdown_engine=True))
    url = server.start()
    yield url, engine, held_at_rest
    server.stop()


@pytest.fixture(scope="module")
def url(served):
    return served[0]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)


def _blocks_held(m: dict) -> int:
    return m["kv_blocks_total"] - m["kv_blocks_free"] - m["kv_blocks_cached"]


def wait_idle(served, timeout: float = 20.0) -> dict:
    """Polls engine.metrics() until no request runs or waits and no KV block is held by one."""
    _, engine, held_at_rest = served
    deadline = time.monotonic() + timeout
    while True:
        m = engine.metrics()
        if m["running"] == 0 and m["waiting"] == 0 and _blocks_held(m) == held_at_rest:
            return m
        assert time.monotonic() < deadline, f"engine not idle: {m}"
        time.sleep(0.02)


def greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, **kw)


def words(ids) -> str:
    return " ".join(f"w{i:03d}" for i in ids)


def extra(obj, name):
    """An extension field of an openai response object (kept in pydantic's extras)."""
    return (obj.model_extra or {}).get(name)


# ---- parity with LLM.generate ------------------------------------------------------------------

def test_completion_equals_llm_generate(client, llm):
    text = words(prompt(11, seed=1, low=6))
    ref = llm.generate(text, greedy(12))[0]
    r = client.completions.create(model=NAME, prompt=text, max_tokens=12, temperature=0,
                                  extra_body={"return_token_ids": True})
    assert r.object == "text_completion" and r.model == NAME and len(r.choices) == 1
    c = r.choices[0]
    assert (c.text, c.finish_reason, c.index) == (ref.text, ref.finish_reason, 0)
    assert extra(c, "token_ids") == ref.token_ids
    assert extra(c, "prompt_token_ids") == ref.prompt_token_ids
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids) == 11
    assert r.usage.completion_tokens == len(ref.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_completion_from_token_ids_and_streamed(client, llm):
    ids = prompt(9, seed=2, low=6)
    ref = llm.generate(prompt_token_ids=[ids], sampling_params=greedy(14, ignore_eos=True))[0]
    assert len(ref.token_ids) == 14
    r = client.completions.create(model=NAME, prompt=ids, max_tokens=14, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert (r.choices[0].text, r.choices[0].finish_reason) == (ref.text, "length")

    chunks = list(client.completions.create(model=NAME, prompt=ids, max_tokens=14, temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True, "return_token_ids": True}))
    assert all(ch.object == "text_completion" and ch.id == chunks[0].id for ch in chunks)
    usage_chunk, text_chunks = chunks[-1], chunks[:-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 14
    assert usage_chunk.usage.prompt_tokens == 9
    assert all(ch.usage is None for ch in text_chunks)
    assert len(text_chunks) > 1  # really streamed
    assert "".join(ch.choices[0].text for ch in text_chunks) == ref.text
    assert sum((extra(ch.choices[0], "token_ids") for ch in text_chunks), []) == ref.token_ids
    assert [ch.choices[0].finish_reason for ch in text_chunks] == [None] * (len(text_chunks) - 1) + ["length"]


def test_chat_equals_llm_chat_streamed_and_not(client, llm):
    conv = [{"role": "system", "content": "w040 w041"}, {"role": "user", "content": words(prompt(6, seed=3, low=6))}]
    ref = llm.chat(conv, greedy(10, ignore_eos=True))
    r = client.chat.completions.create(model=NAME, messages=conv, max_completion_tokens=10, temperature=0,
                                       extra_body={"ignore_eos": True, "return_token_ids": True})
    assert r.object == "chat.completion"
    m = r.choices[0].message
    assert (m.role, m.content, r.choices[0].finish_reason) == ("assistant", ref.text, "length")
    assert extra(r.choices[0], "token_ids") == ref.token_ids
    assert extra(r.choices[0], "prompt_token_ids") == ref.prompt_token_ids
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids) and r.usage.completion_tokens == 10

    chunks = list(client.chat.completions.create(model=NAME, messages=conv, max_tokens=10, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    first, last = chunks[0].choices[0], chunks[-1].choices[0]
    assert first.delta.role == "assistant" and not first.delta.content
    assert all(ch.choices[0].delta.role is None for ch in chunks[1:])
    assert last.finish_reason == "length" and not last.delta.content
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-1])
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ref.text


def test_sampling_parameters_reach_the_engine(client, llm):
    """Seeded sampling with top_k/top_p/min_p, stop strings and stop_token_ids give exactly
    LLM.generate's result for the same SamplingParams."""
    ids = prompt(8, seed=4, low=6)
    sampled = dict(temperature=0.9, top_k=30, top_p=0.95, min_p=0.01, seed=1234)
    params = SamplingParams(max_tokens=16, ignore_eos=True, **sampled)
    ref = llm.generate(prompt_token_ids=[ids], sampling_params=params)[0]
    r = client.completions.create(model=NAME, prompt=ids, max_tokens=16, temperature=0.9, top_p=0.95, seed=1234,
                                  extra_body={"top_k": 30, "min_p": 0.01, "ignore_eos": True, "return_token_ids": True})
    assert extra(r.choices[0], "token_ids") == ref.token_ids
    other = client.completions.create(model=NAME, prompt=ids, max_tokens=16, temperature=0.9, top_p=0.95, seed=99,
                                      extra_body={"top_k": 30, "min_p": 0.01, "ignore_eos": True})
    assert other.choices[0].text != r.choices[0].text

    full = llm.generate(prompt_token_ids=[ids], sampling_params=greedy(16, ignore_eos=True))[0]
    k = next(i for i in range(3, 16) if full.token_ids[i] >= 6 and full.token_ids[i] not in full.token_ids[:i])
    stop_word = f"w{full.token_ids[k]:03d}"
    r = client.completions.create(model=NAME, prompt=ids, max_tokens=16, temperature=0, stop=[stop_word, "zzz"],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full.text[:full.text.find(stop_word)]
    r = client.completions.create(model=NAME, prompt=ids, max_tokens=16, temperature=0,
                                  extra_body={"ignore_eos": True, "stop_token_ids": [full.token_ids[k]],
                                              "return_token_ids": True})
    assert r.choices[0].finish_reason == "stop"
    assert extra(r.choices[0], "token_ids") == full.token_ids[:k + 1]


def test_several_prompts_in_one_completion_request(client, llm):
    prompts = [words(prompt(5 + i, seed=5 + i, low=6)) for i in range(3)]
    refs = llm.generate(prompts, greedy(8))
    r = client.completions.create(model=NAME, prompt=prompts, max_tokens=8, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == [o.text for o in refs]
    assert r.usage.prompt_tokens == sum(len(o.prompt_token_ids) for o in refs)
    texts = ["", "", ""]
    for ch in client.completions.create(model=NAME, prompt=prompts, max_tokens=8, temperature=0, stream=True):
        for c in ch.choices:
            texts[c.index] += c.text
    assert texts == [o.text for o in refs]


# ---- many clients at once ----------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _one_request(client, i: int, ids) -> tuple:
    """Request i: completions or chat, streamed or not (i % 4). Returns (text, token ids, cached)."""
    chat, stream = i % 4 >= 2, i % 2 == 1
    body = {"ignore_eos": True, "return_token_ids": True}
    common = dict(model=NAME, max_tokens=10, temperature=0, extra_body=body)
    if chat:
        call = client.chat.completions.create(messages=[{"role": "user", "content": words(ids)}], **common,
                                              **({"stream": True, "stream_options": {"include_usage": True}}
                                                 if stream else {}))
    else:
        call = client.completions.create(prompt=words(ids), **common,
                                         **({"stream": True, "stream_options": {"include_usage": True}}
                                            if stream else {}))
    r = await call
    if not stream:
        c = r.choices[0]
        text = c.message.content if chat else c.text
        return text, extra(c, "token_ids"), r.usage.prompt_tokens_details.cached_tokens
    text, tokens, usage = "", [], None
    async for ch in r:
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            text += (c.delta.content or "") if chat else c.text
            tokens += extra(c, "token_ids") or []
    return text, tokens, usage.prompt_tokens_details.cached_tokens


def test_64_concurrent_requests_with_shared_prefixes(served, client, llm):
    """4 shared prefixes x 16 suffixes, a mix of completions/chat and streamed/not, all at once:
    each result equals its own solo greedy run, the prefix cache is used, and afterwards every KV
    block is back and memory has not grown."""
    url, engine, _ = served
    prefixes = [prompt(40, seed=100 + p, low=6) for p in range(4)]
    jobs = [prefixes[i % 4] + prompt(3 + i % 5, seed=200 + i, low=6) for i in range(64)]
    expected = []
    for i, ids in enumerate(jobs):
        params = greedy(10, ignore_eos=True)
        if i % 4 >= 2:
            out = llm.chat([{"role": "user", "content": words(ids)}], params)
        else:
            out = llm.generate(prompt_token_ids=[ids], sampling_params=params)[0]
        expected.append((out.text, out.token_ids))

    async def run_all():
        aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        try:
            return await asyncio.gather(*(_one_request(aclient, i, ids) for i, ids in enumerate(jobs)))
        finally:
            await aclient.close()

    asyncio.run(run_all())  # warm-up: the allocators reach their working size
    before_rss, before = _rss_bytes(), wait_idle(served)
    results = asyncio.run(run_all())
    assert len(results) == 64
    for i, ((text, tokens, _), (ref_text, ref_tokens)) in enumerate(zip(results, expected)):
        assert (text, tokens) == (ref_text, ref_tokens), f"request {i} differs"
        assert text == expected_text(tokens)
    after = wait_idle(served)
    assert sum(cached for _, _, cached in results) > 0, "no prompt token came from the prefix cache"
    assert after["requests_finished_total"] - before["requests_finished_total"] == 64
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == 64 * 10
    assert _rss_bytes() - before_rss < 64 * 2**20


# ---- clients that leave ------------------------------------------------------------------------

def _long_request(**kw) -> dict:
    ids = prompt(6, seed=7, low=6)
    return {"model": NAME, "prompt": ids, "max_tokens": CONTEXT - len(ids), "temperature": 0,
            "ignore_eos": True, **kw}


def test_client_disconnect_mid_stream_aborts_the_request(served):
    url, engine, _ = served
    before = wait_idle(served)
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", url + "/v1/completions", json=_long_request(stream=True)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = []
            for line in lines:
                if line.startswith("data: "):
                    got.append(json.loads(line[len("data: "):]))
                    if len(got) == 2:
                        break
            assert all(g["choices"][0]["finish_reason"] is None for g in got)
    # The connection is closed: the request must be aborted, its blocks freed.
    after = wait_idle(served)
    generated = after["generation_tokens_total"] - before["generation_tokens_total"]
    assert generated < CONTEXT - 6, "the request ran to the end: it was not aborted"


def test_client_that_gives_up_on_a_non_streamed_request_aborts_it(served):
    url, engine, _ = served
    before = wait_idle(served)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url + "/v1/completions", json=_long_request(), timeout=0.15)
    after = wait_idle(served)
    assert after["generation_tokens_total"] - before["generation_tokens_total"] < CONTEXT - 6


# ---- bad requests ------------------------------------------------------------------------------

_TOO_LONG = words([7] * (CONTEXT + 10))

BAD = [
    # (name, endpoint, raw body, status, error param or None)
    ("malformed json", "completions", '{"model": "tiny-llama", "prompt": ', 400, None),
    ("body not an object", "completions", "[1, 2]", 400, None),
    ("missing prompt", "completions", {"model": NAME}, 400, "prompt"),
    ("prompt wrong type", "completions", {"model": NAME, "prompt": 5}, 400, "prompt"),
    ("max_tokens a string", "completions", {"model": NAME, "prompt": "w010", "max_tokens": "5"}, 400, "max_tokens"),
    ("unknown model", "completions", {"model": "gpt-4", "prompt": "w010"}, 404, "model"),
    ("unknown model chat", "chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "w010"}]},
     404, "model"),
    ("n=2", "completions", {"model": NAME, "prompt": "w010", "n": 2}, 400, "n"),
    ("n=2 chat", "chat/completions", {"model": NAME, "messages": [{"role": "user", "content": "w010"}], "n": 2},
     400, "n"),
    ("max_tokens=0", "completions", {"model": NAME, "prompt": "w010", "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens<0", "completions", {"model": NAME, "prompt": "w010", "max_tokens": -3}, 400, "max_tokens"),
    ("max_completion_tokens=0", "chat/completions",
     {"model": NAME, "messages": [{"role": "user", "content": "w010"}], "max_completion_tokens": 0},
     400, "max_completion_tokens"),
    ("temperature=-1", "completions", {"model": NAME, "prompt": "w010", "temperature": -1}, 400, "temperature"),
    ("top_p=0", "completions", {"model": NAME, "prompt": "w010", "top_p": 0}, 400, "top_p"),
    ("top_p=2 chat", "chat/completions",
     {"model": NAME, "messages": [{"role": "user", "content": "w010"}], "top_p": 2}, 400, "top_p"),
    ("prompt longer than the context", "completions", {"model": NAME, "prompt": _TOO_LONG}, 400, "prompt"),
    ("token prompt as long as the context", "completions", {"model": NAME, "prompt": [7] * CONTEXT}, 400, "prompt"),
    ("chat longer than the context", "chat/completions",
     {"model": NAME, "messages": [{"role": "user", "content": _TOO_LONG}]}, 400, "prompt"),
    ("prompt + max_tokens over the context", "completions",
     {"model": NAME, "prompt": [7] * (CONTEXT - 50), "max_tokens": 100}, 400, "max_tokens"),
    ("token id out of range", "completions", {"model": NAME, "prompt": [10, 11, 100000]}, 400, None),
    ("empty prompt", "completions", {"model": NAME, "prompt": ""}, 400, "prompt"),
    ("empty messages", "chat/completions", {"model": NAME, "messages": []}, 400, "messages"),
    ("message without role", "chat/completions", {"model": NAME, "messages": [{"content": "w010"}]}, 400, None),
    ("stop wrong type", "completions", {"model": NAME, "prompt": "w010", "stop": 3}, 400, "stop"),
    ("logprobs unsupported", "completions", {"model": NAME, "prompt": "w010", "logprobs": 2}, 400, "logprobs"),
    ("stream_options without stream", "completions",
     {"model": NAME, "prompt": "w010", "stream_options": {"include_usage": True}}, 400, "stream_options"),
]


@pytest.mark.parametrize("name,endpoint,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_request_gets_an_openai_error_and_the_server_keeps_serving(served, client, name, endpoint, body,
                                                                       status, param):
    url = served[0]
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(f"{url}/v1/{endpoint}", content=content, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
    if status == 404:
        assert err["code"] == "model_not_found"
    ok = client.completions.create(model=NAME, prompt="w010 w011", max_tokens=2, temperature=0,
                                   extra_body={"ignore_eos": True})
    assert ok.usage.completion_tokens == 2
    wait_idle(served)


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="missing", prompt="w010", max_tokens=2)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "w010"}], n=3)
    assert e.value.param == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt=_TOO_LONG, max_tokens=2, stream=True)
    assert e.value.code == "context_length_exceeded"


def test_unknown_route_is_an_openai_404(url):
    r = httpx.get(url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


# ---- health, models, metrics -------------------------------------------------------------------

def test_health_and_models(url, client):
    assert httpx.get(url + "/health").status_code == 200
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")


def _scrape(url) -> dict:
    """{sample name: value} from /metrics, label-free samples only."""
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in prometheus_parser.text_string_to_metric_families(r.text):
        for s in family.samples:
            if not s.labels:
                samples[s.name] = s.value
    return samples


def test_metrics_are_prometheus_text_and_count_requests(served, client):
    url = served[0]
    wait_idle(served)
    before = _scrape(url)
    for name in ("specdec_num_requests_running", "specdec_num_requests_waiting", "specdec_kv_blocks_used",
                 "specdec_kv_blocks_free", "specdec_kv_blocks_total", "specdec_prefix_cache_hit_rate",
                 "specdec_spec_decode_acceptance_rate", "specdec_spec_decode_mean_accepted_length",
                 "specdec_generation_tokens_total", "specdec_requests_finished_total",
                 "specdec_prompt_tokens_total", "specdec_time_to_first_token_seconds_count"):
        assert name in before, name
    ids = prompt(20, seed=9, low=6)
    for _ in range(2):  # the second run hits the prefix cache
        client.completions.create(model=NAME, prompt=ids, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    wait_idle(served)
    after = _scrape(url)
    assert after["specdec_generation_tokens_total"] - before["specdec_generation_tokens_total"] == 10
    assert after["specdec_requests_finished_total"] - before["specdec_requests_finished_total"] == 2
    assert after["specdec_prompt_tokens_total"] - before["specdec_prompt_tokens_total"] == 40
    assert after["specdec_prefix_cache_hit_tokens_total"] > before["specdec_prefix_cache_hit_tokens_total"]
    assert 0 < after["specdec_prefix_cache_hit_rate"] <= 1
    assert after["specdec_time_to_first_token_seconds_count"] - before["specdec_time_to_first_token_seconds_count"] == 2
    assert after["specdec_num_requests_running"] == 0 and after["specdec_kv_blocks_used"] <= 1


# ---- packaging ---------------------------------------------------------------------------------

def test_cli_has_serve_and_keeps_the_other_commands():
    from specdec_native import cli

    p = cli.build_parser()
    a = p.parse_args(["serve", "--model", "m", "--port", "0", "--method", "ngram", "--served-model-name", "x",
                      "--max-num-seqs", "4", "--num-speculative-tokens", "3"])
    assert a.func is cli._serve and (a.model, a.port, a.method, a.served_model_name) == ("m", 0, "ngram", "x")
    assert p.parse_args(["generate", "hi"]).func is cli._generate
    assert p.parse_args(["convert", "a.gguf", "out"]).func is cli._convert


def test_importing_the_package_needs_no_web_framework():
    code = ("import sys, specdec_native, specdec_native.server, specdec_native.cli; "
            "assert not {'fastapi', 'uvicorn', 'starlette', 'prometheus_client'} & set(sys.modules), sys.modules")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_specdec_serve_command_with_ngram_speculation(ckpt, llm, tmp_path):
    """`specdec serve` end to end in its own process, speculating with n-grams: greedy output is
    still the target's own, the speculation counters move, and SIGINT stops it cleanly."""
    import signal

    port = _free_port()
    log = open(tmp_path / "serve.log", "w+")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "specdec_native", "serve", "--model", str(ckpt), "--port", str(port),
           "--served-model-name", "spec", "--method", "ngram", "--num-speculative-tokens", "3",
           "--threads", str(NUM_THREADS), "--max-model-len", "512", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "specdec serve did not come up"
            time.sleep(0.1)
        ids = [10, 11, 12, 13] * 5  # repeats: the n-gram drafter finds continuations
        ref = llm.generate(prompt_token_ids=[ids], sampling_params=greedy(16, ignore_eos=True))[0]
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        r = c.completions.create(model="spec", prompt=ids, max_tokens=16, temperature=0,
                                 extra_body={"ignore_eos": True, "return_token_ids": True})
        assert extra(r.choices[0], "token_ids") == ref.token_ids
        assert c.models.list().data[0].id == "spec"
        m = _scrape(url)
        assert m["specdec_spec_decode_draft_tokens_total"] > 0
        assert 0 <= m["specdec_spec_decode_acceptance_rate"] <= 1
        assert m["specdec_spec_decode_mean_accepted_length"] >= 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
