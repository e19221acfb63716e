"""ops.verify_tree, the lossless multi-draft rejection sampler, on small vocabularies.

* Exact: with one-hot target rows every outcome is determined (accepted path, next token, bonus).
* Statistical (the shape of vLLM's test_rejection_sampling_approximates_target_distribution):
  drafts are sampled here with numpy, verified over many seeds, and the emitted tokens' histogram
  must match the target p: the total-variation distance is within a few times its sampling noise
  (E[TV] ~ sum_i sqrt(p_i (1 - p_i)) / sqrt(2 pi N)), shrinks when N grows 4x, and is far below
  the distance to the draft distribution q. A negative control (a wrong q handed to the verifier)
  shows the same check fails. Every run is seeded, so the test is deterministic.
* Seeds, and bad input.
"""
from __future__ import annotations

import numpy as np
import pytest

from specdec_native import ops
from helpers import BAD_VERIFY_TREE_CASES, bad_verify_tree_args

V = 12
POS = 7          # output position the root row decides (keys the random numbers)
N = 20_000       # the small sample; the large one is 4N (its first N runs are the small one)
TV_SLACK = 3.0   # allowed TV, in units of its expected sampling noise


# ---- helpers ---------------------------------------------------------------------------------

def dirichlet(rng, n_rows, vocab=V, alpha=1.0):
    return rng.dirichlet(np.full(vocab, alpha), size=n_rows)


def onehot(tok, vocab=V):
    r = np.zeros(vocab, np.float32)
    r[tok] = 1.0
    return r


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def hist(tokens, vocab=V):
    return np.bincount(np.asarray(tokens), minlength=vocab) / len(tokens)


def tv(a, b):
    return 0.5 * float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).sum())


def expected_tv(p, n):
    """E[TV(empirical of n draws, p)] to first order: sum_i E|X_i/n - p_i| / 2 with the normal
    approximation E|Z| = sqrt(2/pi) sigma."""
    p = np.asarray(p, np.float64)
    return float(np.sqrt(p * (1 - p)).sum() / np.sqrt(2 * np.pi * n))


def emitted(tokens, out):
    """The tokens one verify call emits: the accepted drafts, then the recovered/bonus token."""
    accepted, nxt, _ = out
    return [tokens[i] for i in accepted] + [nxt]


def top_k_top_p(p, k, top_p):
    """The target after top-k then top-p (smallest prefix whose mass reaches top_p), renormalized."""
    p = np.asarray(p, np.float64)
    order = np.argsort(-p, kind="stable")
    keep = order[:k]
    kept = p[keep] / p[keep].sum()
    n = int(np.searchsorted(np.cumsum(kept), top_p) + 1)
    out = np.zeros_like(p)
    out[keep[:n]] = p[keep[:n]]
    return out / out.sum()


def check_matches(first, p, q=None, what=""):
    """The emitted-token histogram matches p (TV within noise at N and 4N, shrinking), and is far
    from q. Returns (TV at N, TV at 4N)."""
    first = np.asarray(first)
    assert len(first) == 4 * N
    p = np.asarray(p, np.float64)
    small, large = hist(first[:N], len(p)), hist(first, len(p))
    tv_small, tv_large = tv(small, p), tv(large, p)
    assert tv_small < TV_SLACK * expected_tv(p, N), (what, tv_small, expected_tv(p, N))
    assert tv_large < TV_SLACK * expected_tv(p, 4 * N), (what, tv_large, expected_tv(p, 4 * N))
    assert tv_large < tv_small, (what, tv_small, tv_large)
    # Tokens the target excludes never appear.
    assert large[p == 0].sum() == 0, what
    if q is not None:
        assert tv(large, q) > 10 * TV_SLACK * expected_tv(p, 4 * N), (what, tv(large, q))
    return tv_small, tv_large


# ---- exact: one-hot targets ------------------------------------------------------------------

def rows(*toks, vocab=V):
    return f32(np.stack([onehot(t, vocab) for t in toks]))


