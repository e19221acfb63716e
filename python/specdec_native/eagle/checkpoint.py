"""EAGLE-3 heads on disk, in the published (SpecForge / SGLang) layout: a directory with
config.json (see config.py) and model.safetensors holding

    fc.weight                                  [H, 3 * H_target]
    midlayer.input_layernorm.weight            [H]
    midlayer.hidden_norm.weight                [H]
    midlayer.post_attention_layernorm.weight   [H]
    midlayer.self_attn.q_proj.weight           [n_heads * D, 2H]
    midlayer.self_attn.k_proj.weight           [n_kv_heads * D, 2H]
    midlayer.self_attn.v_proj.weight           [n_kv_heads * D, 2H]
    midlayer.self_attn.o_proj.weight           [H, n_heads * D]
    midlayer.mlp.gate_proj.weight              [I, H]
    midlayer.mlp.up_proj.weight                [I, H]
    midlayer.mlp.down_proj.weight              [H, I]
    norm.weight                                [H]
    lm_head.weight                             [draft_vocab, H]
    d2t                                        int64 [draft_vocab]  target id = d + d2t[d]
    t2d                                        bool  [vocab]        target id is in the draft vocab
    embed_tokens.weight  (optional)            [vocab, H]           normally taken from the target
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from ..checkpoint import read_json
from .config import Eagle3Config, check_compatible
from .head import Eagle3Head

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
EMBED = "embed_tokens.weight"


def expected_shapes(cfg: Eagle3Config) -> Dict[str, Tuple[int, ...]]:
    H, I, D = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    shapes = {
        "fc.weight": (H, 3 * cfg.target_hidden_size),
        "midlayer.input_layernorm.weight": (H,),
        "midlayer.hidden_norm.weight": (H,),
        "midlayer.post_attention_layernorm.weight": (H,),
        "midlayer.self_attn.q_proj.weight": (nq * D, 2 * H),
        "midlayer.self_attn.k_proj.weight": (nkv * D, 2 * H),
        "midlayer.self_attn.v_proj.weight": (nkv * D, 2 * H),
        "midlayer.self_attn.o_proj.weight": (H, nq * D),
        "midlayer.mlp.gate_proj.weight": (I, H),
        "midlayer.mlp.up_proj.weight": (I, H),
        "midlayer.mlp.down_proj.weight": (H, I),
        "norm.weight": (H,),
        "lm_head.weight": (cfg.draft_vocab_size, H),
        "d2t": (cfg.draft_vocab_size,),
        "t2d": (cfg.vocab_size,),
    }
    return shapes


def save_head(head: Eagle3Head, path, include_embeddings: bool = False) -> Path:
    """Writes config.json and model.safetensors into `path` (created if needed)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = head.state_dict()
    names = list(expected_shapes(head.config)) + ([EMBED] if include_embeddings else [])
    tensors = {n: state[n].detach().to("cpu").contiguous() for n in names}
    tmp = path / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path / WEIGHTS)
    (path / CONFIG).write_text(json.dumps(head.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def read_config(path) -> Eagle3Config:
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a directory (an EAGLE-3 head is a directory with {CONFIG} and {WEIGHTS})")
    cfg_file = path / CONFIG
    if not cfg_file.is_file():
        raise ValueError(f"{path}: missing {CONFIG}")
    return Eagle3Config.from_dict(read_json(cfg_file, CONFIG), source=str(cfg_file))


def load_head(path, target_embeddings: Optional[torch.Tensor] = None, device="cpu",
              target_config=None) -> Eagle3Head:
    """Reads and validates a head directory. The embedding table comes from the file when it
    has one, else from `target_embeddings` (the target's input embeddings); without either the
    head loads but cannot run until head.set_embeddings(...). With `target_config`, also checks
    that the head fits that target (check_compatible)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_config(path)
    if target_config is not None:
        check_compatible(cfg, target_config)
    weights = path / WEIGHTS
    if not weights.is_file():
        hint = " (sharded and .bin heads are not supported)" if any(path.glob("*.bin")) or any(
            path.glob("*.index.json")) else ""
        raise ValueError(f"{path}: missing {WEIGHTS}{hint}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights}: unreadable safetensors file ({e})") from None

    shapes = expected_shapes(cfg)
    missing = [n for n in shapes if n not in tensors]
    if missing:
        raise ValueError(f"{weights}: missing tensors {missing}")
    unexpected = [n for n in tensors if n not in shapes and n != EMBED]
    if unexpected:
        raise ValueError(f"{weights}: unexpected tensors {unexpected}")
    if EMBED in tensors:
        shapes = dict(shapes, **{EMBED: (cfg.vocab_size, cfg.hidden_size)})
    for name, shape in shapes.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"{weights}: tensor {name} has shape {list(t.shape)}, expected {list(shape)} "
                             f"from {CONFIG}")
        if name == "t2d":
            if t.dtype != torch.bool:
                raise ValueError(f"{weights}: t2d must be bool, got {t.dtype}")
        elif name == "d2t":
            if t.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"{weights}: d2t must be int64, got {t.dtype}")
        elif not t.dtype.is_floating_point:
            raise ValueError(f"{weights}: tensor {name} must be floating point, got {t.dtype}")
    _check_vocab_map(tensors["d2t"].long(), tensors["t2d"], weights)

    head = Eagle3Head(cfg)
    state = {n: t for n, t in tensors.items() if n != EMBED}
    state = {n: (t.float() if t.dtype.is_floating_point else t.long() if n == "d2t" else t) for n, t in state.items()}
    head.load_state_dict(state, strict=False)  # embed_tokens handled below
    if EMBED in tensors:
        head.set_embeddings(tensors[EMBED].float())
    elif target_embeddings is not None:
        head.set_embeddings(target_embeddings.detach().float())
    return head.to(device).eval()


def _check_vocab_map(d2t: torch.Tensor, t2d: torch.Tensor, where) -> None:
    target_ids = torch.arange(d2t.numel()) + d2t
    if target_ids.numel() and (target_ids.min() < 0 or target_ids.max() >= t2d.numel()):
        raise ValueError(f"{where}: d2t maps draft ids outside the target vocabulary [0, {t2d.numel()})")
    if int(t2d.sum()) != d2t.numel() or not bool(t2d[target_ids].all()) or target_ids.unique().numel() != d2t.numel():
        raise ValueError(f"{where}: d2t and t2d disagree (t2d must mark exactly the {d2t.numel()} distinct "
                         f"target ids that d2t maps to)")


def warm_start(head: Eagle3Head, path) -> int:
    """Copies the weights of the head saved at `path` into `head` (a warm start, e.g. after its
    data grew and the draft vocabulary was rebuilt): every layer as is, and the lm_head rows of
    the target tokens both draft vocabularies hold, matched by target id (the other rows keep
    their initialization). The two heads must have the same shapes apart from the draft
    vocabulary, and read the same aux layers. Returns how many lm_head rows were copied."""
    src = load_head(path)
    have, want = src.config, head.config
    fields = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "target_hidden_size", "vocab_size", "aux_layer_ids")
    diff = [f"{f}: {getattr(have, f)} vs {getattr(want, f)}" for f in fields if getattr(have, f) != getattr(want, f)]
    if diff:
        raise ValueError(f"{path}: cannot warm-start from a head of another shape ({'; '.join(diff)})")
    src_state = src.state_dict()
    with torch.no_grad():
        for name, t in head.state_dict().items():
            if name not in ("lm_head.weight", "d2t", "t2d", EMBED):
                t.copy_(src_state[name])
        src_row = torch.full((want.vocab_size,), -1, dtype=torch.long)  # target id -> row in src's lm_head
        src_row[src.to_target_ids(torch.arange(have.draft_vocab_size))] = torch.arange(have.draft_vocab_size)
        rows = src_row[head.to_target_ids(torch.arange(want.draft_vocab_size))]
        hit = rows >= 0
        head.lm_head.weight[hit] = src.lm_head.weight[rows[hit]].to(head.lm_head.weight.dtype)
    return int(hit.sum())
