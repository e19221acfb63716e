"""Lossy acceptance rules (cpp/spec/lossy_verifier.h): Medusa's typical acceptance and
speculative cascades (Narasimhan et al. 2024). Neither reproduces the target's distribution; the
tests check that each does exactly what its definition says.

* Exact, on hand-built distributions (vocab 6-8): typical acceptance accepts iff
  p(x) > min(eps, delta * exp(-H(p))) (entropy recomputed here in float64), first accepted child
  in index order; each cascade rule's deferral decision matches its definition; at T = 0 the
  cascade accepts iff the draft equals argmax q (keep) / argmax p (defer).
* Statistical (the shape of test_verifier.py's checks): over many seeds the emitted tokens'
  histogram matches pi = (1 - delta) q + delta p (TV within a few times its sampling noise, and
  far from the other distribution); delta = 1 everywhere is the lossless verifier, seed by seed;
  delta = 0 accepts every draft.
* End to end through LLM at T = 0: strict typical thresholds and an always-deferring cascade are
  token-identical to the target; a never-deferring cascade emits the draft model's greedy tokens
  with one target token (the bonus) after each chain of k.
* Bad parameters -> ValueError.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from specdec_native import ops
from specdec_native._core import ops as core_ops

V = 8
POS = 5
N = 20_000
TV_SLACK = 3.0


def f32(a):
    return np.ascontiguousarray(np.asarray(a, np.float32))


def norm(v):
    v = np.asarray(v, np.float64)
    return v / v.sum()


def entropy64(p):
    p = np.asarray(p, np.float64)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def tv(a, b):
    return 0.5 * float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).sum())


def expected_tv(p, n):
    p = np.asarray(p, np.float64)
    return float(np.sqrt(p * (1 - p)).sum() / np.sqrt(2 * np.pi * n))


def defer_ref(rule, alpha, p, q):
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    if rule == "chow":
        return q.max() < 1 - alpha
    if rule == "diff":
        return p.max() - q.max() > alpha
    return q.max() < p.max() - alpha * 0.5 * np.abs(p - q).sum()


def defer_margin(rule, alpha, p, q):
    """Distance of the rule's quantity from its threshold (skip near-ties in random checks)."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    if rule == "chow":
        return abs(q.max() - (1 - alpha))
    if rule == "diff":
        return abs(p.max() - q.max() - alpha)
    return abs(q.max() - (p.max() - alpha * 0.5 * np.abs(p - q).sum()))


# ---- typical acceptance: exact ---------------------------------------------------------------

def test_entropy_is_float64_exact():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = f32(rng.dirichlet(np.full(V, 0.5)))
        assert core_ops.entropy(p) == pytest.approx(entropy64(p), rel=1e-12, abs=1e-12)
    assert core_ops.entropy(f32([1, 0, 0, 0])) == 0.0
    assert core_ops.entropy(f32([0.25] * 4)) == pytest.approx(math.log(4), rel=1e-7)


def test_typical_threshold_by_hand():
    # Row with a known entropy; the threshold is the min of eps and delta * exp(-H).
    p = norm([0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.01, 0.01])
    h = entropy64(f32(p))
    e_h = math.exp(-h)                       # ~0.18
    rows = f32(np.stack([p, np.full(V, 1 / V)]))
    for eps, delta in [(0.09, 0.3), (0.2, 10.0), (0.12, 0.6), (1.0, 0.5), (0.3, 1.0)]:
        thr = min(eps, delta * e_h)
        for x in range(V):
            if abs(float(np.float32(p[x])) - thr) < 1e-6:
                continue
            acc, nxt, bonus = core_ops.typical_accept_tree([x], [-1], rows, eps, delta, True, 0, POS)
            want = float(np.float32(p[x])) > thr
            assert (acc == [0]) == want, (eps, delta, x, thr)
            if want:  # leaf accepted: the bonus is the argmax of its (uniform) row: token 0
                assert (nxt, bonus) == (0, True)
            else:     # rejected: the root row's argmax
                assert (nxt, bonus) == (0, False)


