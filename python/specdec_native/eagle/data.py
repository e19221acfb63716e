"""Training data for an EAGLE-3 head by self-distillation: prompts (the Python standard library's
own docstrings and code, or a JSONL file), the target's greedy responses, the draft vocabulary
(the most frequent response tokens, as SpecForge builds it) and the target's features.

A sequence is a dict {"ids": [int], "prompt_len": int}.

Two backends produce the responses and features: transformers (`generate_responses`,
`target_features`: the target in float32 torch) and the C++ engine (`engine_responses`,
`engine_features`: specdec_native.LLM, by default on int4 weights, which is what serves the head)."""
from __future__ import annotations

import ast
import functools
import json
import random
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..source_files import source_files, stdlib_root


class Completion(str):
    """A prompt the target continues as it is, without the chat template: a code prefix (a
    definition's signature and docstring) to complete, as a code-completion user sends it."""


Prompt = Union[str, Completion, List[int]]


# --- prompts -------------------------------------------------------------------------------
def _documented_definitions(path: Path) -> List[Tuple[str, str, str, str, str, str]]:
    """(kind, name, docstring, source, head, whole) of the public functions and classes in a file
    whose docstring is 40-600 characters and whose source is at most 1200, in ast.walk order;
    head is the source up to the end of the docstring, whole all of it, both dedented."""
    try:
        src = path.read_text(encoding="utf-8")
        tree = ast.parse(src)
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        code = ast.get_source_segment(src, node)
        if doc and code and 40 <= len(doc) <= 600 and len(code) <= 1200:
            # The first line of a segment starts at the definition; a method's later lines keep
            # their class indentation: put it back on the first line, then dedent.
            lines = (" " * node.col_offset + code).splitlines()
            head = textwrap.dedent("\n".join(lines[:node.body[0].end_lineno - node.lineno + 1])) + "\n"
            whole = textwrap.dedent("\n".join(lines)) + "\n"
            out.append(("class" if isinstance(node, ast.ClassDef) else "function", node.name, doc, code, head, whole))
    return out


@functools.lru_cache(maxsize=4)
def _mined_definitions(roots: Tuple[str, ...], seed: int) -> List[Tuple[str, List]]:
    """(module, its documented definitions) per file under `roots`, files in a seeded order
    (parsed once per process: the standard library takes tens of seconds)."""
    files = [(Path(root), f) for root in roots for f in source_files(Path(root))]
    random.Random(seed).shuffle(files)
    return [(".".join(f.relative_to(root).with_suffix("").parts), _documented_definitions(f)) for root, f in files]


def stdlib_prompts(limit: int, seed: int = 0, per_file: int = 2) -> List[str]:
    """code_prompts over the standard library's own sources (about 3,000 definitions qualify)."""
    return code_prompts(limit, None, seed=seed, per_file=per_file)


# "source" (the whole definition as raw code) is for teacher-forced data (--train-on-prompt):
# not in the default mix, where the target would only continue past a finished definition.
PROMPT_KINDS = ("explain", "write", "complete", "source")
DEFAULT_PROMPT_KINDS = ("explain", "write", "complete")


def checked_prompt_kinds(kinds: Sequence[str]) -> List[str]:
    kinds = list(kinds)
    if not kinds or any(k not in PROMPT_KINDS for k in kinds) or len(set(kinds)) < len(kinds):
        raise ValueError(f"prompt kinds must be distinct names among {PROMPT_KINDS}, got {kinds}")
    return kinds


