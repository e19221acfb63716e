"""An OpenAI-compatible HTTP server over AsyncLLM (FastAPI + uvicorn: `pip install specdec_native[serve]`).

    specdec serve --model PATH --port 8000
    curl localhost:8000/v1/completions -d '{"model": "PATH", "prompt": "Hello", "max_tokens": 16}'

Endpoints: POST /v1/completions, POST /v1/chat/completions (both stream over SSE with
"stream": true), GET /v1/models, GET /health, GET /metrics (Prometheus text). Errors come back
in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with status 400 for a bad
request, 404 for an unknown model. Extensions beyond OpenAI's parameters (as vLLM names them):
top_k, min_p, ignore_eos, stop_token_ids, return_token_ids.

fastapi, uvicorn and prometheus_client are imported on first use, so importing this package
(and specdec_native) works without the `serve` extra.

The modules, one job each:
    errors       APIError, OpenAI error bodies, validation errors, the app's exception handlers
    protocol     the request bodies as pydantic models (built on first use)
    requests     a request's checks: model, parameters, prompts, lengths, SamplingParams
    generation   running engine generations: start, abort on exit, merge several streams
    completions  the completion / chat response bodies and their SSE stream
    metrics      the Prometheus registry: engine metrics, TTFT and latency histograms
    app          build_app (routes), serve
"""
from .app import build_app, serve
from .errors import APIError, bad_request
from .protocol import protocol

__all__ = ["build_app", "serve", "APIError", "bad_request", "protocol"]
