"""Finding and reading a Hugging Face checkpoint directory (or a GGUF file, converted once into
one): config.json into the core's ModelConfig, the safetensors shards, and the EOS ids.
Everything unsupported is rejected here by name, before any weight is read."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


@dataclass
class Checkpoint:
    path: Path  # the Hugging Face directory
    config: dict
    shards: List[str]
    eos_token_ids: List[int]
    bos_token_id: Optional[int]
    max_model_len: int  # what this engine serves (the sliding window caps it; see below)


def read_json(path: Path, what: str):
    """The JSON value in `path`; ValueError naming `what` when the file is not JSON (or not UTF-8)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {what} is not valid JSON ({e})") from None


def _read_json(path: Path, what: str) -> dict:
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {what} must be a JSON object")
    return data


# Bumped whenever gguf_convert writes something different, so a cached conversion is redone.
# 2: generation_config.json lists every end-of-generation token (gguf_convert.end_of_generation_ids).
GGUF_CONVERSION_VERSION = 2


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPECDEC_CACHE", Path.home() / ".cache" / "specdec_native"))


def resolve(model: str, gguf_dtype: str = "float32", progress: bool = True) -> Path:
    """A checkpoint directory for `model`: the directory itself, or a GGUF file converted once
    into the cache (keyed by the file's path, size and modification time, and by
    GGUF_CONVERSION_VERSION)."""
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path does not exist: {path}")
    if path.is_dir():
        return path
    if path.suffix.lower() != ".gguf":
        raise ValueError(f"{path}: expected a checkpoint directory or a .gguf file")
    st = path.stat()
    source = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
              "dtype": gguf_dtype, "version": GGUF_CONVERSION_VERSION}
    key = ":".join(str(source[k]) for k in ("path", "size", "mtime_ns", "dtype", "version"))
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    out = default_cache_dir() / "converted" / f"{path.stem}-{key}"
    if not (out / ".complete").exists():
        from .gguf_convert import convert_gguf

        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        convert_gguf(str(path), str(tmp), dtype=gguf_dtype, progress=progress)
        (tmp / ".complete").write_text(json.dumps(source))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        _remove_stale_conversions(out, source)
    return out


def _remove_stale_conversions(out: Path, source: dict) -> None:
    """Deletes the cache's earlier conversions of the same file to the same dtype (made before
    the file or GGUF_CONVERSION_VERSION changed): no key can reach them again, and one of a 1.5B
    model is ~7 GB. Conversions whose `.complete` does not name their source (written before
    it did) are left alone."""
    prefix = out.name[: out.name.rindex("-") + 1]
    for other in out.parent.iterdir():
        if other == out or not other.name.startswith(prefix) or ".tmp" in other.name:
            continue
        try:
            made_from = json.loads((other / ".complete").read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(made_from, dict) and made_from.get("path") == source["path"]
                and made_from.get("dtype") == source["dtype"]):
            shutil.rmtree(other, ignore_errors=True)


def _shards(path: Path) -> List[str]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index, "the safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: expected a non-empty 'weight_map' object")
        files = list(dict.fromkeys(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise ValueError(f"{path}: the safetensors index names missing shard files: {missing}")
        return [str(path / f) for f in files]
    single = path / "model.safetensors"
    if single.is_file():
        return [str(single)]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise ValueError(f"{path}: no model.safetensors or model.safetensors.index.json "
                         "(only safetensors checkpoints are supported)")
    return [str(p) for p in found]


def _ids(value) -> List[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def _rope_scaling(config: dict) -> Optional[dict]:
    """The RoPE scaling dict: transformers < 5 writes 'rope_scaling', transformers >= 5 writes
    'rope_parameters' (which also holds rope_theta; rope_type 'default' means no scaling)."""
    scaling = config.get("rope_scaling") or config.get("rope_parameters")
    if not isinstance(scaling, dict):
        return None
    if scaling.get("rope_type", scaling.get("type")) in (None, "default") and "factor" not in scaling:
        return None
    return scaling


def _rope_theta(config: dict) -> float:
    theta = config.get("rope_theta")
    params = config.get("rope_parameters")
    if theta is None and isinstance(params, dict):
        theta = params.get("rope_theta")
    return float(theta if theta is not None else 10000.0)


def load(path: Path) -> Checkpoint:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{path}: not a Hugging Face checkpoint (config.json is missing)")
    config = _read_json(cfg_path, "config.json")
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{cfg_path}: architecture {arch!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{cfg_path}: hidden_act {act!r} is not supported (only 'silu')")
    for flag in ("attention_bias", "mlp_bias"):
        if arch != "Qwen2ForCausalLM" and config.get(flag):
            raise ValueError(f"{cfg_path}: {flag}=true is not supported for {arch}")
    scaling = _rope_scaling(config)
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("default", "llama3"):
            raise ValueError(f"{cfg_path}: rope_scaling type {kind!r} is not supported "
                             "(supported: default, llama3)")
    max_len = int(config.get("max_position_embeddings", 2048))
    # A sliding window only changes attention beyond its length: serve up to the window.
    window = config.get("sliding_window")
    uses_window = config.get("use_sliding_window", arch == "MistralForCausalLM")
    if uses_window and window:
        max_len = min(max_len, int(window))

    gen = {}
    if (path / "generation_config.json").is_file():
        gen = _read_json(path / "generation_config.json", "generation_config.json")
    eos = _ids(gen.get("eos_token_id")) or _ids(config.get("eos_token_id"))
    bos = gen.get("bos_token_id", config.get("bos_token_id"))
    return Checkpoint(path=path, config=config, shards=_shards(path), eos_token_ids=eos,
                      bos_token_id=bos if isinstance(bos, int) else None, max_model_len=max_len)


def model_config(ckpt: Checkpoint):
    """The core's ModelConfig for this checkpoint."""
    from . import _core

    c = ckpt.config
    m = _core.ModelConfig()
    m.architecture = c["architectures"][0]
    try:
        m.vocab_size = int(c["vocab_size"])
        m.hidden_size = int(c["hidden_size"])
        m.intermediate_size = int(c["intermediate_size"])
        m.num_layers = int(c["num_hidden_layers"])
        m.num_heads = int(c["num_attention_heads"])
    except KeyError as e:
        raise ValueError(f"{ckpt.path / 'config.json'}: missing required field {e}") from None
    m.num_kv_heads = int(c.get("num_key_value_heads") or m.num_heads)
    m.head_dim = int(c.get("head_dim") or m.hidden_size // m.num_heads)
    m.rms_norm_eps = float(c.get("rms_norm_eps", 1e-6))
    m.rope_theta = _rope_theta(c)
    m.tie_word_embeddings = bool(c.get("tie_word_embeddings", False))
    m.attention_bias = m.architecture == "Qwen2ForCausalLM"  # Qwen2 has q/k/v biases, always
    m.max_position_embeddings = int(ckpt.max_model_len)
    scaling = _rope_scaling(c)
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        rs = _core.RopeScaling()
        rs.type = "llama3"
        rs.factor = float(scaling["factor"])
        rs.low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
        rs.high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
        rs.original_max_position_embeddings = int(scaling.get("original_max_position_embeddings", 8192))
        m.rope_scaling = rs
    m.validate()
    return m