@pytest.mark.parametrize("q_kind", ["none", "onehot", "random"])
def test_onehot_chain_outcomes(q_kind):
    """With one-hot targets, p(x) is 0 or 1, so accept/reject does not depend on the random
    numbers or on q: the outcome is fixed for every seed."""
    rng = np.random.default_rng(1)
    chain, parents = [3, 5, 7], [-1, 0, 1]

    def q_rows(tokens):
        if q_kind == "none":
            return None
        if q_kind == "onehot":
            return rows(*tokens)
        q = dirichlet(rng, len(tokens))
        for i, t in enumerate(tokens):  # the drafts must be possible under q
            q[i, t] += 0.2
        return f32(q / q.sum(1, keepdims=True))

    for seed in range(20):
        # Match at depth 1, mismatch at depth 2: accepted [0], recovered token 9.
        out = ops.verify_tree(chain, parents, rows(3, 9, 0, 0), q_rows(chain), seed, POS)
        assert out == ([0], 9, False)
        # Mismatch at once.
        assert ops.verify_tree(chain, parents, rows(4, 5, 7, 1), q_rows(chain), seed, POS) == ([], 4, False)
        # Everything accepted: the bonus comes from the last row.
        assert ops.verify_tree(chain, parents, rows(3, 5, 7, 11), q_rows(chain), seed, POS) == ([0, 1, 2], 11, True)
        # A single draft, accepted, then the bonus.
        assert ops.verify_tree([2], [-1], rows(2, 6), q_rows([2]), seed, POS) == ([0], 6, True)


@pytest.mark.parametrize("q_kind", ["none", "random"])
def test_onehot_tree_outcomes(q_kind):
    rng = np.random.default_rng(2)
    # Root children 0: tok 3, 1: tok 5, 2: tok 7; node 3 (tok 1) under node 1, node 4 (tok 2)
    # under node 0, node 5 (tok 4) under node 3.
    tokens = [3, 5, 7, 1, 2, 4]
    parents = [-1, -1, -1, 1, 0, 3]

    def q_rows():
        if q_kind == "none":
            return None
        q = dirichlet(rng, len(tokens)) + 0.1 * np.stack([onehot(t) for t in tokens])
        return f32(q / q.sum(1, keepdims=True))

    def target(root, per_node):
        return rows(root, *per_node)

    for seed in range(20):
        # First child rejected, second accepted, its child accepted, its grandchild accepted;
        # bonus from node 5's row.
        out = ops.verify_tree(tokens, parents, target(5, [0, 1, 0, 4, 0, 10]), q_rows(), seed, POS)
        assert out == ([1, 3, 5], 10, True)
        # Second child accepted, its child rejected: recovered token from node 1's row.
        out = ops.verify_tree(tokens, parents, target(5, [0, 8, 0, 0, 0, 0]), q_rows(), seed, POS)
        assert out == ([1], 8, False)
        # Third child accepted (a leaf): bonus from its row.
        out = ops.verify_tree(tokens, parents, target(7, [0, 0, 6, 0, 0, 0]), q_rows(), seed, POS)
        assert out == ([2], 6, True)
        # No child matches: recovered from the root row.
        out = ops.verify_tree(tokens, parents, target(9, [0] * 6), q_rows(), seed, POS)
        assert out == ([], 9, False)
        # First child accepted, its only child accepted, bonus.
        out = ops.verify_tree(tokens, parents, target(3, [2, 0, 0, 0, 11, 0]), q_rows(), seed, POS)
        assert out == ([0, 4], 11, True)


def test_empty_tree_is_a_bonus_from_the_root_row_like_autoregressive_sampling():
    rng = np.random.default_rng(3)
    logits = f32(rng.normal(size=V) * 2)
    p = f32(ops.processed_probs(logits, 1.0))[None]
    for seed in range(200):
        acc, tok, bonus = ops.verify_tree([], [], p, None, seed, POS)
        assert acc == [] and bonus
        # The same random number as plain sampling at this position.
        assert tok == ops.sample(logits, 1.0, seed=seed, counter=POS)
    assert ops.verify_tree([], [], rows(6), None, 0, 0) == ([], 6, True)


