"""The FastAPI app: its routes, built by build_app, and serve() to run it under uvicorn."""
import asyncio
import inspect
import time

from .completions import Completion, chat_from, completion_from
from .errors import install_error_handlers
from .generation import shielded
from .metrics import metrics_registry
from .protocol import protocol
from .requests import Served


async def _run(completion: Completion):
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
        await shielded(asyncio.gather(task, watch, return_exceptions=True))
    if task.cancelled():
        return Response(status_code=499)  # nobody is listening
    return task.result()


def build_app(engine, served_model_name: str, *, shutdown_engine: bool = False):
    """The FastAPI app serving `engine` (an AsyncLLM) as `served_model_name`. With
    shutdown_engine, the engine is shut down when the server stops."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import PlainTextResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    P = protocol()
    registry, ttft, latency = metrics_registry(engine)
    served = Served(engine, served_model_name, ttft, latency)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if shutdown_engine:
            result = engine.shutdown()
            if inspect.isawaitable(result):
                await result

    app = FastAPI(title="specdec_native", lifespan=lifespan)
    app.state.engine = engine
    install_error_handlers(app)

    @app.post("/v1/completions")
    async def completions(body: P.CompletionRequest, request: Request):
        return await _cancel_on_disconnect(request, _run(completion_from(served, body)))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: P.ChatRequest, request: Request):
        return await _cancel_on_disconnect(request, _run(chat_from(served, body)))

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