def code_prompts(limit: int, roots: Optional[Sequence[Union[str, Path]]] = None, seed: int = 0,
                 per_file: int = 2, kinds: Sequence[str] = DEFAULT_PROMPT_KINDS) -> List[Prompt]:
    """Up to `limit` prompts built from functions and classes (with docstrings) of the Python
    sources under `roots` (default: the standard library), three kinds in turn: "explain this
    code" and "write this from its docstring" (chat), and the definition's signature and
    docstring as a Completion (raw code for the target to continue: a head trained on chat
    answers alone accepts little on code completion). Files are visited in a seeded order, `per_file` definitions
    from each per round, in as many rounds as it takes, so a larger limit extends the list a
    smaller one gives. Test folders and nested site-packages are skipped. `kinds` keeps some of
    the three ("explain", "write", "complete"), still taken in turn: ("complete",) makes every
    definition a Completion, for a head meant for code completion. A fourth kind, "source",
    makes the whole definition a Completion: text for the target to label position by position
    (teacher-forced data, with train_on_prompt)."""
    kinds = checked_prompt_kinds(kinds)
    roots = [stdlib_root()] if not roots else [Path(r) for r in roots]
    for root in roots:
        if not root.is_dir():
            raise ValueError(f"prompt source {root} is not a directory")
    defs = _mined_definitions(tuple(str(r) for r in roots), seed)
    prompts: List[Prompt] = []
    for start in range(0, max((len(d) for _, d in defs), default=0), per_file):
        for module, found in defs:
            for kind, name, doc, code, head, whole in found[start:start + per_file]:
                if len(prompts) >= limit:
                    return prompts
                turn = kinds[len(prompts) % len(kinds)]
                if turn == "explain":
                    prompts.append(f"Explain what this code from the Python `{module}` module does:\n\n"
                                   f"```python\n{code}\n```")
                elif turn == "write":
                    prompts.append(f"Write a Python {kind} `{name}` that does the following:\n\n{doc}")
                elif turn == "complete":
                    prompts.append(Completion(head))
                else:
                    prompts.append(Completion(whole))
    return prompts


def jsonl_prompts(path) -> List[Prompt]:
    """One JSON object a line: {"prompt": "text"} (a chat turn), {"completion": "text"} (raw text
    to continue, no chat template) or {"input_ids": [token ids]}."""
    out: List[Prompt] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
                out.append(obj["prompt"])
            elif isinstance(obj, dict) and isinstance(obj.get("completion"), str):
                out.append(Completion(obj["completion"]))
            elif isinstance(obj, dict) and isinstance(obj.get("input_ids"), list) and obj["input_ids"] and all(
                    isinstance(i, int) and not isinstance(i, bool) for i in obj["input_ids"]):
                out.append(list(obj["input_ids"]))
            else:
                raise ValueError(f"{path}:{n}: expected {{\"prompt\": str}}, {{\"completion\": str}} or "
                                 f"{{\"input_ids\": [int, ...]}}")
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def encode_prompts(prompts: Sequence[Prompt], tokenizer, vocab_size: int, max_tokens: int) -> List[List[int]]:
    """Token ids per prompt (chat template when the tokenizer has one, except for a Completion);
    prompts longer than max_tokens are dropped, and a repeated prompt is kept once (the greedy
    target answers it alike: a standard library has many `def close(self): "Close the file."`)."""
    out, seen = [], set()
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("text prompts need a tokenizer; the target has none (give token ids instead)")
            if getattr(tokenizer, "chat_template", None) and not isinstance(p, Completion):
                enc = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                    tokenize=True, return_dict=True)
                ids = list(enc["input_ids"])
            else:
                ids = list(tokenizer(str(p))["input_ids"])
        else:
            ids = [int(i) for i in p]
        if any(not 0 <= i < vocab_size for i in ids):
            raise ValueError(f"prompt token id out of range for a {vocab_size}-token vocabulary")
        if 0 < len(ids) <= max_tokens and tuple(ids) not in seen:
            seen.add(tuple(ids))
            out.append(ids)
    return out


# --- the target's responses ----------------------------------------------------------------
def eos_ids(model) -> List[int]:
    ids = []
    for cfg in (getattr(model, "generation_config", None), model.config):
        e = getattr(cfg, "eos_token_id", None) if cfg is not None else None
        ids.extend([e] if isinstance(e, int) else list(e or []))
    return sorted(set(ids))


def past(deadline: Optional[float]) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _cut_after_eos(resp: List[int], eos: Sequence[int]) -> List[int]:
    """The response up to and including its first EOS token (all of it when there is none)."""
    for j, t in enumerate(resp):
        if t in eos:
            return resp[:j + 1]
    return resp


