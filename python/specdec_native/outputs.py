"""What generate() returns for each prompt."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class RequestOutput:
    prompt: Optional[str]
    prompt_token_ids: List[int]
    text: Optional[str]  # None when the checkpoint has no tokenizer
    token_ids: List[int]
    finish_reason: str  # "stop", "length" or "abort"
    metrics: Dict[str, float] = field(default_factory=dict)


@dataclass
class StreamOutput:
    """What a streamed request produced since its previous output (AsyncLLM.generate)."""

    request_id: str
    text: str  # new text ("" without a tokenizer); stop strings are cut off
    token_ids: List[int]  # new token ids
    finished: bool = False
    finish_reason: Optional[str] = None  # "stop", "length" or "abort" once finished
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    num_output_tokens: int = 0  # so far
    metrics: Dict[str, float] = field(default_factory=dict)  # on the finished output


def result_metrics(res) -> dict:
    """The metrics dict of a finished request, from the engine's GenerationResult."""
    n = len(res.tokens)
    decode_tokens = max(n - 1, 0)
    return {
        "prompt_tokens": res.prompt_tokens,
        "cached_prompt_tokens": res.cached_prompt_tokens,
        "preemptions": res.preemptions,
        "tokens": n,
        "seconds": res.total_seconds,
        "prefill_seconds": res.prefill_seconds,
        "decode_seconds": res.decode_seconds,
        "ttft": res.first_token_seconds,
        "steps": res.steps,
        "tokens_per_s": n / res.total_seconds if res.total_seconds > 0 else 0.0,
        "decode_tokens_per_s": decode_tokens / res.decode_seconds if res.decode_seconds > 0 else 0.0,
        "prefill_tokens_per_s": res.prompt_tokens / res.prefill_seconds if res.prefill_seconds > 0 else 0.0,
        # speculation (target passes after the prefill = steps)
        "drafted": res.drafted,
        "accepted": res.accepted,
        "acceptance_rate": res.accepted / res.drafted if res.drafted else 0.0,
        "mean_accepted_length": decode_tokens / res.steps if res.steps else 0.0,
        "acceptance_by_position": [a / p if p else 0.0 for a, p in zip(res.accepted_by_depth, res.proposed_by_depth)],
        "draft_seconds": res.draft_seconds,
        "verify_seconds": res.verify_seconds,
    }
