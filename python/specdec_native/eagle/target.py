"""The target model as the trainer holds it. With the transformers data backend that is the whole
transformers model, which generates the responses and gives the features. With the engine backend
the C++ engine runs the target, and the trainer needs only its tables: the config, the token
embedding (the head's input embedding), the final norm and the lm_head (the soft labels). Those
are read alone from the checkpoint onto a model built on the meta device, without dequantizing
and holding every layer in float32 (for Qwen2.5-Coder-1.5B: 1.9 GB instead of about 7 GB)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import torch

# (embedding, final norm, lm_head) as each format names them
_GGUF_TABLES = ("token_embd.weight", "output_norm.weight", "output.weight")
_HF_TABLES = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")


def load_target(path, device="cpu", tables_only: bool = False):
    """(model, tokenizer or None) from a Hugging Face directory or a .gguf file. tables_only: a
    model whose embedding, final norm and lm_head hold the checkpoint's weights (float32) and whose
    decoder layers are on the meta device (no forward); `model.tables_only` says which."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"target does not exist: {p}")
    kwargs = {}
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ValueError(f"{p}: expected a checkpoint directory or a .gguf file")
        where, kwargs = str(p.parent), {"gguf_file": p.name}
    else:
        where = str(p)
    major = int(transformers.__version__.split(".")[0])
    dtype_kw = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
    if tables_only:
        model = _tables_model(p, where, kwargs, dtype_kw, device)
    else:
        model = AutoModelForCausalLM.from_pretrained(where, **dtype_kw, **kwargs).to(device).eval()
        model.tables_only = False
    model.requires_grad_(False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    except Exception:  # a bare checkpoint (tests): prompts must then be token ids
        tokenizer = None
    return model, tokenizer


def _tables_model(p: Path, where: str, kwargs: Dict, dtype_kw: Dict, device):
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(where, **kwargs)
    embed, norm, head = _read_gguf_tables(p) if p.is_file() else _read_hf_tables(p)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, **dtype_kw)
    model.eval()
    embedding, lm_head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is None or config.tie_word_embeddings
    tables = [("embedding", embedding, embed), ("final norm", model.base_model.norm, norm)]
    for name, module, weight in tables + ([] if tied else [("lm_head", lm_head, head)]):
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise ValueError(f"{p}: {name} of shape {tuple(weight.shape)}, expected {tuple(module.weight.shape)} "
                             f"from its config")
        module.weight = torch.nn.Parameter(weight.to(device), requires_grad=False)
    if tied:
        lm_head.weight = embedding.weight
    if getattr(lm_head, "bias", None) is not None:
        raise ValueError(f"{p}: an lm_head with a bias is not supported by the engine backend")
    try:
        model.generation_config = GenerationConfig.from_pretrained(where, **kwargs)
    except Exception:  # none saved: what the model config says (as from_pretrained does)
        model.generation_config = GenerationConfig.from_model_config(config)
    model.tables_only = True
    return model


def _read_gguf_tables(p: Path) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import gguf

    tensors = {t.name: t for t in gguf.GGUFReader(str(p)).tensors if t.name in _GGUF_TABLES}
    missing = [n for n in _GGUF_TABLES[:2] if n not in tensors]
    if missing:
        raise ValueError(f"{p}: GGUF file without tensor(s) {missing}; use --data-backend transformers")

    def read(name):
        if name not in tensors:
            return None  # no output.weight: the lm_head is the embedding
        t = tensors[name]
        values = gguf.quants.dequantize(t.data, t.tensor_type)  # a read-only view of the file when unquantized
        if not values.flags.writeable or values.dtype != "float32":
            values = values.astype("float32")
        return torch.from_numpy(values)

    return read(_GGUF_TABLES[0]), read(_GGUF_TABLES[1]), read(_GGUF_TABLES[2])


def _read_hf_tables(p: Path) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from safetensors import safe_open

    found = {}
    for f in sorted(p.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in _HF_TABLES:
                if name in st.keys():
                    found[name] = st.get_tensor(name).float()
    missing = [n for n in _HF_TABLES[:2] if n not in found]
    if missing:
        raise ValueError(f"{p}: no tensor(s) {missing} in its *.safetensors files (the engine backend reads "
                         f"Llama-family checkpoints); use --data-backend transformers")
    return found[_HF_TABLES[0]], found[_HF_TABLES[1]], found.get(_HF_TABLES[2])
