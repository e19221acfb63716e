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
