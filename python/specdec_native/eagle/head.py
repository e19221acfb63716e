"""The EAGLE-3 draft head in torch: one Llama decoder layer over [embedding ; target features].

Entries. Entry t pairs the target's features after token t (three aux layers concatenated,
[3H], projected by `fc` to H) with the NEXT token x_{t+1}, sits at RoPE position t and predicts
x_{t+2}:

    x   = [input_layernorm(embed(x_{t+1})) ; hidden_norm(h_t)]         (2H)
    h'  = h_t + o_proj(attn(q_proj x, k_proj x, v_proj x))              (residual: h_t)
    h'  = h' + mlp(post_attention_layernorm(h'))
    logits = lm_head(norm(h'))  over the draft vocabulary; target id = d + d2t[d]

Drafting step j > 0 from anchor t feeds the head's own output h' (before `norm`) as h, the
previous draft token as x, at position t + j, attending to the real entries 0..t and to the
earlier drafted entries (a KV cache). `unroll` runs the same computation for every anchor of a
sequence at once (the "training-time test"), with teacher-forced tokens; `draft` is the
autoregressive reference. The two agree exactly (tests/test_eagle_head.py).

Parameter names and shapes are those of SpecForge's / SGLang's LlamaForCausalLMEagle3."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import Eagle3Config

KV = Tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.nq, self.nkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(2 * cfg.hidden_size, self.nq * self.d, bias=False)
        self.k_proj = nn.Linear(2 * cfg.hidden_size, self.nkv * self.d, bias=False)
        self.v_proj = nn.Linear(2 * cfg.hidden_size, self.nkv * self.d, bias=False)
        self.o_proj = nn.Linear(self.nq * self.d, cfg.hidden_size, bias=False)
        inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, self.d, 2, dtype=torch.float64) / self.d)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def project(self, x: torch.Tensor, positions: torch.Tensor):
        """q [B, nq, T, D], k and v [B, nkv, T, D], RoPE applied at `positions` ([T] or [B, T])."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nq, self.d).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.d).transpose(1, 2)
        freqs = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        if cos.dim() == 3:  # per-batch positions
            cos, sin = cos[:, None], sin[:, None]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def attend(self, q, k, v, mask, diag_k: Sequence[torch.Tensor] = (), diag_v: Sequence[torch.Tensor] = ()):
        """Softmax attention of q over the keys k (where mask [T, S] is True) and, per row t, over
        each diag_k[j][:, :, t] (the row's own drafted entries in a training-time-test unroll)."""
        rep = self.nq // self.nkv
        expand = (lambda t: t.repeat_interleave(rep, dim=1)) if rep > 1 else (lambda t: t)
        scale = 1.0 / math.sqrt(self.d)
        scores = torch.matmul(q, expand(k).transpose(2, 3)) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        extra = [(q * expand(dk)).sum(-1, keepdim=True) * scale for dk in diag_k]
        probs = torch.softmax(torch.cat([scores] + extra, dim=-1), dim=-1, dtype=torch.float32).to(q.dtype)
        S = k.shape[2]
        out = torch.matmul(probs[..., :S], expand(v))
        for j, dv in enumerate(diag_v):
            out = out + probs[..., S + j:S + j + 1] * expand(dv)
        B, _, T, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.nq * self.d))