# ---- statistical -----------------------------------------------------------------------------

def _verify_all(tokens_per_run, parents, p_rows, q_rows_per_run):
    """Runs verify once per run (seed = run index); returns the first emitted token of each."""
    first = np.empty(len(tokens_per_run), np.int64)
    for r, toks in enumerate(tokens_per_run):
        q = q_rows_per_run(r) if callable(q_rows_per_run) else q_rows_per_run
        out = ops.verify_tree(toks, parents, p_rows, q, r, POS)
        first[r] = toks[out[0][0]] if out[0] else out[1]
    return first


def _sample_rows(rng, q, n):
    """n samples from each distribution q[i] (vectorized inverse CDF): [n, len(q)]."""
    q = np.asarray(q, np.float64)
    cdf = np.cumsum(q, axis=1)
    cdf[:, -1] = 1.0
    u = rng.random((n, len(q)))
    return np.stack([np.searchsorted(cdf[i], u[:, i], side="right") for i in range(len(q))], axis=1)


def _without_replacement(rng, q, m, n):
    """n draws of m distinct tokens from q, sequentially without replacement (Gumbel top-m):
    [n, m]."""
    g = np.log(np.asarray(q, np.float64))[None, :] - np.log(-np.log(rng.random((n, len(q)))))
    return np.argsort(-g, axis=1)[:, :m]


def _problem(seed, n_rows, alpha_q=1.0):
    rng = np.random.default_rng(seed)
    p = dirichlet(rng, n_rows)
    q = dirichlet(rng, n_rows, alpha=alpha_q)
    return rng, p, q


def test_no_drafts_samples_the_target():
    rng, p, q = _problem(10, 1)
    first = _verify_all([[]] * (4 * N), [], f32(p[:1]), None)
    check_matches(first, p[0], q[0], "no drafts")


@pytest.mark.parametrize("k", [1, 3])
def test_chain_sampled_from_q(k):
    rng, p, q = _problem(20 + k, k + 1)
    drafts = _sample_rows(rng, q[:k], 4 * N)
    first = _verify_all(drafts.tolist(), list(range(-1, k - 1)), f32(p), f32(q[:k]))
    check_matches(first, p[0], q[0], f"chain k={k}")


@pytest.mark.parametrize("m", [2, 3])
def test_tree_iid_siblings(m):
    """m root children drawn independently from the same q (duplicates happen), each with one
    child of its own."""
    rng, p, q = _problem(30 + m, 2)
    kids = _sample_rows(rng, np.repeat(q[:1], m, axis=0), 4 * N)
    grand = _sample_rows(rng, np.repeat(q[1:], m, axis=0), 4 * N)
    assert (kids[:, 0] == kids[:, 1]).mean() > 0.02  # duplicates do occur
    tokens = np.concatenate([kids, grand], axis=1).tolist()
    parents = [-1] * m + list(range(m))
    p_rows = f32(np.concatenate([p[:1], np.repeat(p[1:], 2 * m, axis=0)]))
    q_rows = f32(np.concatenate([np.repeat(q[:1], m, axis=0), np.repeat(q[1:], m, axis=0)]))
    first = _verify_all(tokens, parents, p_rows, q_rows)
    check_matches(first, p[0], q[0], f"iid tree m={m}")


@pytest.mark.parametrize("m", [2, 3])
def test_tree_siblings_without_replacement(m):
    """Sibling j is drawn from q with siblings 0..j-1 removed (renormalized), and that
    renormalized q is its draft_probs row."""
    rng, p, q = _problem(40 + m, 1, alpha_q=0.7)
    kids = _without_replacement(rng, q[0], m, 4 * N)
    # The q rows of each distinct ordered prefix, cached.
    cache = {}

    def q_rows(r):
        key = tuple(kids[r])
        if key not in cache:
            out = np.empty((m, V))
            left = q[0].copy()
            for j, t in enumerate(key):
                out[j] = left / left.sum()
                left[t] = 0.0
            cache[key] = f32(out)
        return cache[key]

    first = _verify_all(kids.tolist(), [-1] * m, f32(np.repeat(p, m + 1, axis=0)), q_rows)
    check_matches(first, p[0], q[0], f"without replacement m={m}")


