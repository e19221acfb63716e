"""Convert a GGUF checkpoint (llama.cpp format) into a Hugging Face model directory.

The output directory holds ``config.json``, ``generation_config.json``, ``model.safetensors``,
``tokenizer.json`` and ``tokenizer_config.json``; it loads with
``transformers.AutoModelForCausalLM.from_pretrained`` and with the native engine.

Only numpy, gguf, safetensors' file format, tokenizers and tqdm are used here, never the compiled
extension, so the converter works before (and without) a native build.

Supported: GGUF architectures ``llama`` (Llama, Mistral, SmolLM, ... ) and ``qwen2``; tokenizers of
type ``gpt2`` (byte-level BPE). Every tensor type ``gguf.quants`` can dequantize is accepted.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["convert_gguf", "UnsupportedTokenizerError", "SUPPORTED_ARCHITECTURES"]

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

_GGUF_MAGIC = b"GGUF"

# llama.cpp token types (gguf.TokenType)
_TOKEN_NORMAL = 1
_TOKEN_UNKNOWN = 2
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4
_TOKEN_UNUSED = 5
_TOKEN_BYTE = 6

_OUT_DTYPES = {
    # name -> (safetensors dtype tag, bytes per element, config torch_dtype)
    "float32": ("F32", 4, "float32"),
    "float16": ("F16", 2, "float16"),
    "bfloat16": ("BF16", 2, "bfloat16"),
}
_DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "fp16": "float16", "f16": "float16",
                  "half": "float16", "bf16": "bfloat16"}


class UnsupportedTokenizerError(NotImplementedError, ValueError):
    """The GGUF's tokenizer kind cannot be converted (yet). Both a NotImplementedError and a ValueError."""


# --------------------------------------------------------------------------------------------------
# Reading the GGUF
# --------------------------------------------------------------------------------------------------

def _open_gguf(path: str):
    """Open ``path`` with gguf.GGUFReader, turning every way a file can be broken into a clear error."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"GGUF file not found: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"expected a GGUF file, got a directory: {path!r}")
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 4 or head[:4] != _GGUF_MAGIC:
        raise ValueError(
            f"{path!r} is not a GGUF file: expected the magic bytes {_GGUF_MAGIC!r} at offset 0, "
            f"found {head[:4]!r} (file size {size} bytes)"
        )
    if len(head) < 8:
        raise ValueError(f"{path!r} is a truncated GGUF file: only {size} bytes, the header needs at least 24")

    import gguf  # deferred: only needed when actually converting

    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as exc:  # IndexError / ValueError / struct errors from reading past the end
        raise ValueError(
            f"{path!r} is a truncated or corrupt GGUF file ({size} bytes): could not parse the header, "
            f"metadata and tensor table ({type(exc).__name__}: {exc})"
        ) from exc

    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != int(t.n_bytes):
            raise ValueError(
                f"{path!r} is a truncated GGUF file: tensor {t.name!r} needs bytes up to offset {end}, "
                f"but the file has only {size} bytes"
            )
    return reader


def _field_value(field) -> Any:
    """The Python value of a GGUFReader field (scalar, str, or list), independent of gguf version."""
    import gguf

    types = list(field.types)
    if not types:
        return None

    def scalar(part, vtype):
        if vtype == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        v = part.tolist()
        v = v[0] if isinstance(v, list) else v
        if vtype == gguf.GGUFValueType.BOOL:
            return bool(v)
        return v

    if types[0] == gguf.GGUFValueType.ARRAY:
        sub = types[1] if len(types) > 1 else None
        if sub is None:
            return []
        if sub == gguf.GGUFValueType.ARRAY:
            raise ValueError(f"nested arrays in GGUF field {field.name!r} are not supported")
        return [scalar(field.parts[i], sub) for i in field.data]
    return scalar(field.parts[field.data[0]], types[0])


class _Meta:
    def __init__(self, reader):
        self._reader = reader
        self._cache: Dict[str, Any] = {}

    def has(self, key: str) -> bool:
        return key in self._reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self._reader.fields:
            return default
        if key not in self._cache:
            self._cache[key] = _field_value(self._reader.fields[key])
        return self._cache[key]

    def require(self, key: str) -> Any:
        if key not in self._reader.fields:
            raise ValueError(f"GGUF metadata is missing the required key {key!r}")
        return self.get(key)


_CHUNK_ELEMENTS = 1 << 25  # dequantize big tensors (embeddings, lm_head) this many values at a time


def _tensor_shape(tensor) -> Tuple[int, ...]:
    """numpy (row-major) shape: the reverse of ggml's dims (ne0 = row length comes last)."""
    return tuple(int(d) for d in reversed([int(x) for x in tensor.shape]))