def test_typical_random_rows_match_the_formula():
    rng = np.random.default_rng(1)
    checked = 0
    for trial in range(400):
        p = rng.dirichlet(np.full(V, rng.choice([0.2, 1.0, 5.0])))
        rows = f32(np.stack([p, rng.dirichlet(np.ones(V))]))
        eps = float(rng.uniform(0.01, 1.0))
        delta = float(rng.uniform(0.05, 3.0))
        thr = min(eps, delta * math.exp(-entropy64(rows[0])))
        x = int(rng.integers(V))
        if abs(float(rows[0, x]) - thr) < 1e-6:
            continue
        acc, _, _ = core_ops.typical_accept_tree([x], [-1], rows, eps, delta, True, 0, 0)
        assert (acc == [0]) == (float(rows[0, x]) > thr), (trial, p, eps, delta, x)
        checked += 1
    assert checked > 350


def test_typical_tree_walk_takes_the_first_accepted_child():
    # Root children: node0 tok 1, node1 tok 2, node2 tok 3; node3 tok 4 under node1, node4 tok 5
    # under node2. eps = 0.2, delta large: threshold 0.2 on every row.
    tokens = [1, 2, 3, 4, 5]
    parents = [-1, -1, -1, 1, 2]
    root = norm([0.05, 0.10, 0.30, 0.35, 0.05, 0.05, 0.05, 0.05])  # tok1 rejected; 2 and 3 pass
    rows = [root] + [np.full(V, 1 / V)] * 5
    rows[2] = norm([0.1, 0.1, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1])  # node1's row: tok 4 (node3) passes
    rows[4] = norm([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3, 0.1])  # node3's row (a leaf): argmax 6
    rows = f32(np.stack(rows))
    acc, nxt, bonus = core_ops.typical_accept_tree(tokens, parents, rows, 0.2, 1e6, True, 0, POS)
    # node1 (tok 2) is the first accepted child even though node2 (tok 3) is likelier.
    assert (acc, nxt, bonus) == ([1, 3], 6, True)
    # Reject node3: the path stops at node1, next token = argmax of node1's row (4), not a bonus.
    rows2 = rows.copy()
    rows2[2] = f32(norm([0.1, 0.1, 0.1, 0.1, 0.15, 0.1, 0.25, 0.1]))
    acc, nxt, bonus = core_ops.typical_accept_tree(tokens, parents, rows2, 0.2, 1e6, True, 0, POS)
    assert (acc, nxt, bonus) == ([1], 6, False)
    # Every root child rejected: the root's argmax.
    rows3 = rows.copy()
    rows3[0] = f32(norm([0.5, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]))
    assert core_ops.typical_accept_tree(tokens, parents, rows3, 0.2, 1e6, True, 0, POS) == ([], 0, False)


def test_typical_sampled_next_token_follows_the_row():
    """At T > 0 the token after the path is drawn from p of that row (Philox keyed by seed and
    output position), so its histogram over seeds matches p."""
    p = norm([0.30, 0.02, 0.20, 0.10, 0.15, 0.08, 0.10, 0.05])
    rows = f32(np.stack([p, norm(np.arange(1, V + 1))]))
    # Token 1 (p = 0.02) is rejected at eps = 0.09: every outcome is a recovered token.
    draws = np.array([core_ops.typical_accept_tree([1], [-1], rows, 0.09, 0.3, False, s, POS)[1] for s in range(N)])
    h = np.bincount(draws, minlength=V) / N
    assert tv(h, p) <= TV_SLACK * expected_tv(p, N), tv(h, p)
    # Reproducible, and position-keyed like verify_sampling's recovered token.
    for s in range(20):
        a = core_ops.typical_accept_tree([1], [-1], rows, 0.09, 0.3, False, s, POS)
        assert a == core_ops.typical_accept_tree([1], [-1], rows, 0.09, 0.3, False, s, POS)
    # Same key as the lossless verifier's recovered token: with a draft p cannot accept
    # (p[x] = 0) both draw from p with the same uniform.
    zero = rows.copy()
    zero[0] = f32(norm([0.3, 0.0, 0.2, 0.1, 0.15, 0.1, 0.1, 0.05]))
    for s in range(50):
        t = core_ops.typical_accept_tree([1], [-1], zero, 0.09, 0.3, False, s, POS)
        lossless = ops.verify_tree([1], [-1], zero, None, s, POS)
        assert t[:3] == lossless, s


