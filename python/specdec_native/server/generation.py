"""Running engine generations for a request: starting them (a rejected prompt is a 400 before any
response is sent), aborting them when the consumer leaves early, merging several into one stream."""
import asyncio
import time
from typing import Any, AsyncIterator, List, Tuple

from ..sampling_params import SamplingParams
from .errors import bad_request


async def shielded(awaitable) -> None:
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
            await shielded(engine.abort(request_id))
        await shielded(gen.aclose())


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


async def start_all(served, prompts, params, base_id: str, t0: float) -> List[AsyncIterator]:
    """Starts every prompt's generation together; each stream yields all its outputs. On any
    failure the others are aborted. `served` is a requests.Served (its ttft histogram, if any,
    observes each first output)."""
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


async def merge(streams: List[AsyncIterator]):
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
        await shielded(asyncio.gather(*tasks, return_exceptions=True))
