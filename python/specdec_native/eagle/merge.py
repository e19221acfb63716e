"""--merge-data: fold the training sequences of other training directories (made for the same
target with the same data backend, e.g. one run of chat responses and one of teacher-forced
code) into OUT, with the target features they already hold, so one head trains on all of them."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from . import store as S


def _training_data(d: Path) -> Dict:
    """Training directory d's data.pt; a clear error when it has none."""
    path = d / "data.pt"
    if not path.is_file():
        raise ValueError(f"--merge-data {d}: no data.pt there (prepare it with --prepare-only first)")
    return torch.load(path, weights_only=False)


def merge_training_dirs(out: Path, data: Dict, dirs: Sequence, aux_ids: Sequence[int],
                        log: Callable) -> Tuple[List[Dict], Dict[str, Dict]]:
    """(the training sequences of `dirs` that OUT's data does not hold yet, in order; the
    features `dirs` hold for them, made with these aux layers, by sequence_key), so only the
    others need the target again. A sequence whose prompt is one of OUT's held-out
    prompts is left out: the held-out estimate stays held out. Held-out sequences of `dirs`
    are not trained on."""
    backend = S.backend_of(data)
    have = {S.sequence_key(s) for s in data["train"] + data["heldout"]}
    held_prompts = {S.prompt_of(s) for s in data["heldout"]}
    added: List[Dict] = []
    found: Dict[str, Dict] = {}
    for d in dirs:
        d = Path(d)
        if d.resolve() == Path(out).resolve():
            raise ValueError(f"--merge-data {d} is OUT itself")
        other = _training_data(d)
        if other.get("target") != data["target"]:
            raise ValueError(f"--merge-data {d} holds data for target {other.get('target')!r}, not "
                             f"{data['target']!r}")
        made_by = S.backend_of(other)
        if made_by != backend:
            raise ValueError(f"--merge-data {d} holds data made with the {made_by} data backend, not the "
                             f"{backend} one (responses and features must come from the same target weights)")
        fresh: Dict[str, Dict] = {}  # by sequence_key, in order
        held_back = 0
        for s in other["train"]:
            key = S.sequence_key(s)
            if key in have:
                continue
            if S.prompt_of(s) in held_prompts:
                held_back += 1
                continue
            have.add(key)
            fresh[key] = s
        feats = S.load_features(d, backend, aux_ids, other["train"] + other["heldout"])
        with_feats = {key: feats[key] for key in fresh if key in feats}
        found.update(with_feats)
        log(f"merging {len(fresh)} training sequences from {d} ({len(with_feats)} with their features"
            + (f"; {held_back} left out: their prompts are held out here" if held_back else "") + ")")
        added += fresh.values()
    return added, found


def start_from(out: Path, first: Path, aux_ids: Sequence[int], log: Callable) -> None:
    """Starts an empty OUT as a copy of training directory `first`: its data.pt (held-out
    sequences included) and its stored features."""
    first = Path(first)
    data = _training_data(first)
    backend = S.backend_of(data)
    feats = S.load_features(first, backend, aux_ids, data["train"] + data["heldout"])
    Path(out).mkdir(parents=True, exist_ok=True)
    if feats:
        S.save_features(out, backend, aux_ids, feats)
    S.save_atomic(data, Path(out) / "data.pt")
    log(f"started {out} from {first}: {len(data['train'])} training and {len(data['heldout'])} held-out "
        f"sequences, {len(feats)} with their features")