def _dequantize_rows(tensor, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the tensor (rows = all but the last numpy dim, flattened) as float32 [n, row_len]."""
    import gguf

    qtype = tensor.tensor_type
    shape = _tensor_shape(tensor)
    row_len = shape[-1]
    data = np.asarray(tensor.data)
    data = data.reshape(-1, data.shape[-1]) if data.ndim != 1 else data.reshape(1, -1)
    part = data[start:stop]
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F64,
                 gguf.GGMLQuantizationType.I8, gguf.GGMLQuantizationType.I16, gguf.GGMLQuantizationType.I32,
                 gguf.GGMLQuantizationType.I64):
        out = part.astype(np.float32)
    else:
        try:
            out = gguf.quants.dequantize(part, qtype)
        except NotImplementedError as exc:
            raise ValueError(
                f"tensor {tensor.name!r} has type {qtype.name}, which the installed gguf package cannot "
                f"dequantize ({exc})"
            ) from exc
        out = np.asarray(out, dtype=np.float32)
    n = stop - start
    if out.size != n * row_len:
        raise ValueError(f"tensor {tensor.name!r}: dequantized {out.size} values for {n} rows of {row_len}")
    return out.reshape(n, row_len)


def _n_rows(tensor) -> int:
    shape = _tensor_shape(tensor)
    return int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1


def _dequantize(tensor) -> np.ndarray:
    """The whole tensor as float32 in numpy order.

    For a 2-D weight ggml's ne0 is the row length (in_features), so the result is
    [out_features, in_features], the layout of a torch.nn.Linear weight.
    """
    return _dequantize_rows(tensor, 0, _n_rows(tensor)).reshape(_tensor_shape(tensor))


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

def _f32(x: Any) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(x)))


def _build_config(meta: _Meta, arch: str, tensor_names: Sequence[str], embed_shape: Tuple[int, ...],
                  torch_dtype: str) -> Dict[str, Any]:
    def a(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    def ra(key):
        return meta.require(f"{arch}.{key}")

    hidden = int(ra("embedding_length"))
    n_head = int(ra("attention.head_count"))
    n_kv = a("attention.head_count_kv")
    n_kv = n_head if n_kv is None else int(n_kv)
    vocab_size = int(embed_shape[0])
    names = set(tensor_names)
    has_qkv_bias = "blk.0.attn_q.bias" in names

    cfg: Dict[str, Any] = {}
    if arch == "llama":
        cfg["architectures"] = ["LlamaForCausalLM"]
        cfg["model_type"] = "llama"
    else:
        cfg["architectures"] = ["Qwen2ForCausalLM"]
        cfg["model_type"] = "qwen2"
    cfg.update(
        hidden_size=hidden,
        intermediate_size=int(ra("feed_forward_length")),
        num_hidden_layers=int(ra("block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        hidden_act="silu",
        rms_norm_eps=_f32(a("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=_f32(a("rope.freq_base", 10000.0)),
        max_position_embeddings=int(a("context_length", 4096)),
        vocab_size=vocab_size,
        tie_word_embeddings="output.weight" not in names,
    )
    key_length = a("attention.key_length")
    if key_length is not None:
        cfg["head_dim"] = int(key_length)
    bos = meta.get("tokenizer.ggml.bos_token_id")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    pad = meta.get("tokenizer.ggml.padding_token_id")
    cfg["bos_token_id"] = None if bos is None else int(bos)
    cfg["eos_token_id"] = None if eos is None else int(eos)
    if pad is not None:
        cfg["pad_token_id"] = int(pad)
    cfg["torch_dtype"] = torch_dtype
    if arch == "llama":
        cfg["attention_bias"] = bool(has_qkv_bias)
        cfg["mlp_bias"] = False
        if has_qkv_bias and "blk.0.attn_output.bias" not in names:
            warnings.warn("llama GGUF has q/k/v biases but no attn_output bias; HF Llama's attention_bias "
                          "also expects o_proj.bias, which will be missing")
    else:
        cfg["attention_bias"] = True
        cfg["use_sliding_window"] = False
        cfg["sliding_window"] = None
        cfg["max_window_layers"] = cfg["num_hidden_layers"]

    rope_scaling = _rope_scaling(meta, arch, names)
    if rope_scaling is not None:
        cfg["rope_scaling"] = rope_scaling
    cfg["use_cache"] = True
    return cfg


def _rope_scaling(meta: _Meta, arch: str, names) -> Optional[Dict[str, Any]]:
    stype = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if factor is None:
        factor = meta.get(f"{arch}.rope.scale_linear")
        if factor is not None and stype is None:
            stype = "linear"
    orig_ctx = meta.get(f"{arch}.rope.scaling.original_context_length")
    if "rope_freqs.weight" in names:
        warnings.warn("GGUF carries a rope_freqs tensor (llama3-style RoPE scaling); its parameters are not "
                      "stored in GGUF metadata, so config.json gets no llama3 rope_scaling")
    if stype is None or stype == "none" or factor is None or float(factor) == 1.0 and stype != "yarn":
        return None
    out: Dict[str, Any] = {"rope_type": str(stype), "type": str(stype), "factor": _f32(factor)}
    if orig_ctx is not None:
        out["original_max_position_embeddings"] = int(orig_ctx)
    return out


# --------------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------------

_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# Tensors llama.cpp writes that a HF checkpoint does not have.
_IGNORED = {"rope_freqs.weight"}


def _hf_name(gguf_name: str) -> Optional[str]:
    if gguf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[gguf_name]
    if gguf_name.startswith("blk."):
        parts = gguf_name.split(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2] in _LAYER_MAP:
            return f"model.layers.{int(parts[1])}.{_LAYER_MAP[parts[2]]}"
    return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of a Llama q/k projection (weight [rows, in] or bias [rows]).

    Hugging Face Llama applies RoPE in "rotate half" form: inside each head of size d, row ``j`` pairs
    with row ``j + d/2``. llama.cpp rotates adjacent pairs (2j, 2j+1), so its converter reorders the
    rows of each head: HF row ``i*d/2 + j`` (i in {0, 1}, j < d/2) is stored as GGUF row ``2j + i``.
    Viewing a GGUF head as [d/2, 2] (row 2j+i -> [j, i]) and transposing to [2, d/2] puts row
    ``2j + i`` back at ``i*d/2 + j``.
    """
    rows = w.shape[0]
    if rows % n_heads:
        raise ValueError(f"cannot un-permute {rows} rows into {n_heads} heads")
    d = rows // n_heads
    if d % 2:
        raise ValueError(f"head size {d} is odd; cannot un-permute rotary rows")
    rest = w.shape[1:]
    return np.ascontiguousarray(w.reshape(n_heads, d // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape))


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even, NaN kept quiet."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return np.ascontiguousarray(x, dtype="<f4")
    if dtype == "float16":
        with np.errstate(over="ignore"):
            y = x.astype("<f2")
        if not np.isfinite(y).all() and np.isfinite(x).all():
            warnings.warn("some values overflow float16 and became inf")
        return np.ascontiguousarray(y)
    if dtype == "bfloat16":
        return np.ascontiguousarray(_to_bf16_bits(x).astype("<u2"))
    raise AssertionError(dtype)


class _SafetensorsWriter:
    """Streams tensors into a .safetensors file one at a time (the whole model never sits in memory).

    Format: u64 little-endian header size N, N bytes of JSON (padded with spaces to a multiple of 8),
    then the raw little-endian tensor bytes at the offsets the header gives.
    """

    def __init__(self, path: str, entries: List[Tuple[str, str, Tuple[int, ...], int]],
                 metadata: Optional[Dict[str, str]] = None):
        # entries: (name, dtype tag, shape, element size)
        header: Dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = metadata
        offset = 0
        self._expected: List[Tuple[str, int]] = []
        for name, tag, shape, esize in entries:
            nbytes = int(np.prod(shape, dtype=np.int64)) * esize if shape else esize
            header[name] = {"dtype": tag, "shape": [int(s) for s in shape], "data_offsets": [offset, offset + nbytes]}
            self._expected.append((name, nbytes))
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * ((-len(blob)) % 8)
        self._fh = open(path, "wb")
        self._fh.write(struct.pack("<Q", len(blob)))
        self._fh.write(blob)
        self._i = 0
        self._done = 0

    def write(self, name: str, arr: np.ndarray) -> None:
        """Append (part of) tensor ``name``; a tensor may arrive in several consecutive pieces."""
        exp_name, nbytes = self._expected[self._i]
        if name != exp_name or self._done + arr.nbytes > nbytes:
            raise AssertionError(f"safetensors writer: got {name} (+{arr.nbytes} B), expected {exp_name} "
                                 f"({nbytes - self._done} B left)")
        self._fh.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
        self._done += arr.nbytes
        if self._done == nbytes:
            self._i += 1
            self._done = 0

    def close(self) -> None:
        if self._i != len(self._expected):
            self._fh.close()
            raise AssertionError("safetensors writer closed before all tensors were written")
        self._fh.close()


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------

# Pre-tokenizer regexes, by llama.cpp's `tokenizer.ggml.pre` name.
_GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                 r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_QWEN2_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# GPT-2 regex after isolating every digit (StarCoder family, SmolLM).
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva-7b"}
_GPT2_STYLE = {"gpt-2", "gpt2", "default", "mpt", "olmo", "jais", "phi-2", "stablelm2"}
_LLAMA3_STYLE = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3", "pixtral"}
_QWEN2_STYLE = {"qwen2", "deepseek-r1-qwen", "megrez"}


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _pre_tokenizer(pre: Optional[str]):
    from tokenizers import Regex, pre_tokenizers

    pre = (pre or "default").lower()
    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]), False
    if pre in _QWEN2_STYLE:
        regex, ignore_merges = _QWEN2_REGEX, False
    elif pre in _LLAMA3_STYLE:
        regex, ignore_merges = _LLAMA3_REGEX, True
    else:
        if pre not in _GPT2_STYLE:
            warnings.warn(f"unknown tokenizer.ggml.pre {pre!r}; using the GPT-2 pre-tokenizer regex")
        regex, ignore_merges = _GPT2_REGEX, False
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ]), ignore_merges