# ---- cascades: the deferral rules ------------------------------------------------------------

@pytest.mark.parametrize("rule", ["chow", "diff", "opt"])
def test_cascade_rule_matches_its_definition(rule):
    rng = np.random.default_rng({"chow": 3, "diff": 4, "opt": 5}[rule])
    seen = {True: 0, False: 0}
    for trial in range(600):
        p = f32(rng.dirichlet(np.full(V, rng.choice([0.1, 0.5, 2.0]))))
        q = f32(rng.dirichlet(np.full(V, rng.choice([0.1, 0.5, 2.0]))))
        alpha = float(np.float32(rng.uniform(0, 1) if rule != "diff" else rng.uniform(-0.5, 0.5)))
        if rule == "opt":
            alpha = float(np.float32(rng.uniform(0, 2)))
        if defer_margin(rule, alpha, p, q) < 1e-6:
            continue
        want = bool(defer_ref(rule, alpha, p, q))
        assert core_ops.cascade_defer(p, q, rule, alpha) == want, (rule, trial)
        seen[want] += 1
        # The same decision inside the chain verifier (greedy: reported per position).
        out = core_ops.cascade_verify_chain([int(np.argmax(q))], f32(np.stack([p, p])), f32(q[None]),
                                            rule, alpha, True, 0, POS)
        assert out[3] == [want]
    assert min(seen.values()) > 50, seen


def test_cascade_rules_by_hand():
    p = f32([0.6, 0.2, 0.1, 0.1, 0, 0, 0, 0])
    q = f32([0.1, 0.5, 0.2, 0.2, 0, 0, 0, 0])
    # chow: max q = 0.5: defer iff 0.5 < 1 - alpha
    assert core_ops.cascade_defer(p, q, "chow", 0.4) is True
    assert core_ops.cascade_defer(p, q, "chow", 0.6) is False
    # diff: max p - max q = 0.1
    assert core_ops.cascade_defer(p, q, "diff", 0.05) is True
    assert core_ops.cascade_defer(p, q, "diff", 0.15) is False
    # opt: D_TV = 0.5 * (0.5 + 0.3 + 0.1 + 0.1) = 0.5; defer iff 0.5 < 0.6 - 0.5 alpha
    assert core_ops.cascade_defer(p, q, "opt", 0.1) is True     # 0.55
    assert core_ops.cascade_defer(p, q, "opt", 0.3) is False    # 0.45


def test_cascade_greedy_is_argmax_of_pi():
    p0 = f32(norm([0.1, 0.5, 0.1, 0.1, 0.1, 0.05, 0.03, 0.02]))  # argmax p: 1
    q0 = f32(norm([0.1, 0.1, 0.4, 0.1, 0.1, 0.1, 0.05, 0.05]))   # argmax q: 2 (max 0.4)
    p1 = f32(norm([0.1, 0.1, 0.1, 0.5, 0.1, 0.05, 0.03, 0.02]))  # argmax 3
    rows = f32(np.stack([p0, p1]))
    # never defer (chow, alpha = 1): pi = onehot(argmax q) -> draft 2 accepted, bonus argmax p1.
    assert core_ops.cascade_verify_chain([2], rows, q0[None], "chow", 1.0, True, 0, POS) == ([0], 3, True, [False])
    # ... a draft that is not argmax q is rejected in favour of argmax q.
    assert core_ops.cascade_verify_chain([4], rows, q0[None], "chow", 1.0, True, 0, POS) == ([], 2, False, [False])
    # always defer (chow, alpha = 0): pi = onehot(argmax p): the draft 2 is rejected for 1.
    assert core_ops.cascade_verify_chain([2], rows, q0[None], "chow", 0.0, True, 0, POS) == ([], 1, False, [True])
    assert core_ops.cascade_verify_chain([1], rows, q0[None], "chow", 0.0, True, 0, POS) == ([0], 3, True, [True])


