"""specdec_native: speculative decoding for Llama-family models, a C++ core with a thin Python API.

    from specdec_native import LLM, SamplingParams
    llm = LLM("path/to/checkpoint_or.gguf")
    out = llm.generate(["Once upon a time"], SamplingParams(max_tokens=64))[0]
"""
from importlib import import_module

__version__ = "0.1.0"

# Names resolve on first use, so light modules (gguf_convert, sampling_params) import without
# loading the compiled core.
_LAZY = {
    "LLM": "specdec_native.llm",
    "AsyncLLM": "specdec_native.async_llm",
    "StreamOutput": "specdec_native.outputs",
    "RequestOutput": "specdec_native.outputs",
    "SamplingParams": "specdec_native.sampling_params",
    "SpeculativeConfig": "specdec_native.speculative",
    "convert_gguf": "specdec_native.gguf_convert",
    "ops": "specdec_native.ops",
    "cuda_available": "specdec_native.cuda",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'specdec_native' has no attribute {name!r}")
    module = import_module(_LAZY[name])
    value = module if name == "ops" else getattr(module, name)
    globals()[name] = value
    return value