def _check_tokenizer_supported(meta: _Meta) -> str:
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise ValueError("GGUF has no tokenizer metadata (tokenizer.ggml.model); cannot write tokenizer.json")
    if model != "gpt2":
        raise UnsupportedTokenizerError(
            f"tokenizer.ggml.model={model!r} is not supported by this converter yet; only 'gpt2' "
            f"(byte-level BPE, e.g. SmolLM2, Qwen2, Llama 3) is. SentencePiece ('llama') vocabularies are not "
            f"converted."
        )
    return model


def _build_tokenizer(meta: _Meta):
    """A tokenizers.Tokenizer equivalent to the GGUF's byte-level BPE vocabulary.

    Returns (tokenizer, special token strings dict, add_bos, add_eos).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    tokens: List[str] = meta.require("tokenizer.ggml.tokens")
    n = len(tokens)
    types: List[int] = meta.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * n
    merges_raw: List[str] = meta.get("tokenizer.ggml.merges") or []
    pre = meta.get("tokenizer.ggml.pre")

    byte_chars = _bytes_to_unicode()
    alphabet = set(byte_chars.values())

    vocab: Dict[str, int] = {}
    added: List[Tuple[int, str, bool]] = []
    for i, (tok, ttype) in enumerate(zip(tokens, types)):
        if ttype in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED):
            # llama.cpp stores these as plain text; they are matched whole before pre-tokenization.
            added.append((i, tok, ttype == _TOKEN_CONTROL))
            key = tok
        elif set(tok) <= alphabet:
            key = tok
        else:
            # A normal token spelled in raw text: respell it in the byte alphabet, as BPE expects.
            key = "".join(byte_chars[b] for b in tok.encode("utf-8"))
        if key in vocab:
            # duplicate spelling: keep the first id, park the duplicate under a unique key so ids stay dense
            key = f"<unused_dup_{i}>"
        vocab[key] = i

    merges: List[Tuple[str, str]] = []
    for m in merges_raw:
        parts = m.split(" ")
        if len(parts) != 2:
            raise ValueError(f"malformed merge {m!r} in tokenizer.ggml.merges (expected 'left right')")
        merges.append((parts[0], parts[1]))

    pre_tok, ignore_merges = _pre_tokenizer(pre)
    model = models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False,
                       byte_fallback=False, ignore_merges=ignore_merges)
    tk = Tokenizer(model)
    if (pre or "").lower() in _QWEN2_STYLE:
        tk.normalizer = normalizers.NFC()  # Qwen2's own tokenizer NFC-normalizes its input
    tk.pre_tokenizer = pre_tok
    tk.decoder = decoders.ByteLevel()

    specials = [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
                for _, t, sp in added if sp]
    users = [AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False, single_word=False)
             for _, t, sp in added if not sp]
    if specials:
        tk.add_special_tokens(specials)
    if users:
        tk.add_tokens(users)
    for i, t, _ in added:
        got = tk.token_to_id(t)
        if got != i:
            raise AssertionError(f"added token {t!r} got id {got}, expected {i}")

    def tok_str(key: str) -> Optional[str]:
        idx = meta.get(f"tokenizer.ggml.{key}")
        if idx is None or not (0 <= int(idx) < n):
            return None
        return tokens[int(idx)]

    special_strs = {
        "bos_token": tok_str("bos_token_id"),
        "eos_token": tok_str("eos_token_id"),
        "unk_token": tok_str("unknown_token_id"),
        "pad_token": tok_str("padding_token_id"),
    }
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if add_bos or add_eos:
        bos, eos = special_strs["bos_token"], special_strs["eos_token"]
        single, pair, st = "$A:0", "$A:0 $B:1", {}
        if add_bos and bos is not None:
            single, pair = f"{bos}:0 " + single, f"{bos}:0 $A:0 {bos}:1 $B:1"
            st[bos] = int(meta.get("tokenizer.ggml.bos_token_id"))
        if add_eos and eos is not None:
            single += f" {eos}:0"
            pair = pair.replace("$A:0", f"$A:0 {eos}:0").replace("$B:1", f"$B:1 {eos}:1")
            st[eos] = int(meta.get("tokenizer.ggml.eos_token_id"))
        tk.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(st.items()))
    return tk, special_strs, add_bos, add_eos


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------

# Tokens that end a generation besides the GGUF's EOS, as llama.cpp's vocabulary loader finds
# them: the end-of-turn / end-of-document markers of the common chat formats. An instruct model
# converted from GGUF then stops where it would in llama.cpp (and as Qwen2.5's own
# generation_config [<|im_end|>, <|endoftext|>] says): a raw-text completion ends at <|endoftext|>.
END_OF_GENERATION_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
                           "<|end|>", "<end_of_turn>", "<EOT>", "<｜end▁of▁sentence｜>")


def end_of_generation_ids(meta) -> List[int]:
    """The GGUF's EOS id first, then its EOT / EOM ids and every control or user-defined token
    spelled as one of END_OF_GENERATION_TEXTS (ids in range, each once)."""
    tokens: List[str] = meta.get("tokenizer.ggml.tokens") or []
    types: List[int] = meta.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)
    ids = [meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    ids += [i for i, (tok, ttype) in enumerate(zip(tokens, types))
            if tok in END_OF_GENERATION_TEXTS and ttype in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)]
    out: List[int] = []
    for i in ids:
        if i is not None and 0 <= int(i) < len(tokens) and int(i) not in out:
            out.append(int(i))
    return out


def convert_gguf(gguf_path: str, out_dir: str, dtype: str = "float32", progress: bool = True) -> str:
    """Convert ``gguf_path`` into a Hugging Face checkpoint directory ``out_dir``; returns ``out_dir``.

    dtype: "float32" (exact dequantized values), "bfloat16" or "float16" for the stored weights.
    Raises FileNotFoundError for a missing file, ValueError for a file that is not GGUF, is truncated,
    or has an unsupported architecture, and UnsupportedTokenizerError (a ValueError) for a
    SentencePiece vocabulary.
    """
    gguf_path = os.fspath(gguf_path)
    out_dir = os.fspath(out_dir)
    dtype = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_OUT_DTYPES)}, got {dtype!r}")
    st_tag, esize, torch_dtype = _OUT_DTYPES[dtype]

    reader = _open_gguf(gguf_path)
    meta = _Meta(reader)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported GGUF architecture {arch!r}; supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    _check_tokenizer_supported(meta)

    by_name = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in by_name:
        raise ValueError("GGUF has no token_embd.weight tensor")
    embed_shape = _tensor_shape(by_name["token_embd.weight"])
    config = _build_config(meta, arch, list(by_name), embed_shape, torch_dtype)
    n_head = config["num_attention_heads"]
    n_kv = config["num_key_value_heads"]

    # Plan every output tensor before writing so the safetensors header can go first.
    plan: List[Tuple[str, Any, Optional[Callable[[np.ndarray], np.ndarray]]]] = []
    unknown = []
    for t in reader.tensors:
        hf = _hf_name(t.name)
        if hf is None:
            if t.name not in _IGNORED:
                unknown.append(t.name)
            continue
        fix = None
        if arch == "llama":
            if ".attn_q." in t.name:
                fix = (lambda w, h=n_head: unpermute_qk(w, h))
            elif ".attn_k." in t.name:
                fix = (lambda w, h=n_kv: unpermute_qk(w, h))
        plan.append((hf, t, fix))
    if unknown:
        raise ValueError(f"GGUF has tensors this converter does not know how to map: {unknown[:8]}"
                         + (" ..." if len(unknown) > 8 else ""))

    def order(item):
        name = item[0]
        if name.startswith("model.layers."):
            return (1, int(name.split(".")[2]), name)
        return ({"model.embed_tokens.weight": 0, "model.norm.weight": 2, "lm_head.weight": 3}.get(name, 2), 0, name)

    plan.sort(key=order)
    expected_layers = config["num_hidden_layers"]
    per_layer = {f"model.layers.{i}.{s}" for i in range(expected_layers) for s in
                 ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                  "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                  "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")}
    missing = sorted((per_layer | {"model.norm.weight"}) - {p[0] for p in plan})
    if missing:
        raise ValueError(f"GGUF is missing tensors required by the model: {missing[:8]}")

    tokenizer, special_strs, add_bos, add_eos = _build_tokenizer(meta)

    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for hf, t, _ in plan:
        entries.append((hf, st_tag, _tensor_shape(t), esize))

    tmp_path = os.path.join(out_dir, "model.safetensors.tmp")
    writer = _SafetensorsWriter(tmp_path, entries, metadata={"format": "pt"})
    try:
        it = plan
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(plan, desc=f"dequantizing {os.path.basename(gguf_path)}", unit="tensor")
        for hf, t, fix in it:
            rows = _n_rows(t)
            if fix is not None or rows * _tensor_shape(t)[-1] <= _CHUNK_ELEMENTS:
                w = _dequantize(t)
                if fix is not None:
                    w = fix(w)
                writer.write(hf, _cast(w, dtype))
            else:
                step = max(1, _CHUNK_ELEMENTS // _tensor_shape(t)[-1])
                for r0 in range(0, rows, step):
                    writer.write(hf, _cast(_dequantize_rows(t, r0, min(rows, r0 + step)), dtype))
        writer.close()
    except BaseException:
        try:
            writer._fh.close()
        finally:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
        raise
    os.replace(tmp_path, os.path.join(out_dir, "model.safetensors"))

    def dump(name: str, obj: Any) -> None:
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, ensure_ascii=False)
            fh.write("\n")

    dump("config.json", config)
    gen = {"_from_model_config": True}
    if config.get("bos_token_id") is not None:
        gen["bos_token_id"] = config["bos_token_id"]
    stops = end_of_generation_ids(meta)
    if stops:
        gen["eos_token_id"] = stops if len(stops) > 1 else stops[0]
    if config.get("pad_token_id") is not None:
        gen["pad_token_id"] = config["pad_token_id"]
    dump("generation_config.json", gen)

    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    tok_cfg: Dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
    }
    for k, v in special_strs.items():
        if v is not None:
            tok_cfg[k] = v
    chat_template = meta.get("tokenizer.chat_template")
    if chat_template is not None:
        tok_cfg["chat_template"] = chat_template
    dump("tokenizer_config.json", tok_cfg)
    special_map = {k: v for k, v in special_strs.items() if v is not None}
    dump("special_tokens_map.json", special_map)
    return out_dir


def _main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Convert a GGUF file into a Hugging Face model directory")
    p.add_argument("gguf")
    p.add_argument("out_dir")
    p.add_argument("--dtype", default="float32", choices=sorted(_OUT_DTYPES))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    convert_gguf(args.gguf, args.out_dir, dtype=args.dtype, progress=not args.no_progress)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
