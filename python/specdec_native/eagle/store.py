"""What a training directory keeps between runs: OUT/data.pt (the sequences and the draft
vocabulary), OUT/features.pt, the target's features per sequence, stored as float16 and
found by the sequence's token ids, so a run whose data grew computes features only for the new
sequences, and while responses are being generated OUT/responses.jsonl, so a data run stopped
part-way resumes where it was."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

FEATURES_FORMAT = 2  # 1 (no "format" key): a list aligned with the data's train + heldout order


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def backend_of(data: Dict) -> str:
    """The data backend a data.pt was made with (one from before the engine backend: transformers)."""
    return data.get("data_backend", "transformers")


def prompt_of(seq: Dict) -> tuple:
    """A sequence's prompt ids, as a dict key."""
    return tuple(seq["ids"][:seq["prompt_len"]])


def sequence_key(seq: Dict) -> str:
    """The id a sequence's features are stored under: a digest of its token ids and prompt length."""
    h = hashlib.sha1(str(int(seq["prompt_len"])).encode())
    h.update(torch.tensor(seq["ids"], dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def _half(f: Dict) -> Dict:
    return {"aux": f["aux"].half(), "final": f["final"].half(), "argmax": f["argmax"]}


def _part_paths(out: Path) -> List[Path]:
    return sorted(Path(out).glob("features.part-*.pt"))


def _features_file(backend: str, aux_ids: Sequence[int], feats: Dict[str, Dict]) -> Dict:
    """What features.pt and each part file hold (format 2)."""
    return {"format": FEATURES_FORMAT, "backend": backend, "aux_layers": list(aux_ids), "feats": feats}


def _made_with(cached: Dict, backend: str, aux_ids: Sequence[int]) -> bool:
    return cached["backend"] == backend and cached["aux_layers"] == list(aux_ids)


def load_features(out: Path, backend: str, aux_ids: Sequence[int], sequences: Sequence[Dict]) -> Dict[str, Dict]:
    """{sequence_key: features (float16 aux/final)} of OUT/features.pt and of the part files a
    run not yet finished appended (append_features), those made with this backend and these aux
    layers. A format-1 features.pt counts only when it was made for exactly `sequences` (same
    order and lengths)."""
    path, feats = Path(out) / "features.pt", {}
    if path.exists():
        cached = torch.load(path, weights_only=False)
        if cached.get("format") == FEATURES_FORMAT:
            if _made_with(cached, backend, aux_ids):
                feats = cached["feats"]
        elif cached.get("key", {}) == {"backend": backend, "aux_layers": list(aux_ids),
                                       "lengths": [len(s["ids"]) for s in sequences]}:
            feats = {sequence_key(s): _half(f) for s, f in zip(sequences, cached["feats"])}
    for part in _part_paths(out):
        cached = torch.load(part, weights_only=False)
        if _made_with(cached, backend, aux_ids):
            feats.update(cached["feats"])
    return feats


def append_features(out: Path, backend: str, aux_ids: Sequence[int], new: Dict[str, Dict]) -> Dict[str, Dict]:
    """Writes `new` features alone as the next OUT/features.part-NNNNN.pt (as cheap however much
    is stored already); returns them as stored (float16). consolidate_features folds the parts
    into features.pt once a run has them all."""
    new = {k: _half(f) for k, f in new.items()}
    parts = _part_paths(out)
    n = int(parts[-1].stem.rsplit("-", 1)[1]) + 1 if parts else 0
    save_atomic(_features_file(backend, aux_ids, new), Path(out) / f"features.part-{n:05d}.pt")
    return new


def consolidate_features(out: Path, backend: str, aux_ids: Sequence[int], feats: Dict[str, Dict]) -> None:
    """Rewrites OUT/features.pt with `feats` (what load_features found, and more) and removes the
    part files, when there are any."""
    parts = _part_paths(out)
    if parts:
        save_features(out, backend, aux_ids, feats)
        for part in parts:
            part.unlink()


def save_features(out: Path, backend: str, aux_ids: Sequence[int], feats: Dict[str, Dict]) -> Dict[str, Dict]:
    """Writes OUT/features.pt; returns the features as stored (float16)."""
    feats = {k: _half(f) for k, f in feats.items()}
    save_atomic(_features_file(backend, aux_ids, feats), Path(out) / "features.pt")
    return feats


def upgrade_features(out: Path, sequences: Sequence[Dict]) -> None:
    """Rewrites a format-1 OUT/features.pt made for `sequences` in format 2 (found by ids, not
    by order); anything else is left alone."""
    path = Path(out) / "features.pt"
    if not path.exists():
        return
    cached = torch.load(path, weights_only=False)
    key = cached.get("key")
    if cached.get("format") is None and key and key.get("lengths") == [len(s["ids"]) for s in sequences]:
        save_features(out, key["backend"], key["aux_layers"],
                      {sequence_key(s): f for s, f in zip(sequences, cached["feats"])})


def missing(sequences: Sequence[Dict], feats: Dict[str, Dict]) -> List[Dict]:
    return [s for s in sequences if sequence_key(s) not in feats]


class FeatureSink:
    """Collects features as they are made (sink(sequence, features)) and appends them to OUT
    (append_features) every `every` sequences and at flush(): a stopped run loses at most the
    last `every`, and memory holds no more than that."""

    def __init__(self, out: Path, backend: str, aux_ids: Sequence[int], every: int):
        self.out, self.backend, self.aux_ids, self.every = Path(out), backend, list(aux_ids), every
        self.pending: Dict[str, Dict] = {}

    def __call__(self, seq: Dict, features: Dict) -> None:
        self.pending[sequence_key(seq)] = _half(features)
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            append_features(self.out, self.backend, self.aux_ids, self.pending)
            self.pending = {}


class ResponseJournal:
    """OUT/responses.jsonl: every response the moment the target has finished it, one JSON line
    each after a first line naming the settings it was made with (target, backend, response
    length), so a data run stopped part-way (a session end, Ctrl-C) resumes without generating
    them again. A journal made with other settings is dropped; a line cut short by the stop is
    skipped. discard(OUT) removes it once data.pt holds the sequences."""

    NAME = "responses.jsonl"

    def __init__(self, out: Path, settings: Dict):
        self.path = Path(out) / self.NAME
        self.done: Dict[tuple, Dict] = {}
        header = json.dumps({"settings": settings}, sort_keys=True)
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            if lines and lines[0] == header:
                for line in lines[1:]:
                    seq = _json_or_none(line)
                    if seq is not None:
                        self.done[prompt_of(seq)] = seq
        with open(self.path, "w") as f:  # rewritten: no torn last line to append to
            f.write(header + "\n")
            f.writelines(_seq_line(s) for s in self.done.values())
        self._file = open(self.path, "a")

    def get(self, prompt: Sequence[int]) -> Optional[Dict]:
        return self.done.get(tuple(prompt))

    def append(self, seq: Dict) -> None:
        self._file.write(_seq_line(seq))
        self._file.flush()
        self.done[prompt_of(seq)] = seq

    def close(self) -> None:
        self._file.close()

    @classmethod
    def discard(cls, out: Path) -> None:
        (Path(out) / cls.NAME).unlink(missing_ok=True)


def _seq_line(seq: Dict) -> str:
    return json.dumps({"ids": [int(t) for t in seq["ids"]], "prompt_len": int(seq["prompt_len"])}) + "\n"


def _json_or_none(line: str) -> Optional[Dict]:
    try:
        seq = json.loads(line)
    except json.JSONDecodeError:
        return None
    return seq if isinstance(seq, dict) and {"ids", "prompt_len"} <= seq.keys() else None
