"""The request bodies as pydantic models, built on first use (pydantic comes with fastapi)."""
from typing import List, Optional

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
        model_config = ConfigDict(extra="allow")  # unknown fields pass; requests.UNSUPPORTED ones are checked
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