@torch.no_grad()
def generate_responses(model, prompts: List[List[int]], max_new_tokens: int, batch_size: int = 8,
                       device="cpu", progress: bool = True,
                       on_sequence: Optional[Callable[[Dict], None]] = None,
                       deadline: Optional[float] = None) -> List[Dict]:
    """The target's greedy continuation of each prompt (left-padded batches), cut after EOS.
    on_sequence(sequence) is called as each batch finishes. deadline: a time.monotonic() after
    which no batch starts (the prompts not reached get no response)."""
    eos = eos_ids(model)
    pad = eos[0] if eos else 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: Dict[int, Dict] = {}
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="target responses", disable=not progress):
        if past(deadline):
            break
        L = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), L), pad, dtype=torch.long)
        att = torch.zeros((len(batch), L), dtype=torch.long)
        for r, i in enumerate(batch):
            p = prompts[i]
            ids[r, L - len(p):] = torch.tensor(p)
            att[r, L - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=1, pad_token_id=pad,
                             eos_token_id=eos or None, temperature=None, top_p=None, top_k=None)
        for r, i in enumerate(batch):
            resp = _cut_after_eos(out[r, L:].tolist(), eos)
            if resp:
                results[i] = {"ids": prompts[i] + resp, "prompt_len": len(prompts[i])}
                if on_sequence is not None:
                    on_sequence(results[i])
    return [results[i] for i in range(len(prompts)) if i in results]


# --- the draft vocabulary ------------------------------------------------------------------
def vocab_map(sequences: Iterable[Dict], vocab_size: int, draft_vocab_size: int,
              include_prompt: bool = False) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """SpecForge's mapping: the draft_vocab_size most frequent target tokens among the trained
    (response) tokens, sorted by id; if fewer distinct tokens occur, the lowest unused ids fill
    up. d2t[d] = target_id - d, t2d[target_id] = True. Also returns the share of trained token
    occurrences the draft vocabulary covers."""
    if not 0 < draft_vocab_size <= vocab_size:
        raise ValueError(f"draft_vocab_size must be in [1, {vocab_size}], got {draft_vocab_size}")
    counts: Counter = Counter()
    for s in sequences:
        counts.update(s["ids"] if include_prompt else s["ids"][s["prompt_len"]:])
    used = [t for t, _ in counts.most_common(draft_vocab_size)]
    covered = sum(counts[t] for t in used) / max(1, sum(counts.values()))
    taken = set(used)
    filler = (t for t in range(vocab_size) if t not in taken)
    while len(used) < draft_vocab_size:
        used.append(next(filler))
    used = torch.tensor(sorted(used), dtype=torch.long)
    d2t = used - torch.arange(draft_vocab_size)
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[used] = True
    return d2t, t2d, covered


# --- the target's features -----------------------------------------------------------------
def _check_plain_lm_head(lm_head, final: torch.Tensor, logits: torch.Tensor) -> None:
    ref = torch.nn.functional.linear(final, lm_head.weight, lm_head.bias)
    if not torch.allclose(ref.float(), logits.float(), rtol=1e-3, atol=1e-3):
        raise ValueError("the target transforms its logits after lm_head (scaling / soft-capping); not supported")


@torch.no_grad()
def target_features(model, sequences: List[Dict], aux_layer_ids: Sequence[int], batch_size: int = 4,
                    device="cpu", progress: bool = True) -> List[Dict]:
    """Per sequence: aux [T, 3H] (outputs of the aux decoder layers, i.e. hidden_states[i + 1]),
    final [T, H] (the input of the target's lm_head, for soft labels on any vocabulary subset)
    and argmax [T] (the target's greedy token after each position, over the full vocabulary)."""
    lm_head = model.get_output_embeddings()
    captured = []
    hooks = [lm_head.register_forward_pre_hook(lambda m, args: captured.append(args[0]))]
    # hidden_states[N] is the last layer's output after the final norm (transformers ties it to
    # last_hidden_state); an aux layer N - 1 must give the raw residual stream, as for the others
    # and as the engine captures it
    n_layers = model.config.num_hidden_layers
    last_raw = []
    if n_layers - 1 in aux_layer_ids:
        hooks.append(model.base_model.layers[n_layers - 1].register_forward_hook(
            lambda m, args, out: last_raw.append(out[0] if isinstance(out, tuple) else out)))
    out_list: List[Optional[Dict]] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]["ids"]))
    checked = False
    try:
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="target features", disable=not progress):
            L = max(len(sequences[i]["ids"]) for i in batch)
            ids = torch.zeros((len(batch), L), dtype=torch.long)
            att = torch.zeros((len(batch), L), dtype=torch.long)
            for r, i in enumerate(batch):
                s = sequences[i]["ids"]
                ids[r, :len(s)] = torch.tensor(s)
                att[r, :len(s)] = 1
            captured.clear()
            last_raw.clear()
            out = model(input_ids=ids.to(device), attention_mask=att.to(device), output_hidden_states=True,
                        use_cache=False)
            final = captured[-1]
            if not checked:  # the soft labels recompute logits as final @ W^T (+ b): make sure that is the target's
                _check_plain_lm_head(lm_head, final, out.logits)
                checked = True
            hs = list(out.hidden_states)
            if last_raw:
                hs[n_layers] = last_raw[-1]
            aux = torch.cat([hs[i + 1] for i in aux_layer_ids], dim=-1)
            argmax = out.logits.argmax(-1)
            for r, i in enumerate(batch):
                T = len(sequences[i]["ids"])
                out_list[i] = {"aux": aux[r, :T].float().cpu(), "final": final[r, :T].float().cpu(),
                               "argmax": argmax[r, :T].cpu()}
            del out, hs, aux
    finally:
        for h in hooks:
            h.remove()
    return out_list


