"""SpeculativeConfig: how drafts are made and shaped, and how they are judged (lossless by
default; "typical" and "cascade" are explicitly lossy options)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Union

METHODS = ("draft", "ngram", "sparse_kv", "layer_skip", "eagle")
SELF_METHODS = ("sparse_kv", "layer_skip")  # the target drafts for itself
CHAIN_ONLY_METHODS = SELF_METHODS
ACCEPTANCE = ("lossless", "typical", "cascade")
CASCADE_RULES = ("chow", "diff", "opt")
# cascade_alpha ranges per rule: chow defers when max q < 1 - alpha, diff when
# max p - max q > alpha, opt when max q < max p - alpha * D_TV(p, q).
CASCADE_ALPHA_RANGE = {"chow": (0.0, 1.0), "diff": (-1.0, 1.0), "opt": (0.0, math.inf)}
MAX_NODES = 256


@dataclass
class SpeculativeConfig:
    """method: "draft" (a smaller model sharing the target's vocabulary, given as LLM(draft=...)),
    "ngram" (prompt lookup: continuations of the longest recent suffix seen before), "eagle" (an
    EAGLE-3 head directory in SpecForge's format, given as LLM(draft=HEAD_DIR): one layer over
    the target's own hidden states; chains or trees, EAGLE-2's dynamic tree with tree={"top_k",
    "max_nodes"}), or
    self-speculation, where the target drafts for itself over its own weights and KV cache:
    "sparse_kv" (MagicDec: every layer, but attending only the first sink_tokens and the last
      window_tokens of the context, rounded out to whole KV pages: its cost stops growing with
      the context) or "layer_skip" (only draft_layers of the target's decoder layers: an int L for
      the first L, or a list of layer indices; then the final norm and LM head). Chains only.

    num_speculative_tokens: chain length, or tree depth.
    tree: None or "chain" (a chain: the default; on this CPU a tree's wider verification costs more
      than its extra accepted tokens win, see docs/eagle.md); a list of choices ("draft", "eagle") (Medusa/EAGLE static tree: each a path of child ranks
      from the root, e.g. [[0], [1], [0, 0]]); or {"top_k": 4, "max_nodes": 32} (a dynamic tree,
      EAGLE-2 style: num_speculative_tokens levels, each expanding the top_k nodes of highest
      cumulative draft probability with their top_k children; the max_nodes best nodes are kept).
      Tree children are the draft's top-ranked tokens, verified losslessly. For "ngram", {"max_branches": B} keeps up to B distinct continuations.
    prompt_lookup_min / prompt_lookup_max: n-gram sizes tried, longest first ("ngram").
    draft_dtype: the draft model's dtype (default: the target's).
    draft_vocab: "draft" only: the token ids the draft's LM head keeps (FR-Spec's reduced
      vocabulary, specdec_native.draft_vocab): a list of ids, a JSON file of one, or an EAGLE-3
      head directory (its t2d). Drafting reads a smaller head; drafts stay inside the set and
      verification is unchanged, so the output stays lossless. CPU only for now.
    adaptive: chains: each step drafts the k <= num_speculative_tokens that the cost model
      (1 - a^(k+1)) / ((1 - a)(k c + v(k+1))) expects to be fastest, with a = the request's
      measured acceptance, c = draft/target step cost, v = measured verify-width cost. Dynamic
      trees: each step keeps the n <= max_nodes best nodes maximizing
      (1 + s * (sum of their draft path probabilities)) / (drafting time + v(n+1)), s = the
      request's measured accepted / predicted tokens, so a compute-bound target verifies small
      trees and a memory-bound one large trees. Still lossless; but sizes then depend on
      timings, so seeded sampled outputs repeat exactly only with adaptive=False.
    acceptance: how drafts are judged. "lossless" (default): the output is distributed exactly as
      the target's (token-identical at temperature 0). The others are LOSSY, they make no quality
      claim and trade fidelity to the target for longer accepted runs:
      "typical" (Medusa's typical acceptance): a drafted token x is accepted when
        p(x) > min(typical_epsilon, typical_delta * exp(-H(p))), p the target's distribution
        (softmax at temperature 1 when greedy); trees walk the first accepted child.
      "cascade" (speculative cascades, Narasimhan et al. 2024; draft-model chains only): per
        position a deferral rule picks the draft's q or the target's p as the distribution
        speculative sampling targets: cascade_rule "chow" (defer when max q < 1 - alpha), "diff"
        (defer when max p - max q > alpha) or "opt" (defer when
        max q < max p - alpha * D_TV(p, q)), alpha = cascade_alpha.
    draft_confidence: chains drafted by a model ("draft", "sparse_kv", "layer_skip", "eagle") stop after
      a token the draft gave probability below this (0: off); lossless either way.
    typical_epsilon in (0, 1] (Medusa's posterior_threshold, 0.09); typical_delta > 0 (Medusa's
      posterior_alpha, 0.3). cascade_alpha: [0, 1] for chow, [-1, 1] for diff, >= 0 for opt.
    """

    method: str = "draft"
    num_speculative_tokens: int = 5
    tree: Optional[Union[List[List[int]], dict]] = None
    prompt_lookup_min: int = 1
    prompt_lookup_max: int = 4
    draft_dtype: Optional[str] = None
    draft_vocab: Optional[object] = None
    adaptive: bool = False
    acceptance: str = "lossless"
    typical_epsilon: float = 0.09
    typical_delta: float = 0.3
    cascade_rule: str = "chow"
    cascade_alpha: float = 0.1
    sink_tokens: int = 16
    window_tokens: int = 256
    draft_layers: Optional[Union[int, List[int]]] = None
    draft_confidence: float = 0.0

    def __post_init__(self):
        self.tree = self._resolve_tree()
        self._check_shape()
        self._check_self_draft()
        self._check_acceptance()

    def _resolve_tree(self):
        if isinstance(self.tree, str):
            if self.tree != "chain":
                raise ValueError(f"tree must be None, 'chain', a list of choices or a dict; got {self.tree!r}")
            return None
        return self.tree

    @property
    def is_self_draft(self) -> bool:
        return self.method in SELF_METHODS

    def _check_self_draft(self):
        c = self.draft_confidence
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c < 1.0:
            raise ValueError(f"draft_confidence must be a number in [0, 1), got {c!r}")
        if c > 0 and self.method == "ngram":
            raise ValueError("draft_confidence needs a drafting model's probabilities: n-gram drafts have none")
        if c > 0 and self.tree is not None:
            raise ValueError("draft_confidence stops chains: it needs tree=None")
        for name in ("sink_tokens", "window_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if self.method in CHAIN_ONLY_METHODS and self.tree is not None:
            raise ValueError(f"method {self.method!r} drafts chains only: it needs tree=None")
        if not self.is_self_draft:
            if self.draft_layers is not None:
                raise ValueError(f"draft_layers is for method 'layer_skip', not {self.method!r}")
            return
        if self.method == "sparse_kv":
            if self.draft_layers is not None:
                raise ValueError("draft_layers is for method 'layer_skip', not 'sparse_kv'")
            if self.window_tokens < self.num_speculative_tokens:
                raise ValueError(f"window_tokens ({self.window_tokens}) must hold the drafted chain: "
                                 f">= num_speculative_tokens ({self.num_speculative_tokens})")
            return
        layers = self.draft_layers
        if layers is None:
            raise ValueError("method 'layer_skip' needs draft_layers: an int L (the first L layers) "
                             "or a list of layer indices")
        if isinstance(layers, bool) or not isinstance(layers, (int, list, tuple)):
            raise ValueError(f"draft_layers must be an int or a list of layer indices, got {layers!r}")
        if isinstance(layers, int):
            if layers < 1:
                raise ValueError(f"draft_layers must be >= 1, got {layers}")
            return
        if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
            raise ValueError(f"draft_layers must be a non-empty list of layer indices >= 0, got {layers!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"draft_layers has a duplicate index: {list(layers)}")
        self.draft_layers = sorted(layers)

    def layer_indices(self, num_layers: int) -> List[int]:
        """The target layers a 'layer_skip' draft runs; ValueError when they do not fit a target
        of num_layers layers or would be the whole target."""
        layers = self.draft_layers
        chosen = list(range(layers)) if isinstance(layers, int) else list(layers)
        if chosen[-1] >= num_layers:
            raise ValueError(f"draft_layers {layers!r} does not fit the target's {num_layers} layers "
                             f"(indices 0 .. {num_layers - 1})")
        if len(chosen) >= num_layers:
            raise ValueError(f"draft_layers {layers!r} is every layer of the target: a layer-skip draft "
                             f"must run fewer than its {num_layers} layers")
        return chosen

    def _check_acceptance(self):
        if self.acceptance not in ACCEPTANCE:
            raise ValueError(f"acceptance must be one of {ACCEPTANCE}, got {self.acceptance!r}")
        if self.cascade_rule not in CASCADE_RULES:
            raise ValueError(f"cascade_rule must be one of {CASCADE_RULES}, got {self.cascade_rule!r}")

        def number(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            return float(v)

        eps, delta, alpha = number("typical_epsilon"), number("typical_delta"), number("cascade_alpha")
        if not 0.0 < eps <= 1.0:
            raise ValueError(f"typical_epsilon must be in (0, 1], got {eps!r}")
        if not delta > 0.0:
            raise ValueError(f"typical_delta must be > 0, got {delta!r}")
        lo, hi = CASCADE_ALPHA_RANGE[self.cascade_rule]
        if not lo <= alpha <= hi:
            raise ValueError(f"cascade_alpha must be in [{lo}, {hi}] for cascade_rule {self.cascade_rule!r}, "
                             f"got {alpha!r}")
        if self.acceptance == "cascade":
            if self.method == "ngram":
                raise ValueError("acceptance 'cascade' needs the draft's distributions q: "
                                 "n-gram drafts have none (use a drafting model)")
            if self.tree is not None:
                raise ValueError("acceptance 'cascade' verifies chains only: it needs tree=None")

    def _check_shape(self):
        if self.method not in METHODS:
            raise ValueError(f"speculative method must be one of {METHODS}, got {self.method!r}")
        if self.draft_vocab is not None and self.method != "draft":
            raise ValueError(f"draft_vocab reduces a draft model's LM head: it needs method 'draft', not {self.method!r}")
        k = self.num_speculative_tokens
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 64:
            raise ValueError(f"num_speculative_tokens must be an integer in [1, 64], got {k!r}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("need 1 <= prompt_lookup_min <= prompt_lookup_max, got "
                             f"{self.prompt_lookup_min}, {self.prompt_lookup_max}")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {self.adaptive!r}")
        tree = self.tree
        dynamic = isinstance(tree, dict) and "top_k" in tree
        if self.adaptive and tree is not None and tree != {"max_branches": 1} and not dynamic:
            raise ValueError("adaptive=True chooses chain lengths or dynamic-tree sizes: it needs tree=None "
                             "or a dynamic tree {'top_k': ..., 'max_nodes': ...}, not a static tree")
        if tree is None:
            return
        if isinstance(tree, dict):
            allowed = {"max_branches"} if self.method == "ngram" else {"top_k", "max_nodes"}
            unknown = set(tree) - allowed
            if unknown:
                raise ValueError(f"tree: unknown keys {sorted(unknown)} for method {self.method!r}; "
                                 f"expected {sorted(allowed)}")
            for key, value in tree.items():
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NODES:
                    raise ValueError(f"tree[{key!r}] must be an integer in [1, {MAX_NODES}], got {value!r}")
            if self.method != "ngram" and set(tree) != {"top_k", "max_nodes"}:
                raise ValueError("a dynamic tree needs both 'top_k' and 'max_nodes'")
            return
        if self.method == "ngram":
            raise ValueError("n-gram drafts take tree=None or {'max_branches': B}, not tree choices")
        if not isinstance(tree, (list, tuple)) or not tree:
            raise ValueError(f"tree must be None, a non-empty list of choices, or a dict; got {tree!r}")
        choices = []
        for c in tree:
            if not isinstance(c, (list, tuple)) or not c or any(
                    isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in c):
                raise ValueError(f"tree choice {c!r} must be a non-empty list of child ranks >= 0")
            choices.append(tuple(c))
        if len(set(choices)) != len(choices):
            raise ValueError("tree choices contain a duplicate path")
        if len(choices) > MAX_NODES:
            raise ValueError(f"tree choices: {len(choices)} nodes, at most {MAX_NODES}")
        present = set(choices)
        for c in choices:
            if len(c) > 1 and c[:-1] not in present:
                raise ValueError(f"tree choice {list(c)} needs its parent path {list(c[:-1])}")
            if c[-1] > 0 and c[:-1] + (c[-1] - 1,) not in present:
                raise ValueError(f"tree choice {list(c)} needs its elder sibling {list(c[:-1] + (c[-1] - 1,))}")
        self.tree = [list(c) for c in choices]

    @classmethod
    def coerce(cls, value) -> Optional["SpeculativeConfig"]:
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise ValueError(f"speculative must be a SpeculativeConfig, a dict or None, got {type(value).__name__}")
