"""Sampling: the processed distribution against a numpy reference, Philox4x32-10 against the
published known-answer vectors and a pure-Python implementation of the published algorithm,
and sample() against processed_probs statistically (chi-square) and exactly (inverse CDF)."""
import math

import numpy as np
import pytest

from specdec_native import ops

philox4x32 = ops.philox4x32

M32 = 0xFFFFFFFF

# ---------------------------------------------------------------------------------------------
# Philox4x32-10 from the paper (Salmon et al., SC'11) / Random123


def philox_ref(ctr, key, rounds=10):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(rounds):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
        k0 = (k0 + 0x9E3779B9) & M32
        k1 = (k1 + 0xBB67AE85) & M32
    return (c0, c1, c2, c3)


def test_python_philox_matches_random123_known_answers():
    # Random123's kat_vectors for philox4x32 with 10 rounds.
    assert philox_ref((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox_ref((M32,) * 4, (M32, M32)) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert philox_ref((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


def test_philox_known_answer():
    assert tuple(philox4x32(0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)


def split(v):
    return (v & M32, v >> 32)


def test_philox_matches_reference_implementation():
    rng = np.random.default_rng(0)
    pairs = [(0, 0), (0, 1), (1, 0), (M32, M32), (2**64 - 1, 2**64 - 1), (2**32, 2**32 + 5),
             (0xDEADBEEF, 12345), (42, 2**63)]
    pairs += [(int(a), int(b)) for a, b in rng.integers(0, 2**63, size=(200, 2), dtype=np.uint64)]
    for seed, counter in pairs:
        c0, c1 = split(counter)
        assert tuple(philox4x32(seed, counter)) == philox_ref((c0, c1, 0, 0), split(seed)), (seed, counter)


def test_philox_uniform_is_top_24_bits_of_a_lane():
    for seed, counter in [(0, 0), (7, 3), (2**40 + 1, 2**33 + 9), (123456789, 987654321)]:
        r = philox4x32(seed, counter)
        for lane in range(4):
            u = ops.philox_uniform(seed, counter, lane)
            assert u == (r[lane] >> 8) / 2.0**24
            assert 0.0 <= u < 1.0


def test_philox_uniform_is_uniform():
    u = np.array([ops.philox_uniform(5, c, 0) for c in range(20000)])
    hist = np.histogram(u, bins=10, range=(0, 1))[0]
    stat = ((hist - 2000) ** 2 / 2000).sum()
    assert stat < chi2_critical(9), stat
    assert len(np.unique(u)) > 19900


# ---------------------------------------------------------------------------------------------
# the processed distribution


def reference_probs(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """float64 reference; also returns the margins of each decision (for choosing inputs that
    are not on a float boundary)."""
    x = np.asarray(logits, np.float64)
    V = x.size
    if temperature == 0:
        p = np.zeros(V)
        p[int(np.argmax(x))] = 1.0
        return p, np.inf
    z = x / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.ones(V, bool)
    margin = np.inf
    if 0 < top_k < V:
        keep[order[top_k:]] = False
    if top_p < 1.0:
        q = np.where(keep, p, 0.0)
        q /= q.sum()
        cum = np.cumsum(q[order])
        n = int(np.argmax(cum >= top_p)) + 1  # smallest prefix whose mass reaches top_p
        keep[order[n:]] = False
        margin = min(margin, np.abs(cum[: max(1, keep.sum())] - top_p).min())
    if min_p > 0.0:
        ratio = p / p.max()
        keep &= ratio >= min_p
        others = np.arange(V) != np.argmax(p)  # the top token (ratio exactly 1) always stays
        margin = min(margin, np.abs(ratio[others] - min_p).min())
    out = np.where(keep, p, 0.0)
    return out / out.sum(), margin


def draw_logits(rng, V, cfg, min_margin=1e-3, min_gap=0.0):
    """Random logits (no ties) whose reference decisions are not within min_margin of a
    boundary, and whose two most likely kept tokens differ by at least min_gap."""
    for _ in range(1000):
        logits = (rng.standard_normal(V) * 1.5).astype(np.float32)
        if len(np.unique(logits)) != V:
            continue
        p, margin = reference_probs(logits, **cfg)
        top2 = np.sort(p)[::-1][:2]
        if margin > min_margin and (top2[0] - top2[1] >= min_gap):
            return logits, p
    raise AssertionError("could not draw logits away from boundaries")


CONFIGS = {
    "T1": dict(temperature=1.0),
    "T0.7": dict(temperature=0.7),
    "T2.5": dict(temperature=2.5),
    "topk1": dict(temperature=1.0, top_k=1),
    "topk5": dict(temperature=1.0, top_k=5),
    "topk=V": dict(temperature=0.8, top_k=12),
    "topk>V": dict(temperature=0.8, top_k=100),
    "topp0.8": dict(temperature=1.0, top_p=0.8),
    "topp0.5": dict(temperature=0.6, top_p=0.5),
    "topp0.01": dict(temperature=1.0, top_p=0.01),
    "minp0.1": dict(temperature=1.0, min_p=0.1),
    "minp0.3": dict(temperature=1.3, min_p=0.3),
    "minp1": dict(temperature=1.0, min_p=1.0),
    "topk+topp": dict(temperature=1.0, top_k=6, top_p=0.7),
    "all": dict(temperature=0.9, top_k=8, top_p=0.9, min_p=0.05),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_processed_probs_matches_reference(name, seed):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(seed * 1000 + len(name))
    logits, ref = draw_logits(rng, 12, cfg)
    p = ops.processed_probs(logits, **cfg)
    assert p.dtype == np.float32 and p.shape == (12,)
    np.testing.assert_array_equal(p == 0, ref == 0)  # the same kept set
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-7)
    assert abs(float(p.astype(np.float64).sum()) - 1.0) < 1e-5


def test_processed_probs_large_vocab():
    rng = np.random.default_rng(9)
    for cfg in (dict(temperature=0.8), dict(temperature=1.0, top_k=50, top_p=0.9, min_p=0.02)):
        logits, ref = draw_logits(rng, 5000, cfg, min_margin=1e-5)
        p = ops.processed_probs(logits, **cfg)
        np.testing.assert_array_equal(p == 0, ref == 0)
        np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("scale", [12.0, 3.0, 1.0, 0.05])
def test_top_p_alone_on_a_152k_vocabulary(scale):
    """Top-p without top-k sorts only the candidates the nucleus needs, growing the sorted prefix
    (256, 2048, ...): the kept set must be the full sort's whether the nucleus holds a few tokens
    (peaked), hundreds or thousands, or nearly everything (scale 0.05: almost flat)."""
    rng = np.random.default_rng(int(scale * 100))
    V = 151936
    for top_p in (0.5, 0.9, 0.99):
        cfg = dict(temperature=0.9, top_p=top_p)
        for _ in range(20):
            logits = (rng.standard_normal(V) * scale).astype(np.float32)
            ref, margin = reference_probs(logits, **cfg)
            if margin > 1e-7 and len(np.unique(logits)) == V:
                break
        p = ops.processed_probs(logits, **cfg)
        np.testing.assert_array_equal(p == 0, ref == 0)
        np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-9)


def test_temperature_zero_is_one_hot_at_first_argmax():
    logits = np.array([1.0, 3.0, -2.0, 3.0, 2.0], np.float32)
    p = ops.processed_probs(logits, temperature=0.0)
    np.testing.assert_array_equal(p, [0, 1, 0, 0, 0])
    for seed in range(5):
        assert ops.sample(logits, temperature=0.0, seed=seed, counter=seed * 7) == 1
    # sampling options do not change greedy
    assert ops.sample(logits, temperature=0.0, top_k=3, top_p=0.5, min_p=0.2) == 1
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.standard_normal(50).astype(np.float32)
        assert ops.sample(x, temperature=0.0) == int(np.argmax(x))
        assert int(np.argmax(ops.processed_probs(x, temperature=0.0))) == int(np.argmax(x))


def test_masked_logits():
    logits = np.array([0.5, -np.inf, 1.0, -np.inf], np.float32)
    p = ops.processed_probs(logits, temperature=1.0)
    ref = np.exp([0.5, 1.0]) / np.exp([0.5, 1.0]).sum()
    np.testing.assert_allclose(p[[0, 2]], ref, rtol=1e-6)
    assert p[1] == 0 and p[3] == 0
    for c in range(200):
        assert ops.sample(logits, seed=1, counter=c) in (0, 2)


# ---------------------------------------------------------------------------------------------
# sample(): determinism, exact inverse CDF, and the empirical distribution


def test_same_seed_and_counter_same_token():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(64).astype(np.float32)
    a = [ops.sample(logits, temperature=1.0, seed=3, counter=c) for c in range(300)]
    b = [ops.sample(logits, temperature=1.0, seed=3, counter=c) for c in range(300)]
    assert a == b
    other = [ops.sample(logits, temperature=1.0, seed=4, counter=c) for c in range(300)]
    assert a != other  # a different seed is a different stream
    assert len(set(a)) > 10


def test_sample_is_inverse_cdf_of_philox_uniform():
    rng = np.random.default_rng(2)
    cfg = dict(temperature=0.8, top_k=10, top_p=0.95)
    logits, _ = draw_logits(rng, 16, cfg)
    p = ops.processed_probs(logits, **cfg).astype(np.float64)
    cdf = np.cumsum(p)
    seed = 2**40 + 17
    checked = 0
    for counter in range(3000):
        r0 = philox_ref((counter & M32, counter >> 32, 0, 0), split(seed))[0]
        u = (r0 >> 8) / 2.0**24
        if np.abs(cdf - u).min() < 1e-5:
            continue  # too close to a boundary to call
        expected = int(np.searchsorted(cdf, u, side="right"))
        assert ops.sample(logits, seed=seed, counter=counter, **cfg) == expected
        checked += 1
    assert checked > 2900


def chi2_sf(x, df):
    """P(X > x) for X ~ chi-square(df), from the closed forms for integer df."""
    h = x / 2.0
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= h / i
            total += term
        return math.exp(-h) * total
    total = math.erfc(math.sqrt(h))
    term = math.sqrt(x) * math.sqrt(2.0 / math.pi) * math.exp(-h)  # i = 1: x^(1/2) / 1
    for i in range(1, (df - 1) // 2 + 1):
        total += term
        term *= x / (2 * i + 1)
    return total


def chi2_critical(df, alpha=1e-5):
    """Upper critical value of chi-square(df) at significance alpha, by bisection on chi2_sf."""
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if chi2_sf(mid, df) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def chi2_stat(counts, probs):
    n = counts.sum()
    expected = n * probs
    if (counts[expected == 0] > 0).any():
        return np.inf
    nz = expected > 0
    return float((((counts - expected) ** 2)[nz] / expected[nz]).sum())


DIST_CONFIGS = {
    "T0.7": dict(temperature=0.7),
    "topk4": dict(temperature=1.0, top_k=4),
    "topp0.8": dict(temperature=1.0, top_p=0.8),
    "minp0.1": dict(temperature=1.0, min_p=0.1),
    "all": dict(temperature=0.9, top_k=7, top_p=0.9, min_p=0.05),
}


@pytest.mark.parametrize("name", sorted(DIST_CONFIGS))
def test_sample_distribution_matches_processed_probs(name):
    cfg = DIST_CONFIGS[name]
    V, N = 12, 20000
    rng = np.random.default_rng(len(name) * 7919)
    # The two most likely tokens differ by >= 0.05, so swapping them is a detectably
    # different distribution (expected chi-square ~ N * 0.05^2 * (1/p1 + 1/p2) > 100).
    logits, ref = draw_logits(rng, V, cfg, min_gap=0.05)
    p = ops.processed_probs(logits, **cfg).astype(np.float64)
    kept = p > 0
    assert kept.sum() >= 3
    seed = 1234 + len(name)
    draws = np.array([ops.sample(logits, seed=seed, counter=c, **cfg) for c in range(N)])
    counts = np.bincount(draws, minlength=V)
    assert counts.size == V
    # Tokens outside the kept set never appear.
    assert counts[~kept].sum() == 0, counts
    df = int(kept.sum()) - 1
    crit = chi2_critical(df)
    stat = chi2_stat(counts, ref)
    assert stat < crit, (stat, crit, counts, N * ref)
    # Total variation shrinks like sqrt(V / N) (~0.025 here); allow a generous 0.03.
    assert 0.5 * np.abs(counts / N - ref).sum() < 0.03

    # The test can fail: the same draws against a different distribution are rejected.
    order = np.argsort(-ref)
    swapped = ref.copy()
    swapped[order[0]], swapped[order[1]] = ref[order[1]], ref[order[0]]
    assert chi2_stat(counts, swapped) > crit
    if name == "T0.7":
        other, _ = reference_probs(logits, temperature=1.0)
        assert chi2_stat(counts, other) > crit
    else:
        unfiltered, _ = reference_probs(logits, temperature=cfg["temperature"])
        assert chi2_stat(counts, unfiltered) > crit


def test_chi2_critical_values():
    # Textbook quantiles: chi2(1) 0.95 -> 3.841, chi2(2) 1 - 1e-5 -> -2 ln 1e-5, chi2(3) 0.99 ->
    # 11.345, chi2(10) 0.95 -> 18.307, chi2(11) 0.999 -> 31.264.
    assert abs(chi2_critical(1, 0.05) - 3.841) < 1e-3
    assert abs(chi2_critical(2) - (-2 * math.log(1e-5))) < 1e-9
    assert abs(chi2_critical(3, 0.01) - 11.345) < 1e-3
    assert abs(chi2_critical(10, 0.05) - 18.307) < 1e-3
    assert abs(chi2_critical(11, 0.001) - 31.264) < 1e-3


# ---------------------------------------------------------------------------------------------
# bad parameters


BAD = [
    dict(temperature=-0.5),
    dict(temperature=float("nan")),
    dict(temperature=float("inf")),
    dict(top_p=0.0),
    dict(top_p=1.5),
    dict(top_p=float("nan")),
    dict(min_p=-0.1),
    dict(min_p=1.5),
    dict(top_k=-2),
]


@pytest.mark.parametrize("bad", BAD, ids=[str(b) for b in BAD])
def test_bad_parameters_raise_value_error(bad):
    logits = np.zeros(8, np.float32)
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        ops.sample(logits, **bad)
    with pytest.raises(ValueError, match=key):
        ops.processed_probs(logits, **bad)


def test_bad_logits():
    with pytest.raises(ValueError, match="float32"):
        ops.sample(np.zeros(8))
    with pytest.raises(ValueError, match="1-d"):
        ops.processed_probs(np.zeros((2, 4), np.float32))
