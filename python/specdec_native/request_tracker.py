"""RequestTracker: turns the engine's per-step updates for one request into StreamOutputs:
incremental text, stop strings (which end the request early: the caller aborts it in the
engine), and the final metrics."""
from __future__ import annotations

from typing import List, Optional

from .outputs import StreamOutput, result_metrics
from .sampling_params import SamplingParams


class RequestTracker:
    def __init__(self, request_id: str, prompt_ids: List[int], params: SamplingParams, tokenizer):
        self.request_id = request_id
        self.prompt_tokens = len(prompt_ids)
        self.token_ids: List[int] = []
        self.stop_hit = False  # a stop string appeared: the engine must end the request
        self.finished = False
        self._detok = None
        if tokenizer is not None:
            from .tokenizer import IncrementalDetokenizer

            self._detok = IncrementalDetokenizer(tokenizer, params.stop)

    @property
    def text(self) -> str:
        return self._detok.text if self._detok is not None else ""

    def update(self, new_tokens, result=None) -> Optional[StreamOutput]:
        """An engine update (new tokens; the GenerationResult when it finished). None when it
        brings nothing to report."""
        out = StreamOutput(self.request_id, "", [], prompt_tokens=self.prompt_tokens)
        for t in new_tokens:
            if self.stop_hit:
                break  # tokens after a stop string are dropped
            self.token_ids.append(t)
            out.token_ids.append(t)
            if self._detok is not None:
                out.text += self._detok.add(t)
                self.stop_hit = self._detok.stopped
        out.num_output_tokens = len(self.token_ids)
        if result is not None:
            self.finished = out.finished = True
            out.finish_reason = "stop" if self.stop_hit else result.finish_reason
            out.cached_tokens = result.cached_prompt_tokens
            out.metrics = result_metrics(result)
        elif not out.token_ids:
            return None
        return out
