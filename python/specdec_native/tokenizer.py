"""Text <-> token ids with the checkpoint's own tokenizer.json (the `tokenizers` library), its chat
template (Jinja, sandboxed), and incremental detokenization for streaming and stop strings."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence


class Tokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
        cfg = {}
        if (path / "tokenizer_config.json").is_file():
            with open(path / "tokenizer_config.json", encoding="utf-8") as f:
                cfg = json.load(f)
        self.chat_template: Optional[str] = cfg.get("chat_template")
        if isinstance(self.chat_template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in self.chat_template}
            self.chat_template = named.get("default") or next(iter(named.values()), None)
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.add_bos = bool(cfg.get("add_bos_token", False))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and self.bos_token is not None:
            bos = self._tok.token_to_id(self.bos_token)
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos] + ids
        return ids

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """Token ids of each text, without special tokens (the library's threads do the work)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def special_token_ids(self) -> List[int]:
        """The ids of the added tokens marked special (end-of-text, chat role markers, ...)."""
        return sorted(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_table(self) -> Dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def apply_chat_template(self, messages: List[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise ValueError("this checkpoint has no chat template (tokenizer_config.json "
                             "'chat_template'); use generate() with a plain prompt")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ValueError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "")


def _token_text(value) -> Optional[str]:
    if isinstance(value, dict):  # {"content": "<s>", ...}
        return value.get("content")
    return value


class IncrementalDetokenizer:
    """Text of a growing token list, emitted as deltas. Holds back text that ends in an
    incomplete UTF-8 sequence (U+FFFD) until the next token completes it."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self._tok = tokenizer
        self._ids: List[int] = []
        self.text = ""  # committed text (stop string excluded)
        self._stop = list(stop)
        self.stopped = False

    def add(self, token: int) -> str:
        """Adds a token; returns the new text. Sets .stopped when a stop string appeared."""
        self._ids.append(token)
        full = self._tok.decode(self._ids)
        if full.endswith("\ufffd"):
            return ""
        delta = full[len(self.text):] if full.startswith(self.text) else full
        if self._stop:
            # Search from a little before the new text, so a stop string spanning tokens is found.
            window_start = max(0, len(self.text) - max(len(s) for s in self._stop))
            candidate = self.text + delta
            hits = [candidate.find(s, window_start) for s in self._stop]
            hits = [h for h in hits if h >= 0]
            if hits:
                cut = min(hits)
                delta = candidate[len(self.text):cut] if cut >= len(self.text) else ""
                self.text = candidate[:cut]
                self.stopped = True
                return delta
        self.text += delta
        return delta
