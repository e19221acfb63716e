"""AsyncLLM: the engine for asyncio servers. A background thread runs the C++ engine's steps
(without the GIL, so the event loop keeps running); requests join and leave the batch between
steps, and each request's outputs arrive on its own asyncio queue.

    engine = AsyncLLM(target_path, draft=..., speculative=...)
    async for out in engine.generate("prompt", SamplingParams(max_tokens=64), request_id="r1"):
        print(out.text, end="")
    await engine.abort("r1")
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import threading
from typing import AsyncIterator, Dict, Optional, Sequence, Union

from .llm import LLM, _to_request
from .outputs import StreamOutput
from .request_tracker import RequestTracker
from .sampling_params import SamplingParams


class _Stream:
    def __init__(self, loop: asyncio.AbstractEventLoop, tracker: RequestTracker):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tracker = tracker

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncLLM:
    """Takes LLM's arguments (model, dtype, max_model_len, max_num_seqs, num_blocks, draft,
    speculative, ...); generate() may be called concurrently from one event loop."""

    def __init__(self, model: str, **llm_kwargs):
        self.llm = LLM(model, **llm_kwargs)
        self.engine = self.llm.engine
        self.tokenizer = self.llm.tokenizer
        self._streams: Dict[int, _Stream] = {}
        self._by_name: Dict[str, int] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self.recent_ttft = collections.deque(maxlen=1000)  # seconds, of finished requests
        self._thread = threading.Thread(target=self._run, name="specdec-engine", daemon=True)
        self._thread.start()

    @property
    def max_model_len(self) -> int:
        return self.llm.max_model_len

    async def generate(self, prompt: Union[str, Sequence[int]], params: Optional[SamplingParams] = None,
                       request_id: Optional[str] = None) -> AsyncIterator[StreamOutput]:
        """Outputs of one request as its tokens are committed; the last has finished=True.
        Bad input raises ValueError before anything is yielded. Leaving the loop early (or the
        task being cancelled) aborts the request and frees its blocks."""
        if self._stopping:
            raise RuntimeError("this AsyncLLM was shut down")
        ids = self.llm.prompt_ids(prompt)
        params = params or SamplingParams()
        eid = next(self._ids)
        request_id = request_id if request_id is not None else f"req-{eid}"
        stream = _Stream(asyncio.get_running_loop(), RequestTracker(request_id, ids, params, self.tokenizer))
        with self._lock:
            if request_id in self._by_name:
                raise ValueError(f"request id {request_id!r} is already running")
            self._streams[eid] = stream
            self._by_name[request_id] = eid
        try:
            self.engine.add_request(eid, _to_request(ids, params))
            self._wake.set()
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise RuntimeError(f"the engine loop failed: {item}") from item
                yield item
                if item.finished:
                    break
        finally:
            if not stream.tracker.finished:
                self.engine.abort_request(eid)
                self._wake.set()
            with self._lock:
                self._streams.pop(eid, None)
                self._by_name.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        """Ends a request (its stream finishes with finish_reason "abort") and frees its blocks."""
        with self._lock:
            eid = self._by_name.get(request_id)
        if eid is not None:
            self.engine.abort_request(eid)
            self._wake.set()

    def metrics(self) -> dict:
        """Engine-wide counters and state (see EngineStats) plus recent time-to-first-token."""
        s = self.engine.stats()
        return {
            "running": s.running, "waiting": s.waiting,
            "kv_blocks_total": s.total_blocks, "kv_blocks_free": s.free_blocks, "kv_blocks_cached": s.cached_blocks,
            "prompt_tokens_total": s.prompt_tokens, "cached_prompt_tokens_total": s.cached_prompt_tokens,
            "generation_tokens_total": s.generation_tokens, "requests_finished_total": s.requests_finished,
            "drafted_tokens_total": s.drafted, "accepted_tokens_total": s.accepted,
            "target_steps_total": s.steps, "preemptions_total": s.preemptions,
            "ttft_seconds": list(self.recent_ttft),
        }

    def shutdown(self) -> None:
        """Stops the engine thread (running requests end with finish_reason "abort")."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    # ---- the engine thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if self._stopping:
                with self._lock:
                    ids = list(self._streams)
                for eid in ids:
                    self.engine.abort_request(eid)
                if not self.engine.has_unfinished:
                    return
            elif not self.engine.has_unfinished:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                updates = self.engine.step()
            except Exception as e:  # a failed step ended every request it held; the loop goes on
                with self._lock:
                    streams = list(self._streams.values())
                for st in streams:
                    if not st.tracker.finished:
                        st.tracker.finished = True
                        st.put(e)
                continue
            for u in updates:
                self._deliver(u)

    def _deliver(self, u) -> None:
        with self._lock:
            stream = self._streams.get(u.id)
        if u.finished:
            self.recent_ttft.append(u.result.first_token_seconds)
        if stream is None or stream.tracker.finished:
            return
        out = stream.tracker.update(u.new_tokens, u.result if u.finished else None)
        if stream.tracker.stop_hit and not u.finished:
            self.engine.abort_request(u.id)  # its final output (reason "stop") comes next step
        if out is not None:
            stream.put(out)