def test_deterministic_tree_top2_of_q():
    """Deterministic drafts (the top-2 tokens of q as root children, the top token of a second
    q under the first) are verified as one-hot q (draft_probs=None): still exactly p."""
    rng, p, q = _problem(50, 2)
    a, b = np.argsort(-q[0])[:2]
    c = int(np.argmax(q[1]))
    tokens, parents = [int(a), int(b), c], [-1, -1, 0]
    p_rows = f32(np.stack([p[0], p[1], p[1], p[1]]))
    first = _verify_all([tokens] * (4 * N), parents, p_rows, None)
    check_matches(first, p[0], None, "one-hot tree")
    # The top-2 of q really are drafted, so the target must reject them part of the time.
    assert 0.05 < hist(first)[[a, b]].sum() < 0.95


@pytest.mark.parametrize("shape", ["chain", "iid_tree"])
def test_top_k_top_p_filtered_target(shape):
    """The target after top-k/top-p (zero outside the kept set): the emitted tokens follow the
    filtered p, and tokens outside the kept set never appear, though the draft proposes them."""
    rng, p_raw, q = _problem(60, 3)
    p = np.stack([top_k_top_p(row, 6, 0.85) for row in p_raw])
    assert 2 <= (p[0] > 0).sum() <= 6
    if shape == "chain":
        drafts = _sample_rows(rng, q[:2], 4 * N)
        parents, q_rows = [-1, 0], f32(q[:2])
        p_rows = f32(p)
    else:
        drafts = _sample_rows(rng, np.repeat(q[:1], 3, axis=0), 4 * N)
        parents, q_rows = [-1, -1, -1], f32(np.repeat(q[:1], 3, axis=0))
        p_rows = f32(np.concatenate([p[:1], np.repeat(p[1:2], 3, axis=0)]))
    assert (p[0][drafts[:, 0]] == 0).mean() > 0.1  # drafts outside the kept set are common
    first = _verify_all(drafts.tolist(), parents, p_rows, q_rows)
    check_matches(first, p[0], q[0], f"top-k/top-p {shape}")


def _two_token_model(seed, vocab):
    """A 2-step 'model': p0 and q0 at the root, P1[x] and Q1[x] after token x."""
    rng = np.random.default_rng(seed)
    return rng, dirichlet(rng, 1, vocab)[0], dirichlet(rng, vocab, vocab), dirichlet(rng, 1, vocab)[0], \
        dirichlet(rng, vocab, vocab)


