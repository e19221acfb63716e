"""Trains an EAGLE-3 head for a target by self-distillation (SpecForge's online recipe, small):

  1. prompts (standard-library docstrings and code by default, or --prompts JSONL);
  2. the target answers each greedily (--max-new-tokens); some prompts are held out. Responses
     and features come from the C++ engine (--data-backend engine, default: int4 weights, what
     serves the head, about 10x faster on CPU) or from transformers in float32;
  3. the draft vocabulary: the most frequent response tokens (d2t / t2d);
  4. the target's features: aux hidden states of 3 layers, and its logits as soft labels;
  5. training-time test over --ttt-steps: step j feeds the head's own hidden states of step
     j - 1; loss_j = cross-entropy of the head's draft-vocabulary distribution against the
     target's next-token distribution restricted to the draft vocabulary, at response positions
     whose target argmax is in the draft vocabulary; loss = sum_j 0.8^j loss_j. AdamW, linear
     warmup then cosine decay, gradient clipping;
  6. OUT/checkpoint.pt every --save-every steps (re-running with the same OUT resumes, reusing
     OUT/data.pt), the head (config.json + model.safetensors) in OUT, and a held-out estimate:
     the mean accepted length of greedy chains of k drafts against the target's greedy tokens.

    python -m specdec_native.eagle.train --target MODEL_DIR_OR.gguf --out HEAD_DIR --steps 300
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data as D
from . import merge as M
from . import store as S
from .checkpoint import save_head, warm_start
from .config import config_from_target, resolve_aux_layer_ids
from .head import Eagle3Head
from .target import load_target

STEP_WEIGHT = 0.8  # SpecForge's per-step loss decay
DATA_BACKENDS = ("engine", "transformers")
PRECISIONS = ("auto", "bfloat16", "float32")


def native_bfloat16(device: str) -> bool:
    """Whether `device` multiplies bfloat16 natively (CPU: AVX512-BF16 or AMX; CUDA: sm_80+)."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(bool(getattr(cpu, probe, lambda: False)()) for probe in
               ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def training_precision(precision: str, device: str) -> str:
    """The precision of the head's matmuls: bfloat16 autocast over float32 master weights
    (optimizer state, loss and soft labels stay float32), or float32. "auto": bfloat16 where the
    device has it natively (2-3x faster steps on an AMX CPU), else float32 (emulated bfloat16
    would be slower)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


class _EngineTarget:
    """The target in the C++ engine (specdec_native.LLM), made on first use: its context is
    sized for the longest sequence it will see."""

    def __init__(self, target: str, dtype: str, threads: Optional[int], max_num_seqs: int, progress: bool):
        self.target, self.dtype, self.threads, self.max_num_seqs, self.progress = \
            target, dtype, threads, max_num_seqs, progress
        self.llm = None
        # a D.Recording (its sink an S.FeatureSink): record the features while generating responses
        self.record = None

    def get(self, needed_len: int):
        """The LLM, with a context of at least needed_len tokens (or the checkpoint's limit)."""
        if self.llm is None:
            from .. import checkpoint as ckpt_mod
            from ..llm import LLM

            try:
                limit = ckpt_mod.load(ckpt_mod.resolve(self.target, progress=self.progress)).max_model_len
                self.llm = LLM(self.target, dtype=self.dtype, max_model_len=max(2, min(limit, needed_len)),
                               max_num_seqs=self.max_num_seqs, num_threads=self.threads, progress=self.progress)
            except FileNotFoundError:
                raise
            except (ValueError, NotImplementedError, KeyError, RuntimeError) as e:
                raise ValueError(f"the engine cannot load {self.target} ({e}); use --data-backend transformers"
                                 ) from None
        return self.llm

    def close(self):
        self.llm = None


# --- batches and loss ------------------------------------------------------------------------
def _shift_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """x[:, n:] zero-padded back to length (any trailing dims)."""
    if n == 0:
        return x
    pad = x.new_zeros((x.shape[0], min(n, x.shape[1])) + tuple(x.shape[2:]))
    return torch.cat((x[:, n:], pad), dim=1)


def collate(seqs: Sequence[Dict], feats: Sequence[Dict], device, train_on_prompt: bool = False) -> Dict:
    """Right-padded batch. mask[b, j] = 1 where the target's distribution at position j is a
    label: response positions (j >= prompt_len - 1), and with train_on_prompt also the prompt
    rows whose features carry the target's greedy token (argmax >= 0: data prepared with
    --train-on-prompt; other data, merged in, labels its responses only); none past the
    sequence's features (one row short of it when they were recorded and it ends in EOS)."""
    B, T = len(seqs), max(len(s["ids"]) for s in seqs)
    H3, H = feats[0]["aux"].shape[-1], feats[0]["final"].shape[-1]
    b = {"ids": torch.zeros(B, T, dtype=torch.long), "aux": torch.zeros(B, T, H3), "final": torch.zeros(B, T, H),
         "argmax": torch.zeros(B, T, dtype=torch.long), "mask": torch.zeros(B, T)}
    for r, (s, f) in enumerate(zip(seqs, feats)):
        n = len(s["ids"])
        b["ids"][r, :n] = torch.tensor(s["ids"])
        nf = f["aux"].shape[0]  # features recorded while generating end one row short after an EOS
        b["aux"][r, :nf], b["final"][r, :nf], b["argmax"][r, :nf] = f["aux"], f["final"], f["argmax"]
        start = max(s["prompt_len"] - 1, 0)
        b["mask"][r, start:nf] = 1.0
        if train_on_prompt:
            b["mask"][r, :min(start, nf)] = (f["argmax"][:min(start, nf)] >= 0).float()
    return {k: v.to(device) for k, v in b.items()}


def _labels_prompt(seq: Dict, feats: Dict) -> bool:
    """Whether the features hold the target's greedy tokens on the sequence's prompt rows."""
    P = max(seq["prompt_len"] - 1, 0)
    return P > 0 and bool((feats["argmax"][:P] >= 0).all())


def ttt_loss(head: Eagle3Head, batch: Dict, steps: int, label_weight: torch.Tensor,
             label_bias: Optional[torch.Tensor] = None):
    """(total loss, [loss_j], [acc_j]) of a training-time-test unroll. label_weight/bias: the
    target's lm_head rows of the draft vocabulary (the soft labels are computed on the fly from
    the target's final hidden states). acc_j: share of label positions where the head's argmax
    is the target's greedy token."""
    # rows before the first labelled one only give context (keys and values) to the others
    labelled = batch["mask"].any(0).nonzero()
    first = max(int(labelled[0]) - 1, 0) if len(labelled) else 0
    hiddens = head.unroll(batch["aux"], batch["ids"], steps, first_row=first)
    total, losses, accs = 0.0, [], []
    for j, h in enumerate(hiddens):
        # row t at step j is labelled by position t + 1 + j
        m = _shift_rows(batch["mask"], 1 + j)[:, first:] > 0
        n = m.sum().clamp(min=1)
        with torch.no_grad():
            pm = head.t2d[_shift_rows(batch["argmax"], 1 + j)[:, first:][m]].float()
            final = _shift_rows(batch["final"], 1 + j)[:, first:][m]
            p = torch.softmax(F.linear(final, label_weight, label_bias).float(), -1)
        logits = head.logits(h[m]).float()
        loss = -(pm * (p * torch.log_softmax(logits, -1)).sum(-1)).sum() / n
        total = total + STEP_WEIGHT ** j * loss
        losses.append(loss.item())
        with torch.no_grad():
            accs.append(float((pm * (logits.argmax(-1) == p.argmax(-1)).float()).sum() / n))
    return total, losses, accs


@torch.no_grad()
def accepted_lengths(head: Eagle3Head, seqs: Sequence[Dict], feats: Sequence[Dict], k: int, device="cpu") -> Dict:
    """Greedy chain drafting of k tokens from every response anchor of each (held-out)
    sequence, against the target's greedy tokens (the sequence itself). With teacher forcing the
    tokens fed to draft step j are the true ones, which equal the head's own drafts exactly as
    long as the chain is still being accepted, so this equals autoregressive drafting.
    mean_accepted_length = 1 + mean accepted drafts (the target's bonus token included)."""
    head.eval()
    accepted, per_pos = [], torch.zeros(k)
    for s, f in zip(seqs, feats):
        ids = torch.tensor([s["ids"]], device=device)
        T, P = ids.shape[1], s["prompt_len"]
        first, last = max(P - 1, 0), T - 2 - k  # anchor t drafts x_{t+2} .. x_{t+1+k}
        if last < first:
            continue
        aux = f["aux"][None].to(device).float()
        if aux.shape[1] < T:  # the row after an EOS (never an anchor's context)
            aux = torch.cat([aux, aux.new_zeros(1, T - aux.shape[1], aux.shape[2])], dim=1)
        hs = head.unroll(aux, ids, k, first_row=first)
        anchors = torch.arange(first, last + 1, device=device)
        match = torch.stack([head.to_target_ids(head.logits(hs[j][0, anchors - first]).argmax(-1))
                             == ids[0, anchors + 2 + j]
                             for j in range(k)], dim=1)
        run = match.long().cumprod(dim=1)
        accepted.append(run.sum(1).cpu())
        per_pos += run.sum(0).cpu().float()
    if not accepted:
        return {"anchors": 0, "k": k, "mean_accepted_length": float("nan")}
    acc = torch.cat(accepted).float()
    return {"anchors": int(acc.numel()), "k": k, "mean_accepted_length": 1.0 + float(acc.mean()),
            "reach_rate": [round(float(x), 4) for x in per_pos / acc.numel()]}


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- the run -------------------------------------------------------------------------------
def _backend_name(data_backend: str, engine_dtype: str) -> str:
    return f"engine ({engine_dtype})" if data_backend == "engine" else data_backend


FEATURE_CHUNK = 64  # sequences whose features are made between two appends to OUT (store.append_features)


PromptSource = Callable[[int], Sequence[D.Prompt]]  # at least `limit` prompts where it has them


def _prompt_source(prompts, prompts_file, prompt_sources, seed: int,
                   prompt_kinds: Sequence[str] = D.DEFAULT_PROMPT_KINDS) -> PromptSource:
    """Where the prompts come from: given, a JSONL file, Python source trees, or the standard library."""
    if prompt_sources and (prompts is not None or prompts_file is not None):
        raise ValueError("give prompts, a prompts file or prompt sources, not several")
    if prompts is not None:
        return lambda limit: prompts
    if prompts_file is not None:
        return lambda limit: D.jsonl_prompts(prompts_file)
    prompt_kinds = D.checked_prompt_kinds(prompt_kinds)  # bad kinds fail before any model is loaded
    return lambda limit: D.code_prompts(limit, prompt_sources or None, seed=seed, kinds=prompt_kinds)


def _prompt_ids(tokenizer, vocab: int, source: PromptSource, limit: int, max_prompt_tokens: int,
                seed: int) -> List[List[int]]:
    """Up to `limit` encoded prompts from `source`, shuffled."""
    prompts = list(source(limit))
    random.Random(seed).shuffle(prompts)
    return D.encode_prompts(prompts[:limit], tokenizer, vocab, max_prompt_tokens)


def _responses(out: Path, journal_settings: Dict, encoded: List[List[int]], model, max_new_tokens: int,
               gen_batch_size: int, device, progress: bool, data_backend: str, engine: Optional[_EngineTarget],
               log: Callable, deadline: Optional[float] = None, first: int = 0) -> List[Dict]:
    """The target's responses to `encoded` (in its order; prompts it answers with nothing are
    dropped), those a stopped run already made taken from OUT's ResponseJournal. The first
    `first` prompts (the held-out ones) are answered before the others and whatever the
    deadline (a time.monotonic() after which no more of the others are started)."""
    journal = S.ResponseJournal(out, journal_settings)
    held = [p for p in encoded[:first] if journal.get(p) is None]
    rest = [p for p in encoded[first:] if journal.get(p) is None]
    todo = held + rest
    if len(todo) < len(encoded):
        log(f"resuming: {len(encoded) - len(todo)} of {len(encoded)} responses were generated before "
            f"({journal.path})")
    try:
        if todo and data_backend == "engine":
            # + 1: the context's one spare token; + 1: the token recording generates past max_new_tokens
            llm = engine.get(max(len(p) for p in todo) + max_new_tokens + 2)
            generate = functools.partial(D.engine_responses, llm, max_new_tokens=max_new_tokens,
                                         eos=D.eos_ids(model), chunk=max(64, 4 * engine.max_num_seqs),
                                         progress=progress, record=engine.record, on_sequence=journal.append)
        else:
            generate = functools.partial(D.generate_responses, model, max_new_tokens=max_new_tokens,
                                         batch_size=gen_batch_size, device=device, progress=progress,
                                         on_sequence=journal.append)
        for part, until in ((held, None), (rest, deadline)):
            if part:
                generate(part, deadline=until)
        if todo and engine is not None and engine.record is not None:
            made = sum(journal.get(p) is not None for p in todo)
            log(f"recorded the target features of {made} sequences while generating")
    finally:  # also when stopped: what was made so far stays on disk
        journal.close()
        if engine is not None and engine.record is not None:
            engine.record.sink.flush()
    answered = [journal.get(p) for p in encoded]
    if None in answered[first:] and D.past(deadline):
        log(f"data time limit reached: {sum(s is None for s in answered)} of {len(encoded)} prompts got no "
            f"response (--extend-data adds more later)")
    return [s for s in answered if s is not None]


def _journal_settings(target: str, backend: str, max_new_tokens: int, model) -> Dict:
    """What a response depends on besides its prompt: a journal made with other settings (another
    target, backend, length or end-of-generation tokens) is not resumed from."""
    return {"target": target, "backend": backend, "max_new_tokens": max_new_tokens, "eos": D.eos_ids(model)}


def _with_vocab(data: Dict, vocab: int, draft_vocab_size: int, label_prompts: bool = False) -> float:
    """Sets data's draft vocabulary (d2t, t2d) from its training responses (and prompts, when
    they are labels too); returns the coverage."""
    data["d2t"], data["t2d"], covered = D.vocab_map(data["train"], vocab, draft_vocab_size,
                                                     include_prompt=label_prompts)
    data["draft_vocab_coverage"] = covered
    return covered


def _extend_data(out: Path, data: Dict, model, tokenizer, source: PromptSource, wanted: int,
                 max_new_tokens: int, max_prompt_tokens: int, seed: int, gen_batch_size: int, device,
                 progress: bool, log: Callable, data_backend: str, engine: Optional[_EngineTarget],
                 deadline: Optional[float] = None, label_prompts: bool = False) -> Dict:
    """Adds training sequences to OUT's data until it holds `wanted` (train + held out): prompts
    it does not have yet, their responses; the held-out ones stay. The draft vocabulary is
    rebuilt from all training responses, so no head may have been trained on the old one yet."""
    have = data["train"] + data["heldout"]
    if len(have) >= wanted:
        log(f"{out / 'data.pt'} already holds {len(have)} sequences (>= {wanted}); nothing to add")
        return data
    if (out / "checkpoint.pt").exists():
        raise ValueError(f"{out} has a training checkpoint, trained on the current draft vocabulary, which "
                         f"adding data rebuilds; add data in a new --out (copy data.pt and features*.pt there)")
    S.upgrade_features(out, have)  # a format-1 features.pt is found by order, which adding changes
    known = {S.prompt_of(s) for s in have}
    fresh = [p for p in _prompt_ids(tokenizer, model.config.vocab_size, source, wanted + len(have),
                                    max_prompt_tokens, seed) if tuple(p) not in known]
    fresh = fresh[:wanted - len(have)]
    if not fresh:
        raise ValueError(f"no prompts beyond the {len(have)} that {out / 'data.pt'} already holds")
    t0 = time.time()
    settings = _journal_settings(data["target"], S.backend_of(data), max_new_tokens, model)
    seqs = _responses(out, settings, fresh, model, max_new_tokens, gen_batch_size, device, progress,
                      data_backend, engine, log, deadline)
    data["train"] = data["train"] + seqs
    covered = _with_vocab(data, model.config.vocab_size, int(data["t2d"].sum()), label_prompts)
    data["generation_seconds"] = round(data.get("generation_seconds", 0.0) + time.time() - t0, 1)
    n_tok = sum(len(s["ids"]) - s["prompt_len"] for s in seqs)
    log(f"added {len(seqs)} training sequences ({n_tok} response tokens) in {time.time() - t0:.0f}s; now "
        f"{len(data['train'])} training and {len(data['heldout'])} held out; draft vocab covers {covered:.1%}")
    S.save_atomic(data, out / "data.pt")
    S.ResponseJournal.discard(out)
    return data


def _merge_data(out: Path, data: Dict, dirs: Sequence, aux_ids: Sequence[int], vocab: int,
                label_prompts: bool, log: Callable) -> Dict:
    """OUT's data with the training sequences of the training directories `dirs` added (see
    merge.merge_training_dirs) and the draft vocabulary rebuilt; unchanged when they add nothing."""
    added, feats = M.merge_training_dirs(out, data, dirs, aux_ids, log)
    if not added:
        return data
    if (out / "checkpoint.pt").exists():
        raise ValueError(f"{out} has a training checkpoint, trained on the current draft vocabulary, which "
                         f"merging data rebuilds; merge into a new --out")
    if feats:
        S.append_features(out, S.backend_of(data), aux_ids, feats)
    data["train"] = data["train"] + added
    data["merged_from"] = data.get("merged_from", []) + [str(Path(d).resolve()) for d in dirs]
    covered = _with_vocab(data, vocab, int(data["t2d"].sum()), label_prompts)
    log(f"now {len(data['train'])} training and {len(data['heldout'])} held-out sequences; draft vocab "
        f"covers {covered:.1%}")
    S.save_atomic(data, out / "data.pt")
    return data


def _prepare_data(out: Path, target: str, model, tokenizer, source: PromptSource, max_prompts: int,
                  eval_prompts: int, max_new_tokens: int, max_prompt_tokens: int, draft_vocab_size: Optional[int],
                  seed: int, gen_batch_size: int, device, progress: bool, log: Callable,
                  data_backend: str = "transformers", engine: Optional[_EngineTarget] = None,
                  engine_dtype: str = "int4", extend: bool = False, deadline: Optional[float] = None,
                  label_prompts: bool = False) -> Dict:
    path = out / "data.pt"
    vocab = model.config.vocab_size
    backend = _backend_name(data_backend, engine_dtype)
    if path.exists():
        data = torch.load(path, weights_only=False)
        if data["target"] != target:
            raise ValueError(f"{out} holds a run for target {data['target']!r}, not {target!r}; use another --out")
        made_by = S.backend_of(data)
        if made_by != backend:
            raise ValueError(f"{out} holds data made with the {made_by} data backend, not the {backend} one "
                             f"(responses and features must come from the same target weights); use another "
                             f"--out, or the backend it was made with")
        if draft_vocab_size is not None and draft_vocab_size != int(data["t2d"].sum()):
            raise ValueError(f"{out} was started with draft_vocab_size={int(data['t2d'].sum())}, "
                             f"not {draft_vocab_size}; use another --out")
        if extend:
            return _extend_data(out, data, model, tokenizer, source, max_prompts + eval_prompts,
                                max_new_tokens, max_prompt_tokens, seed, gen_batch_size, device, progress, log,
                                data_backend, engine, deadline, label_prompts)
        log(f"reusing {path}: {len(data['train'])} training and {len(data['heldout'])} held-out sequences")
        return data
    encoded = _prompt_ids(tokenizer, vocab, source, max_prompts + eval_prompts, max_prompt_tokens, seed)
    if len(encoded) <= eval_prompts:
        raise ValueError(f"need more than {eval_prompts} usable prompts (<= {max_prompt_tokens} tokens), "
                         f"got {len(encoded)}")
    t0 = time.time()
    seqs = _responses(out, _journal_settings(target, backend, max_new_tokens, model), encoded, model, max_new_tokens,
                      gen_batch_size, device, progress, data_backend, engine, log, deadline, first=eval_prompts)
    heldout, train = seqs[:eval_prompts], seqs[eval_prompts:]
    if not train:
        raise ValueError("the target gave no responses to train on")
    data = {"target": target, "train": train, "heldout": heldout, "data_backend": backend}
    dvs = min(vocab, 32000) if draft_vocab_size is None else draft_vocab_size
    covered = _with_vocab(data, vocab, dvs, label_prompts)
    n_tok = sum(len(s["ids"]) - s["prompt_len"] for s in seqs)
    log(f"generated {n_tok} response tokens for {len(seqs)} prompts in {time.time() - t0:.0f}s ({backend}); "
        f"draft vocab {dvs} covers {covered:.1%} of the trained tokens")
    data["generation_seconds"] = round(time.time() - t0, 1)
    S.save_atomic(data, path)
    S.ResponseJournal.discard(out)
    return data


def train_draft(target, out, steps: int = 200, device: str = "cpu", *, prompts=None, prompts_file=None,
                max_prompts: int = 64, eval_prompts: int = 8, max_new_tokens: int = 64,
                max_prompt_tokens: int = 384, ttt_steps: int = 4, draft_vocab_size: Optional[int] = None,
                lr: float = 1e-3, batch_size: int = 4, max_grad_norm: float = 0.5, warmup_steps: Optional[int] = None,
                eval_k: int = 5, aux_layer_ids: Optional[Sequence[int]] = None, train_on_prompt: bool = False,
                seed: int = 0, save_every: int = 50, gen_batch_size: Optional[int] = None, progress: bool = True,
                log: Callable = print, data_backend: str = "engine", engine_dtype: str = "int4",
                threads: Optional[int] = None, prepare_only: bool = False,
                head_intermediate_size: Optional[int] = None, extend_data: bool = False,
                prompt_sources: Optional[Sequence[str]] = None, init_from=None, precision: str = "auto",
                record_features: bool = True, prompt_kinds: Sequence[str] = D.DEFAULT_PROMPT_KINDS,
                max_data_minutes: Optional[float] = None, merge_data: Sequence = ()) -> Dict:
    """Trains (or resumes training of) an EAGLE-3 head for `target` into directory `out`; returns
    the run's metrics (also written to OUT/metrics.json).

    data_backend: "engine" (responses and features from the C++ engine on `engine_dtype`
    weights, `threads` threads, `gen_batch_size` sequences decoded together, default 16) or
    "transformers" (the target in float32 torch, batches of `gen_batch_size`, default 8).
    prepare_only: stop once OUT/data.pt (prompts, responses, draft vocabulary) is written.
    extend_data: add prompts to an existing OUT/data.pt up to max_prompts + eval_prompts
    sequences (responses and, later, features only for the new ones; the draft vocabulary is
    rebuilt, so OUT must not hold a checkpoint yet).
    init_from: a head directory whose weights start a new run (warm_start); a resumed run ignores it.
    precision: of the training matmuls (training_precision); the held-out estimate runs in float32.
    record_features: with the engine backend, record the target's features while it generates the
    responses (GenerationRequest.hidden_state_layers) instead of a second forward per sequence
    afterwards; sequences without features (a resumed OUT) still get the second pass.
    prompt_kinds: which prompts mined definitions give (data.code_prompts).
    max_data_minutes: stop generating responses that many minutes into the data step and train
    on the ones made (the held-out prompts are answered first, whatever the limit).
    merge_data: training directories of the same target and data backend whose training
    sequences (and stored features) are added to OUT's data (merge.merge_training_dirs)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    if data_backend not in DATA_BACKENDS:
        raise ValueError(f"data_backend must be one of {DATA_BACKENDS}, got {data_backend!r}")
    if ttt_steps < 1 or steps < 0 or batch_size < 1 or eval_k < 1:
        raise ValueError("ttt_steps, batch_size and eval_k must be >= 1 and steps >= 0")
    if max_data_minutes is not None and not max_data_minutes > 0:
        raise ValueError(f"max_data_minutes must be > 0, got {max_data_minutes}")
    if "source" in prompt_kinds and not train_on_prompt:
        raise ValueError("prompt kind 'source' gives whole definitions for the target to label: "
                         "use it with train_on_prompt (--train-on-prompt)")
    precision = training_precision(precision, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = str(target)
    source = _prompt_source(prompts, prompts_file, prompt_sources, seed, prompt_kinds)
    model, tokenizer = load_target(target, device, tables_only=data_backend == "engine")
    engine = None
    if data_backend == "engine":
        engine = _EngineTarget(target, engine_dtype, threads, gen_batch_size or 16, progress)
        if record_features:
            aux = resolve_aux_layer_ids(aux_layer_ids, model.config.num_hidden_layers)
            engine.record = D.Recording(model, aux, S.FeatureSink(out, _backend_name(data_backend, engine_dtype), aux,
                                                                  FEATURE_CHUNK), label_prompts=train_on_prompt)
    deadline = None if max_data_minutes is None else time.monotonic() + 60 * max_data_minutes
    merge_data = [Path(d) for d in merge_data]
    data_aux = resolve_aux_layer_ids(aux_layer_ids, model.config.num_hidden_layers)
    if merge_data and not (out / "data.pt").exists():  # OUT starts as the first one, held-out set included
        M.start_from(out, merge_data[0], data_aux, log)
        merge_data = merge_data[1:]
    data = _prepare_data(out, target, model, tokenizer, source, max_prompts, eval_prompts,
                         max_new_tokens, max_prompt_tokens, draft_vocab_size, seed, gen_batch_size or 8, device,
                         progress, log, data_backend, engine, engine_dtype, extend_data, deadline, train_on_prompt)
    if merge_data:
        data = _merge_data(out, data, merge_data, data_aux, model.config.vocab_size, train_on_prompt, log)
    if prepare_only:
        return {"prepared": str(out / "data.pt"), "data_backend": S.backend_of(data),
                "train_sequences": len(data["train"]), "heldout_sequences": len(data["heldout"]),
                "response_tokens": sum(len(s["ids"]) - s["prompt_len"] for s in data["train"] + data["heldout"]),
                "draft_vocab_coverage": data.get("draft_vocab_coverage")}
    d2t, t2d = data["d2t"], data["t2d"]

    cfg = config_from_target(model.config, int(t2d.sum()), aux_layer_ids, head_intermediate_size)
    aux_ids = cfg.aux_layers_for(model.config.num_hidden_layers)
    torch.manual_seed(seed)
    head = Eagle3Head(cfg)
    head.set_embeddings(model.get_input_embeddings().weight.detach().float().cpu())
    head.set_vocab_map(d2t, t2d)
    lm = model.get_output_embeddings()
    label_weight = lm.weight.detach()[t2d.to(lm.weight.device)].float().to(device)
    label_bias = None if lm.bias is None else lm.bias.detach()[t2d.to(lm.bias.device)].float().to(device)
    with torch.no_grad():  # start from the target's own output mapping (lm_head rows, final norm)
        head.lm_head.weight.copy_(label_weight.cpu())
        final_norm = getattr(model.base_model, "norm", None)
        if final_norm is not None and getattr(final_norm, "weight", None) is not None \
                and final_norm.weight.shape == head.norm.weight.shape:
            head.norm.weight.copy_(final_norm.weight.detach().float().cpu())
    head.to(device)

    t0 = time.time()
    seqs = data["train"] + data["heldout"]
    backend = data.get("data_backend")
    feats = S.load_features(out, backend, aux_ids, seqs)
    todo = S.missing(seqs, feats)
    if len(todo) < len(seqs):
        log(f"reusing {out / 'features.pt'}: target features of {len(seqs) - len(todo)} sequences")
    if todo:
        # In chunks, each saved: a stopped run keeps the features it computed.
        longest = max(len(s["ids"]) for s in todo) + 1
        for i in range(0, len(todo), FEATURE_CHUNK):
            part = todo[i:i + FEATURE_CHUNK]
            if engine is not None:
                new = D.engine_features(engine.get(longest), model, part, aux_ids, progress)
            else:
                new = D.target_features(model, part, aux_ids, device=device, progress=progress)
            feats.update(S.append_features(out, backend, aux_ids,
                                           {S.sequence_key(s): f for s, f in zip(part, new)}))
        if engine is not None:
            engine.close()
        log(f"target features of {len(todo)} sequences in {time.time() - t0:.0f}s ({backend})")
    S.consolidate_features(out, backend, aux_ids, feats)
    feats = [feats[S.sequence_key(s)] for s in seqs]
    train_feats, held_feats = feats[:len(data["train"])], feats[len(data["train"]):]
    del model

    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ckpt_path = out / "checkpoint.pt"
    start, history = 0, []
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        head.load_state_dict(ck["head"], strict=False)
        opt.load_state_dict(ck["optimizer"])
        start, history = ck["step"], ck["history"]
        log(f"resuming from step {start} ({ckpt_path})")
    elif init_from is not None:
        rows = warm_start(head, init_from)
        log(f"warm start from {init_from}: all layers, {rows} of {cfg.draft_vocab_size} lm_head rows")
    metrics: Dict = {"start_step": start}
    if start == 0:
        metrics["heldout_before"] = accepted_lengths(head, data["heldout"], held_feats, eval_k, device)

    def save(step):
        state = {n: t for n, t in head.state_dict().items() if n != "embed_tokens.weight"}
        S.save_atomic({"step": step, "head": state, "optimizer": opt.state_dict(), "history": history,
                      "config": cfg.to_dict(), "lr": lr, "ttt_steps": ttt_steps}, ckpt_path)
        save_head(head, out)

    warmup = warmup_steps if warmup_steps is not None else max(1, min(50, steps // 20))
    n_train = len(data["train"])
    if train_on_prompt and not any(_labels_prompt(s, f) for s, f in zip(data["train"], train_feats)):
        raise ValueError("--train-on-prompt needs the target's greedy tokens on prompt rows, and these "
                         "features were recorded without them: prepare the data again (a new --out) with "
                         "--train-on-prompt")
    if start < steps:
        log(f"training steps {start + 1}..{steps}, matmuls in {precision}")
    bar = tqdm(range(start, steps), desc="train EAGLE-3 head", disable=not progress, initial=start, total=steps)
    t0 = time.time()
    for step in bar:
        head.train()
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        pick = torch.randperm(n_train, generator=g)[:batch_size].tolist()
        batch = collate([data["train"][i] for i in pick], [train_feats[i] for i in pick], device, train_on_prompt)
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, steps, warmup)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            loss, losses, accs = ttt_loss(head, batch, ttt_steps, label_weight, label_bias)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        opt.step()
        loss = loss.item()
        history.append({"step": step + 1, "loss": loss, "losses": losses, "accs": accs,
                        "grad_norm": grad_norm})
        bar.set_postfix(loss=f"{loss:.3f}", acc0=f"{accs[0]:.2f}")
        if (step + 1) % save_every == 0 and step + 1 < steps:
            save(step + 1)
    train_seconds = time.time() - t0
    save(max(start, steps))

    metrics.update(heldout=accepted_lengths(head, data["heldout"], held_feats, eval_k, device),
                   data_backend=S.backend_of(data),
                   steps=len(history), train_seconds=round(train_seconds, 1), ttt_steps=ttt_steps,
                   precision=precision,
                   draft_vocab_size=cfg.draft_vocab_size, aux_layer_ids=list(aux_ids),
                   draft_vocab_coverage=data.get("draft_vocab_coverage"),
                   train_sequences=n_train, heldout_sequences=len(data["heldout"]))
    if history:
        w = max(1, min(10, len(history) // 4))
        metrics["loss_first"] = sum(h["loss"] for h in history[:w]) / w
        metrics["loss_last"] = sum(h["loss"] for h in history[-w:]) / w
        metrics["acc_last"] = [sum(h["accs"][j] for h in history[-w:]) / w for j in range(len(history[-1]["accs"]))]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log(f"held-out mean accepted length (k={eval_k}): {metrics['heldout']['mean_accepted_length']:.3f} "
        f"over {metrics['heldout']['anchors']} anchors")
    return metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specdec train-draft",
                                description="Train an EAGLE-3 draft head for a target by self-distillation.")
    p.add_argument("--target", required=True, help="Hugging Face checkpoint directory or .gguf file")
    p.add_argument("--out", required=True, help="head directory (also holds checkpoint.pt; re-run to resume)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--prompt-sources", nargs="+", metavar="DIR",
                   help="Python source trees to build prompts from, as from the standard library (e.g. a "
                        "site-packages folder: more prompts than the standard library's ~3,000)")
    p.add_argument("--prompt-kinds", nargs="+", choices=D.PROMPT_KINDS,
                   default=list(D.DEFAULT_PROMPT_KINDS),
                   help="which prompts to mine from each definition, in turn: explain its code, write it from "
                        "its docstring (chat), complete it from its signature and docstring (raw code), or "
                        "source: the whole definition as raw code, for the target to label with "
                        "--train-on-prompt (teacher-forced data)")
    p.add_argument("--prompts", help="JSONL of {\"prompt\": ...} (or {\"input_ids\": [...]}) lines; "
                                     "default: docstrings and code of the Python standard library")
    p.add_argument("--max-prompts", type=int, default=64, help="training prompts")
    p.add_argument("--eval-prompts", type=int, default=8, help="held-out prompts for the acceptance estimate")
    p.add_argument("--max-new-tokens", type=int, default=64, help="length of the target's responses")
    p.add_argument("--ttt-steps", type=int, default=4, help="training-time-test unroll length")
    p.add_argument("--draft-vocab-size", type=int, default=None, help="default: min(vocab, 32000)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-k", type=int, default=5, help="draft chain length for the held-out estimate")
    p.add_argument("--aux-layers", type=int, nargs=3, default=None, metavar="ID",
                   help="target decoder layers whose outputs feed the head (default 1, N//2-1, N-4)")
    p.add_argument("--train-on-prompt", action="store_true", help="also learn the target's predictions on prompts")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch, and the engine's)")
    p.add_argument("--data-backend", choices=DATA_BACKENDS, default="engine",
                   help="who generates the responses and features: the C++ engine (default; quantized "
                        "weights, as served) or transformers (float32)")
    p.add_argument("--engine-dtype", default="int4", choices=("int4", "int8", "bfloat16", "float16", "float32", "auto"),
                   help="weights of the engine backend (default int4)")
    p.add_argument("--gen-batch-size", type=int, default=None,
                   help="sequences generated together (default: engine 16, transformers 8)")
    p.add_argument("--prepare-only", action="store_true",
                   help="only generate OUT/data.pt (responses, draft vocabulary), then stop")
    p.add_argument("--head-intermediate-size", type=int, default=None,
                   help="the head's MLP width (default: the target's); a narrower head trains and drafts faster")
    p.add_argument("--extend-data", action="store_true",
                   help="add prompts to OUT's data up to --max-prompts (+ --eval-prompts): responses and "
                        "features only for the new ones, the held-out ones kept, the draft vocabulary rebuilt "
                        "(so OUT must not hold a checkpoint.pt yet)")
    p.add_argument("--merge-data", metavar="DIR", nargs="+", default=(),
                   help="also train on these training directories' sequences (same target and data backend; "
                        "their stored features are reused): an OUT without data starts as a copy of the first "
                        "(its held-out set included); the draft vocabulary is rebuilt, so OUT must not hold a "
                        "checkpoint.pt yet")
    p.add_argument("--init-from", metavar="HEAD_DIR",
                   help="start a new run from this head's weights (same shape; lm_head rows matched by "
                        "target token), e.g. a head trained on fewer prompts; ignored when resuming")
    p.add_argument("--separate-feature-pass", action="store_true",
                   help="engine backend: compute the target's features in a second forward per sequence after "
                        "generating, instead of recording them while generating (the default)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="of the training matmuls: bfloat16 autocast over float32 weights, or float32 "
                        "(default auto: bfloat16 where the CPU has AVX512-BF16/AMX or the GPU sm_80+)")
    p.add_argument("--max-data-minutes", type=float, default=None, metavar="MIN",
                   help="stop generating responses after MIN minutes and train on those made (held-out ones first; "
                        "--extend-data adds more later)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        metrics = train_draft(args.target, args.out, args.steps, args.device, prompts_file=args.prompts,
                              prompt_sources=args.prompt_sources, prompt_kinds=args.prompt_kinds,
                              max_prompts=args.max_prompts, eval_prompts=args.eval_prompts,
                              max_new_tokens=args.max_new_tokens, ttt_steps=args.ttt_steps,
                              draft_vocab_size=args.draft_vocab_size, lr=args.lr, batch_size=args.batch_size,
                              eval_k=args.eval_k, aux_layer_ids=args.aux_layers,
                              train_on_prompt=args.train_on_prompt, seed=args.seed, save_every=args.save_every,
                              progress=not args.no_progress, data_backend=args.data_backend,
                              engine_dtype=args.engine_dtype, threads=args.threads,
                              gen_batch_size=args.gen_batch_size, prepare_only=args.prepare_only,
                              head_intermediate_size=args.head_intermediate_size, extend_data=args.extend_data,
                              merge_data=args.merge_data,
                              init_from=args.init_from, precision=args.precision,
                              record_features=not args.separate_feature_pass,
                              max_data_minutes=args.max_data_minutes)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