# --- the same with the C++ engine ------------------------------------------------------------
class _EngineLayers:
    """How engine hidden states become target_features: which layers to capture (the aux ones and
    the last, whose raw output the transformers model's final norm turns into `final`), and the
    transformers lm_head for `argmax`, checked once to reproduce the target's logits."""

    def __init__(self, model, aux_layer_ids: Sequence[int], check_ids: Optional[List[int]]):
        self.n_layers = model.config.num_hidden_layers
        self.aux = [int(i) for i in aux_layer_ids]
        self.layers = sorted(set(self.aux) | {self.n_layers - 1})
        self.col = {layer: j for j, layer in enumerate(self.layers)}  # hs column of each layer
        self.norm = model.base_model.norm
        self.lm_head = model.get_output_embeddings()
        # The soft labels recompute logits as final @ W^T (+ b): make sure that is the target's. A
        # model of tables only cannot run, and needs no check: the engine runs only Llama-family
        # targets, whose logits are exactly that.
        if check_ids and not getattr(model, "tables_only", False):
            ids = torch.tensor([check_ids[:32]], device=self.lm_head.weight.device)
            captured = []
            hook = self.lm_head.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
            try:
                with torch.no_grad():
                    logits = model(input_ids=ids, use_cache=False).logits
            finally:
                hook.remove()
            _check_plain_lm_head(self.lm_head, captured[-1], logits)

    @torch.no_grad()
    def features(self, hs, argmax: Optional[torch.Tensor] = None, unlabelled: int = 0) -> Dict:
        """hs: [T, len(self.layers), H] (numpy or torch) -> {"aux", "final", "argmax"} of T rows.
        argmax: the target's greedy tokens where already known (the engine's own, while it
        generates), -1 elsewhere; the lm_head computes the other rows except the first
        `unlabelled`, which stay -1 (no label)."""
        hs = torch.as_tensor(hs)
        aux = torch.cat([hs[:, self.col[i]] for i in self.aux], dim=-1)
        final = self.norm(hs[:, self.col[self.n_layers - 1]].to(self.lm_head.weight.device, self.norm.weight.dtype))
        argmax = torch.full((hs.shape[0],), -1, dtype=torch.long) if argmax is None else argmax.clone()
        todo = (argmax < 0).nonzero().flatten()
        todo = todo[todo >= unlabelled]
        if len(todo):
            logits = torch.nn.functional.linear(final[todo.to(final.device)], self.lm_head.weight, self.lm_head.bias)
            argmax[todo] = logits.argmax(-1).cpu()
        return {"aux": aux.float().contiguous(), "final": final.float().cpu(), "argmax": argmax}


class Recording(NamedTuple):
    """engine_responses(record=...): the transformers target (its final norm and lm_head), the
    aux layers to record, and sink(sequence, features) for each finished sequence. Prompt rows
    get the target's greedy token (one lm_head row each) only with label_prompts; otherwise
    their argmax is -1 (no label: training then learns from responses only)."""
    model: object
    aux_layer_ids: Sequence[int]
    sink: Callable[[Dict, Dict], None]
    label_prompts: bool = False