@pytest.mark.parametrize("shape", ["chain", "iid_tree"])
def test_first_two_tokens_joint(shape):
    """The joint of the first two emitted tokens equals p0(x) P1[x](y), with target rows that
    depend on the path. When a step emits only one token, a second step (position + 1, the same
    seed, a fresh draft after it) decides the second, as the engine does."""
    W = 8
    rng, p0, P1, q0, Q1 = _two_token_model(70, W)
    P2 = np.full(W, 1.0 / W)  # rows past depth 2 (their tokens are not checked)
    R = 4 * N
    if shape == "chain":
        x1 = _sample_rows(rng, q0[None], R)[:, 0]
        cdf = np.cumsum(Q1, 1)
        x2 = np.array([np.searchsorted(cdf[a], u, side="right") for a, u in zip(x1, rng.random(R))]).clip(max=W - 1)
    else:
        kids = _sample_rows(rng, np.stack([q0, q0]), R)
        cdf = np.cumsum(Q1, 1)
        u = rng.random((R, 2))
        grand = np.array([[np.searchsorted(cdf[kids[r, j]], u[r, j], side="right") for j in range(2)]
                          for r in range(R)]).clip(max=W - 1)
    u_follow = rng.random(R)
    cdf_q1 = np.cumsum(Q1, 1)
    pairs = np.empty((R, 2), np.int64)
    for r in range(R):
        if shape == "chain":
            toks, parents = [int(x1[r]), int(x2[r])], [-1, 0]
            p_rows = f32(np.stack([p0, P1[x1[r]], P2]))
            q_rows = f32(np.stack([q0, Q1[x1[r]]]))
        else:
            a, b = int(kids[r, 0]), int(kids[r, 1])
            toks, parents = [a, b, int(grand[r, 0]), int(grand[r, 1])], [-1, -1, 0, 1]
            p_rows = f32(np.stack([p0, P1[a], P1[b], P2, P2]))
            q_rows = f32(np.stack([q0, q0, Q1[a], Q1[b]]))
        e = emitted(toks, ops.verify_tree(toks, parents, p_rows, q_rows, r, POS))
        if len(e) == 1:  # the next step: root row P1[t1], one fresh draft from Q1[t1]
            t1 = e[0]
            y = min(int(np.searchsorted(cdf_q1[t1], u_follow[r], side="right")), W - 1)
            e += emitted([y], ops.verify_tree([y], [-1], f32(np.stack([P1[t1], P2])), f32(Q1[t1][None]), r, POS + 1))
        pairs[r] = e[:2]
    joint = (p0[:, None] * P1).ravel()
    first = pairs[:, 0] * W + pairs[:, 1]
    check_matches(first, joint, (q0[:, None] * Q1).ravel(), f"joint {shape}")
    check_matches(pairs[:, 0], p0, q0, f"joint {shape}: first token")


def test_negative_control_wrong_draft_probs_is_detected():
    """Drafts from a skewed q, but the verifier is told q is uniform: the residual is wrong and
    the same check fails clearly (TV many times its noise). Proves the statistical tests can fail."""
    rng, p, q = _problem(80, 2, alpha_q=0.3)
    drafts = _sample_rows(rng, q[:1], 4 * N)
    uniform = f32(np.full((1, V), 1.0 / V))
    first = _verify_all(drafts.tolist(), [-1], f32(p), uniform)
    bad = tv(hist(first), p[0])
    assert bad > 5 * TV_SLACK * expected_tv(p[0], 4 * N), bad
    with pytest.raises(AssertionError):
        check_matches(first, p[0], None, "wrong q")
    # The same drafts with the right q pass.
    good = _verify_all(drafts.tolist(), [-1], f32(p), f32(q[:1]))
    check_matches(good, p[0], q[0], "right q")


# ---- seeds -----------------------------------------------------------------------------------

def test_seeded_determinism():
    rng, p, q = _problem(90, 4)
    tokens, parents = [1, 4, 4, 2], [-1, -1, 0, 1]
    p_rows = f32(np.concatenate([p, p[:1]]))
    q_rows = f32(np.stack([q[0], q[0], q[1], q[1]]))
    outs = {}
    for seed in range(60):
        a = ops.verify_tree(tokens, parents, p_rows, q_rows, seed, POS)
        assert ops.verify_tree(tokens, parents, p_rows, q_rows, seed, POS) == a
        outs[seed] = (tuple(a[0]), a[1], a[2])
    assert len(set(outs.values())) > 5  # different seeds differ somewhere
    by_pos = {(tuple(o[0]), o[1]) for o in (ops.verify_tree(tokens, parents, p_rows, q_rows, 3, pos)
                                           for pos in range(60))}
    assert len(by_pos) > 5  # and so do positions
    # Big seeds and positions are fine and deterministic.
    big = ops.verify_tree(tokens, parents, p_rows, q_rows, 2**64 - 1, 2**40)
    assert ops.verify_tree(tokens, parents, p_rows, q_rows, 2**64 - 1, 2**40) == big


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", BAD_VERIFY_TREE_CASES)
def test_bad_input(case):
    args = bad_verify_tree_args(case, V)
    with pytest.raises(ValueError):
        ops.verify_tree(**args)