class MLP(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def qkv(self, embeds, hidden, positions):
        x = torch.cat((self.input_layernorm(embeds), self.hidden_norm(hidden)), dim=-1)
        return self.self_attn.project(x, positions)

    def finish(self, hidden, attn_out):
        h = hidden + attn_out
        return h + self.mlp(self.post_attention_layernorm(h))


def _causal(T: int, S: int, device) -> torch.Tensor:
    """[T, S] mask: new row i (absolute position S - T + i) sees keys 0..S - T + i."""
    return torch.arange(S, device=device)[None, :] <= (S - T + torch.arange(T, device=device))[:, None]


def _shift(ids: torch.Tensor, n: int) -> torch.Tensor:
    """ids[:, n:] padded with zeros back to the same length."""
    if n == 0:
        return ids
    return torch.cat((ids[:, n:], ids.new_zeros(ids.shape[0], min(n, ids.shape[1]))), dim=1)


class Eagle3Head(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)  # the target's table, frozen
        nn.init.zeros_(self.embed_tokens.weight)
        self.has_embeddings = False
        self.fc = nn.Linear(3 * cfg.target_hidden_size, cfg.hidden_size, bias=False)
        self.midlayer = DecoderLayer(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(cfg.vocab_size, dtype=torch.bool)
                             if cfg.draft_vocab_size == cfg.vocab_size else
                             torch.zeros(cfg.vocab_size, dtype=torch.bool))
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)

    # --- pieces --------------------------------------------------------------------------
    def set_embeddings(self, weight: torch.Tensor) -> None:
        if tuple(weight.shape) != tuple(self.embed_tokens.weight.shape):
            raise ValueError(f"embedding table shape {tuple(weight.shape)} != expected "
                             f"{tuple(self.embed_tokens.weight.shape)}")
        with torch.no_grad():
            self.embed_tokens.weight.copy_(weight)
        self.has_embeddings = True

    def set_vocab_map(self, d2t: torch.Tensor, t2d: torch.Tensor) -> None:
        self.d2t.copy_(d2t)
        self.t2d.copy_(t2d)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.has_embeddings:
            raise RuntimeError("the head has no embedding table: pass the target's with head.set_embeddings(...)")
        return self.embed_tokens(ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits of output hidden states."""
        return self.lm_head(self.norm(hidden))

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]

    # --- one pass (inference) --------------------------------------------------------------
    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor, past: Optional[KV] = None,
                positions: Optional[torch.Tensor] = None):
        """New entries [B, T]: `hidden` [B, T, H] (fc'd target features or the head's own outputs),
        `input_ids` their tokens. Causal among themselves, attending to all of `past` (the K/V of
        earlier entries). Positions default to past length + 0..T-1. Returns (output hidden
        [B, T, H] before the final norm, the K/V of past + these entries)."""
        T = input_ids.shape[1]
        S0 = 0 if past is None else past[0].shape[2]
        if positions is None:
            positions = torch.arange(S0, S0 + T, device=input_ids.device)
        q, k, v = self.midlayer.qkv(self.embed(input_ids), hidden, positions)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        out = self.midlayer.self_attn.attend(q, k, v, _causal(T, k.shape[2], q.device))
        return self.midlayer.finish(hidden, out), (k, v)

    # --- training-time test ----------------------------------------------------------------
    def unroll(self, aux_hidden: torch.Tensor, input_ids: torch.Tensor, steps: int,
               first_row: int = 0) -> List[torch.Tensor]:
        """Every anchor of a sequence at once. aux_hidden [B, T, 3H]: the target's features after
        each token of input_ids [B, T]. Returns `steps` output hidden states [B, T - first_row, H]:
        step j at row i (anchor t = first_row + i) is the head's j-th draft from anchor t (real
        features up to t) with the tokens x_{t+1}..x_{t+1+j} fed in (teacher forcing); it predicts
        x_{t+2+j}. Rows before first_row only provide keys and values (the context). Rows whose
        tokens run past the end see zero padding and must be masked by the caller."""
        B, T = input_ids.shape
        pos = torch.arange(T, device=input_ids.device)[first_row:]
        mask = _causal(T, T, input_ids.device)[first_row:]
        h = self.fc(aux_hidden)
        q, k0, v0 = self.midlayer.qkv(self.embed(_shift(input_ids, 1)), h, torch.arange(T, device=input_ids.device))
        h = h[:, first_row:]
        h = self.midlayer.finish(h, self.midlayer.self_attn.attend(q[:, :, first_row:], k0, v0, mask))
        outs, diag_k, diag_v = [h], [], []
        for j in range(1, steps):
            q, k, v = self.midlayer.qkv(self.embed(_shift(input_ids, 1 + j)[:, first_row:]), h, pos + j)
            diag_k.append(k)
            diag_v.append(v)
            h = self.midlayer.finish(h, self.midlayer.self_attn.attend(q, k0, v0, mask, diag_k, diag_v))
            outs.append(h)
        return outs

    # --- reference drafting ----------------------------------------------------------------
    @torch.no_grad()
    def draft(self, aux_hidden: torch.Tensor, input_ids: torch.Tensor, k: int, return_logits: bool = False):
        """Greedy chain of k draft tokens (target ids, [B, k]). aux_hidden [B, n, 3H]: the target's
        features after input_ids[:, :n]; input_ids [B, n + 1] ends with the token the target just
        produced (which has no features yet)."""
        n = aux_hidden.shape[1]
        if input_ids.shape[1] != n + 1:
            raise ValueError(f"input_ids must be one token longer than aux_hidden ({n + 1}), got {input_ids.shape[1]}")
        h, past = self.forward(self.fc(aux_hidden), input_ids[:, 1:])
        h = h[:, -1:]
        tokens, all_logits = [], []
        for j in range(k):
            lg = self.logits(h)[:, -1]
            tok = self.to_target_ids(lg.argmax(-1))
            tokens.append(tok)
            all_logits.append(lg)
            if j + 1 < k:
                h, past = self.forward(h, tok[:, None], past)
        out = torch.stack(tokens, dim=1)
        return (out, all_logits) if return_logits else out