# ---- cascades: the emitted distribution ------------------------------------------------------

def _pi(rule, alpha, p, q):
    return np.asarray(p if defer_ref(rule, alpha, p, q) else q, np.float64)


CASES = [  # rule, alpha, p rows [3, V], q rows [2, V]: positions 0 and 1 take opposite decisions
    ("chow", 0.45, [[0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0, 0], [0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.1, 0.1],
                    [0.3, 0.3, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]],
     [[0.1, 0.3, 0.3, 0.1, 0.1, 0.05, 0.05, 0], [0.05, 0.05, 0.6, 0.1, 0.1, 0.05, 0.05, 0]]),
    ("diff", 0.1, [[0.1, 0.6, 0.1, 0.05, 0.05, 0.05, 0.05, 0], [0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05],
                   [0.125] * 8],
     [[0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05, 0], [0.05, 0.05, 0.1, 0.5, 0.1, 0.1, 0.05, 0.05]]),
    ("opt", 0.5, [[0.05, 0.05, 0.7, 0.05, 0.05, 0.05, 0.05, 0], [0.1, 0.3, 0.1, 0.1, 0.2, 0.1, 0.05, 0.05],
                  [0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2]],
     [[0.2, 0.2, 0.2, 0.2, 0.1, 0.05, 0.05, 0], [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.65]]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cascade_emits_pi(case):
    """Drafts x0 ~ q0, x1 ~ q1 (numpy); over N seeds: the first emitted token ~ pi0, the second
    (given the first draft accepted) ~ pi1, the bonus (given both accepted) ~ p2."""
    rule, alpha, p_rows, q_rows = case
    p = f32([norm(r) for r in p_rows])
    q = f32([norm(r) for r in q_rows])
    d0, d1 = defer_ref(rule, alpha, p[0], q[0]), defer_ref(rule, alpha, p[1], q[1])
    assert d0 != d1, "the case should take both decisions"
    assert defer_margin(rule, alpha, p[0], q[0]) > 1e-3 and defer_margin(rule, alpha, p[1], q[1]) > 1e-3
    pi0, pi1 = _pi(rule, alpha, p[0], q[0]), _pi(rule, alpha, p[1], q[1])
    rng = np.random.default_rng(11)
    first, second, third = [], [], []
    for s in range(N):
        x0 = int(rng.choice(V, p=norm(q[0])))
        x1 = int(rng.choice(V, p=norm(q[1])))
        acc, nxt, bonus, deferred = core_ops.cascade_verify_chain([x0, x1], p, q, rule, alpha, False, s, POS)
        assert deferred == [d0, d1][:len(deferred)]
        emitted = [[x0, x1][i] for i in acc] + [nxt]
        first.append(emitted[0])
        if len(acc) >= 1:
            second.append(emitted[1])
        if len(acc) == 2:
            assert bonus
            third.append(emitted[2])
    for got, want, other in [(first, pi0, p[0] if not d0 else q[0]), (second, pi1, p[1] if not d1 else q[1]),
                             (third, np.asarray(p[2], np.float64), None)]:
        n = len(got)
        assert n > 2000
        h = np.bincount(got, minlength=V) / n
        noise = expected_tv(want, n)
        assert tv(h, want) <= TV_SLACK * noise, (rule, tv(h, want), noise)
        if other is not None:  # negative control: clearly not the other distribution
            assert tv(h, other) > 10 * noise
    # keep (delta = 0) accepts every draft from q: pi = q.
    if not d0:
        assert len(second) == N


@pytest.mark.parametrize("q_kind", ["none", "random"])
def test_cascade_always_deferring_is_the_lossless_verifier(q_kind):
    """diff with alpha = -1 defers everywhere: pi = p, and the outcome equals ops.verify_tree's
    for every seed (same random numbers)."""
    rng = np.random.default_rng(7)
    for s in range(300):
        n = int(rng.integers(0, 4))
        p = f32(rng.dirichlet(np.full(V, 0.7), size=n + 1))
        if q_kind == "none":
            q = None
            toks = [int(t) for t in rng.integers(0, V, size=n)]
        else:
            q = f32(rng.dirichlet(np.full(V, 0.7), size=n)) if n else None
            toks = [int(rng.choice(V, p=norm(q[i]))) for i in range(n)]
        out = core_ops.cascade_verify_chain(toks, p, q, "diff", -1.0, False, s, POS)
        assert all(out[3])
        assert out[:3] == ops.verify_tree(toks, list(range(-1, n - 1)), p, q, s, POS), s


def test_cascade_never_deferring_accepts_every_draft():
    rng = np.random.default_rng(8)
    for s in range(300):
        p = f32(rng.dirichlet(np.full(V, 0.7), size=4))
        q = f32(rng.dirichlet(np.full(V, 0.7), size=3))
        toks = [int(rng.choice(V, p=norm(q[i]))) for i in range(3)]
        for rule in ("chow", "diff"):  # alpha = 1: max q < 0 / max p - max q > 1 never hold
            acc, nxt, bonus, deferred = core_ops.cascade_verify_chain(toks, p, q, rule, 1.0, False, s, POS)
            assert (acc, bonus, deferred) == ([0, 1, 2], True, [False] * 3)
            assert p[3, nxt] > 0


# ---- end to end ------------------------------------------------------------------------------

K = 3
NTOK = 24


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    from helpers import greedy_params, load_llm, prompt, write_checkpoint, write_noisy_copy, write_tokenizer

    root = tmp_path_factory.mktemp("lossy")
    # A wider init makes the target's distributions peaked enough that p(argmax) > 1/2 happens
    # (so the strict typical test accepts drafts); light noise: drafts partly accepted.
    target = write_checkpoint(root / "target", "llama", seed=31, initializer_range=0.6)
    write_noisy_copy(target, root / "noisy", scale=0.05, seed=5)
    for name in ("target", "noisy"):
        write_tokenizer(root / name, vocab_size=256)
    prompts = [prompt(5, seed=1), prompt(17, seed=2), [7, 8, 9, 10] * 4]
    params = [greedy_params(NTOK) for _ in prompts]
    target_llm = load_llm(root / "target")
    draft_llm = load_llm(root / "noisy")
    ref = [o.token_ids for o in target_llm.generate(prompt_token_ids=prompts, sampling_params=params)]
    draft_ref = [o.token_ids for o in draft_llm.generate(prompt_token_ids=prompts, sampling_params=params)]
    return dict(root=root, prompts=prompts, params=params, ref=ref, draft_ref=draft_ref,
                target_llm=target_llm, draft_llm=draft_llm, load=load_llm)


def _spec(e2e, **spec):
    spec.setdefault("num_speculative_tokens", K)
    return e2e["load"](e2e["root"] / "target", draft=str(e2e["root"] / "noisy"), speculative=spec)


def _gen(llm, e2e):
    outs = llm.generate(prompt_token_ids=e2e["prompts"], sampling_params=e2e["params"])
    return [o.token_ids for o in outs], outs


def test_e2e_draft_differs_from_target(e2e):
    assert e2e["ref"] != e2e["draft_ref"]  # otherwise the checks below prove nothing


def test_e2e_lossless_is_still_the_default(e2e):
    llm = _spec(e2e)
    assert llm.engine.acceptance.mode == "lossless"
    toks, outs = _gen(llm, e2e)
    assert toks == e2e["ref"]
    e2e["lossless_accepted"] = [o.metrics["accepted"] for o in outs]


def test_e2e_strict_typical_equals_target_greedy(e2e):
    # eps = 0.5 and a huge delta: threshold 0.5, so only a token with p > 1/2 (the argmax) is
    # accepted, and the next token is the argmax: exactly the target's greedy output.
    llm = _spec(e2e, acceptance="typical", typical_epsilon=0.5, typical_delta=1e6)
    assert llm.engine.acceptance.mode == "typical"
    toks, outs = _gen(llm, e2e)
    assert toks == e2e["ref"]
    assert sum(o.metrics["accepted"] for o in outs) > 0  # not trivially "nothing accepted"


def test_e2e_loose_typical_accepts_everything(e2e):
    # A tiny threshold accepts (almost surely) every draft.
    llm = _spec(e2e, acceptance="typical", typical_epsilon=1e-12, typical_delta=1e-12)
    toks, outs = _gen(llm, e2e)
    assert all(o.metrics["acceptance_rate"] == 1.0 for o in outs)


@pytest.mark.parametrize("rule", ["diff", "chow"])
def test_e2e_always_deferring_cascade_equals_target_greedy(e2e, rule):
    alpha = {"diff": -1.0, "chow": 0.0}[rule]  # chow: defer when max q < 1 (always, in practice)
    llm = _spec(e2e, acceptance="cascade", cascade_rule=rule, cascade_alpha=alpha)
    toks, outs = _gen(llm, e2e)
    assert toks == e2e["ref"]
    assert 0 < sum(o.metrics["accepted"] for o in outs) < sum(o.metrics["drafted"] for o in outs)
    if "lossless_accepted" in e2e:  # delta = 1 everywhere at T = 0 is the greedy verifier
        assert [o.metrics["accepted"] for o in outs] == e2e["lossless_accepted"]


def _interleaved(e2e, ids):
    """The never-deferring cascade at T = 0: the target's first token (prefill), then per step K
    draft-greedy tokens and the target's argmax (the bonus)."""
    tgt, drf = e2e["target_llm"], e2e["draft_llm"]
    ctx = list(ids)
    ctx.append(int(np.argmax(tgt.prompt_logits(ctx)[-1])))
    while len(ctx) - len(ids) < NTOK:
        for _ in range(K):
            ctx.append(int(np.argmax(drf.prompt_logits(ctx)[-1])))
        ctx.append(int(np.argmax(tgt.prompt_logits(ctx)[-1])))
    return ctx[len(ids):len(ids) + NTOK]


@pytest.mark.parametrize("rule", ["chow", "diff"])
def test_e2e_never_deferring_cascade_follows_the_draft(e2e, rule):
    llm = _spec(e2e, acceptance="cascade", cascade_rule=rule, cascade_alpha=1.0)
    toks, outs = _gen(llm, e2e)
    assert all(o.metrics["acceptance_rate"] == 1.0 for o in outs)
    expected = [_interleaved(e2e, p) for p in e2e["prompts"]]
    assert toks == expected
    assert toks != e2e["ref"]


def test_e2e_opt_cascade_runs_between(e2e):
    llm = _spec(e2e, acceptance="cascade", cascade_rule="opt", cascade_alpha=0.5)
    toks, outs = _gen(llm, e2e)
    assert [len(t) for t in toks] == [NTOK] * len(toks)


@pytest.mark.parametrize("spec", [dict(acceptance="typical"), dict(acceptance="cascade", cascade_rule="opt", cascade_alpha=0.3)])
def test_e2e_sampled_lossy_runs_repeat(e2e, spec):
    from specdec_native import SamplingParams

    llm = _spec(e2e, **spec)
    params = [SamplingParams(max_tokens=NTOK, temperature=0.8, seed=s, ignore_eos=True) for s in range(3)]
    a = [o.token_ids for o in llm.generate(prompt_token_ids=e2e["prompts"], sampling_params=params)]
    b = [o.token_ids for o in llm.generate(prompt_token_ids=e2e["prompts"], sampling_params=params)]
    assert a == b


# ---- bad parameters --------------------------------------------------------------------------

@pytest.mark.parametrize("kw,field", [
    (dict(acceptance="fast"), "acceptance"),
    (dict(typical_epsilon=0.0), "typical_epsilon"),
    (dict(typical_epsilon=1.5), "typical_epsilon"),
    (dict(typical_epsilon=float("nan")), "typical_epsilon"),
    (dict(typical_delta=0.0), "typical_delta"),
    (dict(typical_delta=-1.0), "typical_delta"),
    (dict(typical_delta="big"), "typical_delta"),
    (dict(cascade_rule="max"), "cascade_rule"),
    (dict(cascade_rule="chow", cascade_alpha=1.5), "cascade_alpha"),
    (dict(cascade_rule="chow", cascade_alpha=-0.1), "cascade_alpha"),
    (dict(cascade_rule="diff", cascade_alpha=-1.5), "cascade_alpha"),
    (dict(cascade_rule="opt", cascade_alpha=-0.1), "cascade_alpha"),
    (dict(cascade_rule="opt", cascade_alpha=float("inf")), "cascade_alpha"),
    (dict(acceptance="cascade", method="ngram"), "n-gram"),
    (dict(acceptance="cascade", tree=[[0], [1]]), "chains"),
    (dict(acceptance="cascade", tree={"top_k": 2, "max_nodes": 4}), "chains"),
])
def test_bad_config(kw, field):
    from specdec_native import SpeculativeConfig

    with pytest.raises(ValueError, match=field):
        SpeculativeConfig(**kw)


def test_good_configs():
    from specdec_native import SpeculativeConfig

    SpeculativeConfig(acceptance="typical", method="ngram")
    SpeculativeConfig(acceptance="typical", tree=[[0], [1]])
    SpeculativeConfig(acceptance="cascade", cascade_rule="diff", cascade_alpha=-0.5)
    SpeculativeConfig(acceptance="cascade", cascade_rule="opt", cascade_alpha=5.0)


def test_core_rejects_bad_parameters(e2e):
    from specdec_native import _core

    c = _core.AcceptanceConfig()
    with pytest.raises(ValueError, match="acceptance"):
        c.mode = "fast"
    with pytest.raises(ValueError, match="cascade_rule"):
        c.cascade_rule = "max"
    c.typical_epsilon = 2.0
    with pytest.raises(ValueError, match="typical_epsilon"):
        c.validate()
    p = f32(np.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="cascade_alpha"):
        core_ops.cascade_verify_chain([1], p, None, "chow", 2.0)
    with pytest.raises(ValueError, match="typical_delta"):
        core_ops.typical_accept_tree([1], [-1], p, 0.1, 0.0)
    with pytest.raises(ValueError, match="cascade_rule"):
        core_ops.cascade_defer(p[0], p[0], "max", 0.1)
    # The engine refuses a cascade over n-gram drafts (no q) even if the config is bypassed.
    llm = e2e["load"](e2e["root"] / "target", speculative={"method": "ngram"})
    c = _core.AcceptanceConfig()
    c.mode = "cascade"
    with pytest.raises(ValueError, match="n-gram"):
        llm.engine.set_acceptance(c)
    # ... and over a draft tree.
    llm = _spec(e2e, tree=[[0], [1]])
    with pytest.raises(ValueError, match="chains"):
        llm.engine.set_acceptance(c)