def engine_responses(llm, prompts: List[List[int]], max_new_tokens: int, eos: Sequence[int],
                     chunk: int = 64, progress: bool = True, record=None,
                     on_sequence: Optional[Callable[[Dict], None]] = None,
                     deadline: Optional[float] = None) -> List[Dict]:
    """The target's greedy continuation of each prompt from a specdec_native.LLM, cut after the
    first of `eos` (kept), as generate_responses does. The engine batches each chunk of prompts
    (continuous batching over its max_num_seqs). One difference: generate_responses forbids EOS
    as the first token (min_new_tokens=1); here a response may be that EOS alone.

    record: a Recording (or its fields as a tuple) to get the target's features while
    generating, without engine_features' second pass: the engine records the layers' hidden
    states of every token it reads (GenerationRequest.hidden_state_layers), and
    sink(sequence, features) receives each sequence's. A response is generated one token past
    max_new_tokens (then dropped) so every position has its features, except after an EOS: the
    features then stop one row short of the sequence, and its last position (what follows EOS)
    is no label. The argmax of a response row is the token the engine generated after it (its
    greedy choice, so no lm_head pass over the rows); prompt rows: see Recording.
    on_sequence(sequence) is called for each as its chunk finishes (after the sink). deadline: as
    for generate_responses, checked before each chunk."""
    from ..llm import _to_request
    from ..sampling_params import SamplingParams

    eos = sorted(set(int(e) for e in eos))
    layers = None
    if record is not None:
        record = Recording(*record)
        layers = _EngineLayers(record.model, record.aux_layer_ids, prompts[0] if prompts else None)
    # the engine's own EOS list may differ from the transformers config's: stop on exactly `eos`
    params = SamplingParams(max_tokens=max_new_tokens + (layers is not None), temperature=0.0, seed=0,
                            stop_token_ids=eos, ignore_eos=True)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: Dict[int, Dict] = {}
    bar = tqdm(total=len(prompts), desc="target responses (engine)", disable=not progress)
    try:
        for start in range(0, len(order), chunk):
            if past(deadline):
                break
            batch = order[start:start + chunk]
            requests = [_to_request(prompts[i], params) for i in batch]
            for r in requests:
                r.hidden_state_layers = layers.layers if layers is not None else []
            outs = llm.engine.generate(requests)
            for i, o in zip(batch, outs):
                tokens = list(o.tokens)
                resp = _cut_after_eos(tokens[:max_new_tokens], eos)
                if not resp:
                    continue
                seq = {"ids": prompts[i] + resp, "prompt_len": len(prompts[i])}
                results[i] = seq
                if layers is not None:
                    hs = o.hidden_states[:len(seq["ids"])]
                    P = len(prompts[i])
                    argmax = torch.full((hs.shape[0],), -1, dtype=torch.long)
                    argmax[P - 1:] = torch.tensor(tokens[:hs.shape[0] - P + 1], dtype=torch.long)
                    record.sink(seq, layers.features(hs.reshape(hs.shape[0], len(layers.layers), -1), argmax,
                                                     unlabelled=0 if record.label_prompts else P - 1))
                if on_sequence is not None:
                    on_sequence(seq)
            bar.update(len(batch))
    finally:
        bar.close()
    return [results[i] for i in range(len(prompts)) if i in results]


@torch.no_grad()
def engine_features(llm, model, sequences: List[Dict], aux_layer_ids: Sequence[int],
                    progress: bool = True) -> List[Dict]:
    """target_features from the engine: Engine.prompt_hidden_states gives the raw outputs of
    the aux layers and of the last layer (the residual stream, before the final norm); final =
    the transformers model's final norm of the last one (the input of its lm_head), argmax =
    argmax(final @ lm_head^T + b) with the transformers lm_head. Same keys, shapes and dtypes
    as target_features (float32 CPU tensors)."""
    layers = _EngineLayers(model, aux_layer_ids, sequences[0]["ids"] if sequences else None)
    return [layers.features(llm.engine.prompt_hidden_states(list(s["ids"]), layers.layers))
            for s in tqdm(sequences, desc="target features (engine)", disable=not progress)]
