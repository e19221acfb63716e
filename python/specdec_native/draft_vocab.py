"""A draft model's reduced vocabulary (FR-Spec, Zhao et al. 2025): the draft's LM head keeps
only the target tokens that occur most, so each drafted token reads a fraction of the head
(Qwen2.5-0.5B: its 151,936-row head is 136M of its 494M weights). Drafts stay inside the set;
verification is unchanged, so the output stays lossless.

SpeculativeConfig(draft_vocab=...) takes a list of token ids, a JSON file holding one, or an
EAGLE-3 head directory (its t2d: the draft vocabulary its trainer chose from the target's own
responses). most_frequent() builds one from token sequences (e.g. the target's outputs);
from_texts() from text in the kind the draft will write (`specdec draft-vocab` on the command
line: by default the Python standard library's sources, a set for code completion)."""
from __future__ import annotations

from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Iterable, List, NamedTuple, Sequence, Union

import numpy as np

from .checkpoint import read_json

DraftVocab = Union[Sequence[int], np.ndarray, str, Path]


def most_frequent(sequences: Iterable[Sequence[int]], size: int, always: Sequence[int] = ()) -> List[int]:
    """The `size` most frequent ids of `sequences` (ties: lower id first), plus `always` (e.g.
    the end-of-sequence ids), sorted."""
    return _top(Counter(int(t) for seq in sequences for t in seq), size, always)


def _top(counts: Counter, size: int, always: Sequence[int]) -> List[int]:
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    ranked = sorted(counts, key=lambda t: (-counts[t], t))[:size]
    return sorted(set(ranked) | {int(t) for t in always})


class TextVocab(NamedTuple):
    ids: List[int]
    tokens_counted: int
    distinct: int  # distinct ids among them
    coverage: float  # the fraction of the counted tokens that are in ids


def from_texts(texts: Iterable[str], tokenizer, size: int, always: Sequence[int] = (),
               batch: int = 256) -> TextVocab:
    """The `size` most frequent token ids of `texts` under `tokenizer` (a specdec_native
    Tokenizer), plus `always`, and how much of the text they cover."""
    counts: Counter = Counter()
    texts = iter(texts)
    while chunk := list(islice(texts, batch)):
        counts.update(t for ids in tokenizer.encode_batch(chunk) for t in ids)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("the texts hold no tokens: nothing to count a draft vocabulary from")
    ids = _top(counts, size, always)
    return TextVocab(ids, total, len(counts), sum(counts[t] for t in ids) / total)


def resolve(spec: DraftVocab, vocab_size: int) -> List[int]:
    """The sorted, distinct token ids `spec` names; ValueError with what was expected otherwise."""
    if isinstance(spec, (str, Path)):
        ids = _from_path(Path(spec))
    else:
        ids = np.asarray(spec)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"draft_vocab must be a list of token ids, a JSON file of one or an EAGLE-3 "
                             f"head directory; got {type(spec).__name__} of shape {ids.shape}, dtype {ids.dtype}")
        ids = ids.tolist()
    if not ids:
        raise ValueError("draft_vocab is empty")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"draft_vocab token id {bad[0]} is out of range [0, {vocab_size})")
    if len(set(ids)) != len(ids):
        raise ValueError("draft_vocab lists a token id twice")
    return sorted(ids)


def _from_path(path: Path) -> List[int]:
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise ValueError(f"draft_vocab {path}: a directory must be an EAGLE-3 head (model.safetensors with t2d)")
        from safetensors import safe_open

        with safe_open(str(weights), framework="numpy") as f:
            if "t2d" not in f.keys():
                raise ValueError(f"draft_vocab {weights}: no t2d tensor (not an EAGLE-3 head with a draft vocabulary)")
            return np.flatnonzero(f.get_tensor("t2d")).tolist()
    if not path.is_file():
        raise ValueError(f"draft_vocab {path}: no such file or directory")
    ids = read_json(path, "draft_vocab")
    if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise ValueError(f"draft_vocab {path}: expected a JSON list of integer token ids")
    return ids
