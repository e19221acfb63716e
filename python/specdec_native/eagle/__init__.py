"""EAGLE-3 draft heads (feature-level drafting): the torch head, its published on-disk format,
and a self-distillation trainer.

    from specdec_native.eagle import load_head, check_compatible
    head = load_head("path/to/head", target_embeddings=target.get_input_embeddings().weight)

    python -m specdec_native.eagle.train --target MODEL --out HEAD_DIR --steps 300

Names resolve on first use, so `import specdec_native.eagle` does not import torch."""
from importlib import import_module

_LAZY = {
    "Eagle3Config": "config",
    "check_compatible": "config",
    "default_aux_layer_ids": "config",
    "config_from_target": "config",
    "Eagle3Head": "head",
    "save_head": "checkpoint",
    "load_head": "checkpoint",
    "read_config": "checkpoint",
    "train_draft": "train",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'specdec_native.eagle' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
