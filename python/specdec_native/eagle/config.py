"""The EAGLE-3 head's config.json, as SpecForge writes it and SGLang / vLLM read it
(architecture `LlamaForCausalLMEagle3`), and the check that a head fits a target.

Aux layer ids follow SpecForge / SGLang: id i is the OUTPUT of the target's 0-based decoder
layer i (Hugging Face `output_hidden_states` index i + 1). They live in
`eagle_config.eagle_aux_hidden_state_layer_ids`; vLLM also accepts the key at top level. A head
without them uses the serving default [1, N//2 - 1, N - 4] of an N-layer target.

No torch here: this module only reads and checks JSON."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

ARCHITECTURE = "LlamaForCausalLMEagle3"

_REQUIRED_INT = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                 "vocab_size", "draft_vocab_size")


def default_aux_layer_ids(num_layers: int) -> Tuple[int, int, int]:
    """SpecForge's choice for an N-layer target: low, middle and high layers 1, N//2 - 1, N - 4
    (clamped into [0, N - 1] so that tiny targets still get three valid layers)."""
    if num_layers < 1:
        raise ValueError(f"a target needs at least one decoder layer, got {num_layers}")
    return tuple(min(max(i, 0), num_layers - 1) for i in (1, num_layers // 2 - 1, num_layers - 4))


def checked_aux_layer_ids(ids: Sequence[int]) -> Tuple[int, ...]:
    """ids as a tuple of three non-negative layer indices; ValueError otherwise."""
    out = tuple(ids)
    if len(out) != 3 or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in out):
        raise ValueError(f"aux_layer_ids must be three non-negative layer indices, got {ids!r}")
    return out


def resolve_aux_layer_ids(ids: Optional[Sequence[int]], num_target_layers: int) -> Tuple[int, ...]:
    """The aux layers a head reads from an N-layer target: `ids` (checked), or the default."""
    return checked_aux_layer_ids(ids) if ids is not None else default_aux_layer_ids(num_target_layers)


@dataclass
class Eagle3Config:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    draft_vocab_size: int
    head_dim: Optional[int] = None  # default hidden_size // num_attention_heads
    target_hidden_size: Optional[int] = None  # default hidden_size (fc reads 3 x this)
    aux_layer_ids: Optional[Tuple[int, ...]] = None  # None: the target's default (above)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    hidden_act: str = "silu"

    def __post_init__(self):
        for key in _REQUIRED_INT:
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{key} must be a positive integer, got {v!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError("hidden_size must be a multiple of num_attention_heads when head_dim is not given")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.target_hidden_size is None:
            self.target_hidden_size = self.hidden_size
        for key in ("head_dim", "target_hidden_size", "max_position_embeddings"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{key} must be a positive integer, got {v!r}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (rotary embedding), got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.draft_vocab_size > self.vocab_size:
            raise ValueError(f"draft_vocab_size ({self.draft_vocab_size}) exceeds vocab_size ({self.vocab_size})")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        for key in ("rms_norm_eps", "rope_theta"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{key} must be a positive number, got {v!r}")
        if self.aux_layer_ids is not None:
            self.aux_layer_ids = checked_aux_layer_ids(self.aux_layer_ids)

    def aux_layers_for(self, num_target_layers: int) -> Tuple[int, ...]:
        return resolve_aux_layer_ids(self.aux_layer_ids, num_target_layers)

    # --- config.json ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "architectures": [ARCHITECTURE],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "num_hidden_layers": 1,
            "hidden_act": self.hidden_act,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": self.vocab_size,
            "draft_vocab_size": self.draft_vocab_size,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "torch_dtype": "float32",
        }
        if self.target_hidden_size != self.hidden_size:
            d["target_hidden_size"] = self.target_hidden_size
        if self.aux_layer_ids is not None:
            d["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(self.aux_layer_ids),
                                 "use_aux_hidden_state": True}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config.json") -> "Eagle3Config":
        if not isinstance(d, Mapping):
            raise ValueError(f"{source}: expected a JSON object")
        archs = d.get("architectures")
        if not isinstance(archs, list) or ARCHITECTURE not in archs:
            raise ValueError(f"{source}: architectures must contain {ARCHITECTURE!r}, got {archs!r}")
        missing = [k for k in _REQUIRED_INT + ("rms_norm_eps",) if k not in d]
        if missing:
            raise ValueError(f"{source}: missing required keys {missing}")
        if d.get("num_hidden_layers", 1) != 1:
            raise ValueError(f"{source}: only one-layer EAGLE-3 heads are supported, got num_hidden_layers="
                             f"{d.get('num_hidden_layers')!r}")
        if d.get("tie_word_embeddings", False):
            raise ValueError(f"{source}: tie_word_embeddings=true (lm_head = the embedding table) is not supported")
        if d.get("rope_scaling") not in (None, {}):
            raise ValueError(f"{source}: rope_scaling {d.get('rope_scaling')!r} is not supported (only plain RoPE)")
        rope_theta = d.get("rope_theta")
        if rope_theta is None and isinstance(d.get("rope_parameters"), Mapping):
            rope_theta = d["rope_parameters"].get("rope_theta")
        eagle = d.get("eagle_config") or {}
        if not isinstance(eagle, Mapping):
            raise ValueError(f"{source}: eagle_config must be an object")
        if eagle.get("use_aux_hidden_state", True) is False:
            raise ValueError(f"{source}: eagle_config.use_aux_hidden_state=false is not supported")
        aux = eagle.get("eagle_aux_hidden_state_layer_ids", d.get("eagle_aux_hidden_state_layer_ids"))
        kwargs = dict(
            hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            num_attention_heads=d["num_attention_heads"], num_key_value_heads=d["num_key_value_heads"],
            vocab_size=d["vocab_size"], draft_vocab_size=d["draft_vocab_size"], head_dim=d.get("head_dim"),
            target_hidden_size=d.get("target_hidden_size"), rms_norm_eps=d["rms_norm_eps"],
            rope_theta=10000.0 if rope_theta is None else rope_theta,
            max_position_embeddings=d.get("max_position_embeddings", 2048), hidden_act=d.get("hidden_act", "silu"),
            aux_layer_ids=None if aux is None else (tuple(aux) if isinstance(aux, (list, tuple)) else aux),
        )
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


def _get(cfg: Any, key: str, default=None):
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def target_rope_theta(target_config: Any, default: float = 10000.0) -> float:
    theta = _get(target_config, "rope_theta")
    params = _get(target_config, "rope_parameters")
    if theta is None and isinstance(params, Mapping):
        theta = params.get("rope_theta")
    return float(default if theta is None else theta)


def check_compatible(head_config: Any, target_config: Any) -> Tuple[int, ...]:
    """Raises ValueError unless the head fits the target (a config.json dict or a transformers
    config): same vocabulary, fc input = 3 x the target's hidden size, aux layers that exist.
    Returns the aux layer ids the target must expose."""
    head = head_config if isinstance(head_config, Eagle3Config) else Eagle3Config.from_dict(head_config)
    hidden = _get(target_config, "hidden_size")
    vocab = _get(target_config, "vocab_size")
    layers = _get(target_config, "num_hidden_layers")
    for name, v in (("hidden_size", hidden), ("vocab_size", vocab), ("num_hidden_layers", layers)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"target config: {name} must be a positive integer, got {v!r}")
    if head.target_hidden_size != hidden:
        raise ValueError(f"hidden size mismatch: the head's fc expects target hidden states of size "
                         f"{head.target_hidden_size} (3 x {head.target_hidden_size} in), the target has {hidden}")
    if head.vocab_size != vocab:
        raise ValueError(f"vocab size mismatch: the head was built for a {head.vocab_size}-token vocabulary, "
                         f"the target has {vocab}")
    ids = head.aux_layers_for(layers)
    bad = [i for i in ids if not 0 <= i < layers]
    if bad:
        raise ValueError(f"aux layer ids {list(ids)} out of range for a {layers}-layer target "
                         f"(valid: 0..{layers - 1}); offending: {bad}")
    return ids


def config_from_target(target_config: Any, draft_vocab_size: int,
                       aux_layer_ids: Optional[Sequence[int]] = None,
                       intermediate_size: Optional[int] = None) -> Eagle3Config:
    """A head shaped like one decoder layer of the target (what SpecForge's configs do), with an
    MLP of `intermediate_size` when given (default: the target's)."""
    if intermediate_size is not None and intermediate_size < 1:
        raise ValueError(f"the head's intermediate_size must be >= 1, got {intermediate_size}")
    layers = _get(target_config, "num_hidden_layers")
    hidden = _get(target_config, "hidden_size")
    heads = _get(target_config, "num_attention_heads")
    cfg = Eagle3Config(
        hidden_size=hidden,
        intermediate_size=intermediate_size or _get(target_config, "intermediate_size"),
        num_attention_heads=heads,
        num_key_value_heads=_get(target_config, "num_key_value_heads") or heads,
        head_dim=_get(target_config, "head_dim") or hidden // heads,
        vocab_size=_get(target_config, "vocab_size"),
        draft_vocab_size=draft_vocab_size,
        aux_layer_ids=tuple(aux_layer_ids) if aux_layer_ids is not None else default_aux_layer_ids(layers),
        rms_norm_eps=float(_get(target_config, "rms_norm_eps", 1e-6)),
        rope_theta=target_rope_theta(target_config),
        max_position_embeddings=int(_get(target_config, "max_position_embeddings", 2048)),
    )
    check_compatible(cfg, target_config)
    return cfg
