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
