"""The CUDA element-wise, KV, sampling and speculative-sampling ops (specdec_native._cuda)
against the CPU ops and float64 numpy. Every test needs a GPU and skips without one; the
extension is imported only inside the tests (cuda.extension()).

What is checked, and how closely:
* rmsnorm, rope, silu_mul: against the CPU op (allclose, rtol/atol 1e-5; rope's tolerance scales
  with the angle, like tests/test_ops.py) and float64 numpy. silu_mul at extreme gates.
* embedding (float32 / bfloat16 / float16 tables): bit-equal to ops.embedding on the same
  PackedWeight dtype and to numpy rounding; out-of-range ids (found on the device) raise ValueError.
* kv_append (f32 / bf16 / f16 caches, flat slots, -1 padding): bit-equal to a numpy scatter of
  the dtype-rounded rows; out-of-range slots raise ValueError.
* kv_copy_slots: bit-equal to the CPU's sequential copy loop (KVCache::copy_token in every
  layer), including chains where a later copy overwrites an earlier copy's source.
* argmax: np.argmax (first index on ties), planted ties, -inf rows, a 152k vocabulary.
* processed_probs: the same kept set and allclose (rtol 1e-5) values as ops.processed_probs for
  every config of tests/test_sampling.py (logits away from decision boundaries), per-row batched
  parameters, and a 152k vocabulary with top-k / top-p / min-p.
* sample: the same token as ops.sample for the same (seed, counter) -- at most 1 mismatch per
  1000 draws is tolerated: CUDA's expf is within 2 ulp of glibc's, so a draw can differ only
  when u lands within ~1e-7 of a cumulative boundary (expected count << 1 here); greedy rows are
  the argmax; the chi-square test of tests/test_sampling.py on 20000 draws (with its negative
  controls), and a 152k-vocabulary batch against the CPU.
* verify_tree / verify_trees / verify_chain: the same outcome as ops.verify_tree (the CPU
  verifier) on random chains and trees, with and without draft probabilities (exact: the same
  float arithmetic and Philox keys; only double sums associate differently, ~1e-16); batched
  output layout (-1 padding); and the statistical test of tests/test_verifier.py (emitted
  tokens follow the target: TV within noise, shrinking with N, far from q) for chains, i.i.d.
  trees, and a top-k/top-p filtered target.
* Bad input (shapes, dtypes, parameters, trees): ValueError.
"""
from __future__ import annotations

import numpy as np
import pytest

from specdec_native import cuda, ops
from test_sampling import CONFIGS, DIST_CONFIGS, chi2_critical, chi2_stat, draw_logits, reference_probs
from test_verifier import N as VN, POS, V as VV, _problem, _sample_rows, check_matches, f32, top_k_top_p
from helpers import BAD_VERIFY_TREE_CASES, bad_verify_tree_args

needs_gpu = pytest.mark.skipif(cuda.gpu_count() == 0, reason="no CUDA GPU on this machine")
pytestmark = needs_gpu


@pytest.fixture(scope="module")
def ext():
    e = cuda.extension()
    assert e is not None, "a GPU is present but specdec_native._cuda did not import"
    return e


def bf16_round(x):
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def dtype_round(x, dtype):
    if dtype == "float32":
        return np.asarray(x, np.float32)
    if dtype == "bfloat16":
        return bf16_round(x)
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


# ---- element-wise ----------------------------------------------------------------------------

@pytest.mark.parametrize("M,D", [(1, 64), (7, 576), (33, 1536), (2, 4097), (5, 3)])
def test_rmsnorm_matches_cpu_and_float64(ext, M, D):
    rng = np.random.default_rng(M * 31 + D)
    x = (rng.standard_normal((M, D)) * 3).astype(np.float32)
    w = rng.standard_normal(D).astype(np.float32)
    y = ext.rmsnorm(x, w, 1e-5)
    np.testing.assert_allclose(y, ops.rmsnorm(x, w, 1e-5), rtol=1e-5, atol=1e-5)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64**2).mean(axis=1, keepdims=True) + np.float64(np.float32(1e-5))) * w
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T,H,D", [(1, 1, 2), (5, 3, 64), (17, 4, 36), (64, 2, 128), (300, 8, 128)])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope_matches_cpu_and_float64(ext, T, H, D, theta):
    rng = np.random.default_rng(T * 7 + D)
    x = rng.standard_normal((T, H, D)).astype(np.float32)
    positions = rng.integers(0, 5000, size=T).astype(np.int32)
    positions[0] = 0
    inv = ops.rope_inv_freq(D, theta)
    y = ext.rope(x, positions, inv)
    assert y.shape == x.shape and y.dtype == np.float32
    # float64 reference at the float32 angle (the angle the kernels compute), so the tolerance
    # only covers sin/cos (a few ulp) and the products.
    angles = (positions.astype(np.float32)[:, None] * inv[None, :]).astype(np.float64)
    c, s = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    a, b = x[..., : D // 2].astype(np.float64), x[..., D // 2:].astype(np.float64)
    ref = np.concatenate([a * c - b * s, b * c + a * s], axis=-1)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, ops.rope(x, positions, inv_freq=inv), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ext.rope(x[:1], np.zeros(1, np.int32), inv), x[:1])  # position 0


@pytest.mark.parametrize("M,I", [(1, 1), (3, 64), (17, 37), (64, 576), (3, 70000)])
def test_silu_mul_matches_cpu_and_float64(ext, M, I):
    rng = np.random.default_rng(M + I)
    gu = (rng.standard_normal((M, 2 * I)) * 4).astype(np.float32)
    g, u = gu[:, :I].astype(np.float64), gu[:, I:].astype(np.float64)
    y = ext.silu_mul(gu)
    np.testing.assert_allclose(y, g / (1.0 + np.exp(-g)) * u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, ops.silu_mul(gu), rtol=1e-5, atol=1e-6)


def test_silu_mul_extremes(ext):
    g = np.concatenate([np.array([-1e30, -1000, -100, -88.7, 88.7, 100, 1000, 1e30, 0.0, -0.0]),
                        np.linspace(-90, 90, 502)]).astype(np.float32)
    gu = np.concatenate([g, np.ones_like(g)])[None, :]
    out = ext.silu_mul(gu)[0].astype(np.float64)
    g64 = g.astype(np.float64)
    with np.errstate(over="ignore"):
        ref = g64 / (1.0 + np.exp(-g64))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("V,D", [(10, 64), (50, 96), (7, 32), (1000, 4096)])
def test_embedding_matches_cpu(ext, dtype, V, D):
    rng = np.random.default_rng(V * D)
    table = rng.standard_normal((V, D)).astype(np.float32)
    ids = np.array([0, V - 1, 3, 3, 1, V // 2], np.int32)
    out = ext.embedding(ids, table, dtype)
    assert out.shape == (len(ids), D) and out.dtype == np.float32
    np.testing.assert_array_equal(out, ops.embedding(ids, ops.PackedWeight(table, dtype)))
    np.testing.assert_array_equal(out, dtype_round(table, dtype)[ids])
    assert ext.embedding(np.zeros(0, np.int32), table, dtype).shape == (0, D)


@pytest.mark.parametrize("bad", [10, -1, 2**31 - 1])
def test_embedding_out_of_range_ids_raise(ext, bad):
    table = np.ones((10, 32), np.float32)
    with pytest.raises(ValueError, match="out of range"):
        ext.embedding(np.array([0, bad, 1], np.int32), table)


# ---- KV cache --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("pages,page_size,heads,dim,T", [(4, 16, 2, 64, 20), (3, 1, 1, 8, 3), (9, 16, 8, 128, 100)])
def test_kv_append_matches_numpy(ext, dtype, pages, page_size, heads, dim, T):
    rng = np.random.default_rng(pages * 100 + T)
    shape = (pages, page_size, heads, dim)
    kc = dtype_round(rng.standard_normal(shape).astype(np.float32), dtype)
    vc = dtype_round(rng.standard_normal(shape).astype(np.float32), dtype)
    k = rng.standard_normal((T, heads, dim)).astype(np.float32)
    v = rng.standard_normal((T, heads, dim)).astype(np.float32)
    slots = rng.permutation(pages * page_size)[:T].astype(np.int64)
    slots[T // 2] = -1  # padding: skipped
    ko, vo = ext.kv_append(kc, vc, k, v, slots, dtype)
    rk, rv = kc.reshape(-1, heads, dim).copy(), vc.reshape(-1, heads, dim).copy()
    keep = slots >= 0
    rk[slots[keep]] = dtype_round(k[keep], dtype)
    rv[slots[keep]] = dtype_round(v[keep], dtype)
    np.testing.assert_array_equal(ko, rk.reshape(shape))
    np.testing.assert_array_equal(vo, rv.reshape(shape))


def test_kv_append_bad_input(ext):
    kc = np.zeros((2, 4, 2, 8), np.float32)
    k = np.ones((3, 2, 8), np.float32)
    with pytest.raises(ValueError, match="out of range"):
        ext.kv_append(kc, kc, k, k, np.array([0, 8, 1], np.int64))
    with pytest.raises(ValueError, match="slot_mapping"):
        ext.kv_append(kc, kc, k, k, np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="int64"):
        ext.kv_append(kc, kc, k, k, np.array([0, 1, 2], np.int32))
    with pytest.raises(ValueError, match="head_dim"):
        ext.kv_append(kc, kc, np.ones((3, 2, 4), np.float32), np.ones((3, 2, 4), np.float32),
                      np.array([0, 1, 2], np.int64))
    with pytest.raises(ValueError, match="dtype"):
        ext.kv_append(kc, kc, k, k, np.array([0, 1, 2], np.int64), "int8")


def copy_slots_reference(kc, vc, src, dst):
    """The CPU loop: for each copy in order, every layer's K and V row dst <- src."""
    L = kc.shape[0]
    k, v = kc.reshape(L, -1, *kc.shape[3:]).copy(), vc.reshape(L, -1, *vc.shape[3:]).copy()
    for s, d in zip(src, dst):
        if s != d:
            k[:, d] = k[:, s]
            v[:, d] = v[:, s]
    return k.reshape(kc.shape), v.reshape(vc.shape)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("src,dst", [
    ([5, 7, 8], [3, 4, 5]),            # the accepted path moved into sequence order
    ([3, 5], [2, 3]),                  # a later copy overwrites an earlier copy's source
    ([9, 10, 11, 12], [9, 10, 11, 12]),  # already in place
    ([30, 17, 40], [16, 17, 18]),      # across pages
    ([], []),
])
def test_kv_copy_slots_matches_cpu_loop(ext, dtype, src, dst):
    rng = np.random.default_rng(len(src))
    shape = (3, 4, 16, 2, 64)  # layers, pages, page_size, kv_heads, head_dim
    kc = dtype_round(rng.standard_normal(shape).astype(np.float32), dtype)
    vc = dtype_round(rng.standard_normal(shape).astype(np.float32), dtype)
    s, d = np.array(src, np.int64), np.array(dst, np.int64)
    ko, vo = ext.kv_copy_slots(kc, vc, s, d, dtype)
    rk, rv = copy_slots_reference(kc, vc, src, dst)
    np.testing.assert_array_equal(ko, rk)
    np.testing.assert_array_equal(vo, rv)


def test_kv_copy_slots_bad_input(ext):
    kc = np.zeros((2, 2, 4, 1, 8), np.float32)
    with pytest.raises(ValueError, match="out of range"):
        ext.kv_copy_slots(kc, kc, np.array([8], np.int64), np.array([0], np.int64))
    with pytest.raises(ValueError, match="len"):
        ext.kv_copy_slots(kc, kc, np.array([1, 2], np.int64), np.array([0], np.int64))
    with pytest.raises(ValueError, match="5-d"):
        ext.kv_copy_slots(kc[0], kc[0], np.array([1], np.int64), np.array([0], np.int64))


# ---- argmax and sampling -----------------------------------------------------------------------

@pytest.mark.parametrize("B,V", [(1, 12), (7, 1000), (4, 152064)])
def test_argmax_first_index_on_ties(ext, B, V):
    rng = np.random.default_rng(V)
    x = rng.standard_normal((B, V)).astype(np.float32)
    # Plant ties of the maximum in some rows.
    x[0, V // 2] = x[0, V - 1] = x[0].max() + 1
    if B > 2:
        x[2, :] = -np.inf
        x[1, 3:5] = 100.0
    got = ext.argmax(x)
    np.testing.assert_array_equal(got, np.argmax(x, axis=1))
    assert ext.argmax(x[0]) == int(np.argmax(x[0]))
    # temperature 0 samples the argmax and its distribution is one-hot there
    np.testing.assert_array_equal(ext.sample(x, temperature=0.0, seed=3), got)
    p = ext.processed_probs(x, temperature=0.0)
    one_hot = np.zeros((B, V), np.float32)
    one_hot[np.arange(B), got] = 1.0
    np.testing.assert_array_equal(p, one_hot)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_processed_probs_matches_cpu(ext, name, seed):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(seed * 1000 + len(name))
    logits, ref = draw_logits(rng, 12, cfg)
    got = ext.processed_probs(logits, **cfg)
    cpu = ops.processed_probs(logits, **cfg)
    np.testing.assert_array_equal(got > 0, cpu > 0)
    np.testing.assert_allclose(got, cpu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_processed_probs_per_row_parameters(ext):
    rng = np.random.default_rng(5)
    names = sorted(CONFIGS)
    rows, cfgs = [], []
    for name in names:
        logits, _ = draw_logits(rng, 12, CONFIGS[name])
        rows.append(logits)
        cfgs.append(dict(dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), **CONFIGS[name]))
    x = np.stack(rows)
    per_row = {key: np.array([c[key] for c in cfgs]) for key in ("temperature", "top_k", "top_p", "min_p")}
    got = ext.processed_probs(x, **per_row)
    for i, c in enumerate(cfgs):
        np.testing.assert_allclose(got[i], ops.processed_probs(x[i], **c), rtol=1e-5, atol=1e-7)


LARGE_CONFIGS = {
    "T0.8": dict(temperature=0.8),
    "topk50": dict(temperature=1.0, top_k=50),
    "topp0.9": dict(temperature=1.0, top_p=0.9),
    "topk40+topp0.8+minp": dict(temperature=0.7, top_k=40, top_p=0.8, min_p=0.02),
    "minp0.05": dict(temperature=1.2, min_p=0.05),
    "topk1": dict(temperature=1.0, top_k=1),
}


@pytest.mark.parametrize("name", sorted(LARGE_CONFIGS))
def test_large_vocab_matches_cpu(ext, name):
    """Qwen2's vocabulary: the radix selects over 152k candidates, the block-wide draw."""
    cfg = LARGE_CONFIGS[name]
    V, B = 152064, 16
    rng = np.random.default_rng(len(name))
    x = (rng.standard_normal((B, V)) * 3).astype(np.float32)
    got = ext.processed_probs(x, **cfg)
    seeds = np.arange(B, dtype=np.uint64) + 77
    tokens = ext.sample(x, seed=seeds, counter=np.arange(B) * 3, **cfg)
    mismatches = 0
    for b in range(B):
        cpu = ops.processed_probs(x[b], **cfg)
        # The kept set may differ only at a float boundary; these random rows have none.
        np.testing.assert_array_equal(got[b] > 0, cpu > 0)
        np.testing.assert_allclose(got[b], cpu, rtol=1e-4, atol=1e-9)
        mismatches += int(tokens[b] != ops.sample(x[b], seed=int(seeds[b]), counter=3 * b, **cfg))
    assert mismatches <= 1, mismatches


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sample_matches_cpu_sampler(ext, name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(len(name) * 13)
    logits, _ = draw_logits(rng, 12, cfg)
    n = 2000
    seed = 4321 + len(name)
    got = ext.sample(np.repeat(logits[None], n, axis=0), seed=seed, counter=np.arange(n), **cfg)
    assert got.dtype == np.int32 and got.shape == (n,)
    cpu = np.array([ops.sample(logits, seed=seed, counter=c, **cfg) for c in range(n)])
    mismatches = int((got != cpu).sum())
    # See the module docstring: at most 1 per 1000 draws, from expf rounding at a boundary.
    assert mismatches <= n // 1000, mismatches
    assert ext.sample(logits, seed=seed, counter=5, **cfg) == got[5]  # 1-d logits: one int


@pytest.mark.parametrize("name", sorted(DIST_CONFIGS))
def test_sample_distribution_chi_square(ext, name):
    cfg = DIST_CONFIGS[name]
    V, n = 12, 20000
    rng = np.random.default_rng(len(name) * 7919)
    logits, ref = draw_logits(rng, V, cfg, min_gap=0.05)
    kept = ref > 0
    draws = ext.sample(np.repeat(logits[None], n, axis=0), seed=999 + len(name), counter=np.arange(n), **cfg)
    counts = np.bincount(draws, minlength=V)
    assert counts.size == V and counts[~kept].sum() == 0, counts
    crit = chi2_critical(int(kept.sum()) - 1)
    stat = chi2_stat(counts, ref)
    assert stat < crit, (stat, crit, counts, n * ref)
    assert 0.5 * np.abs(counts / n - ref).sum() < 0.03
    # negative controls: the same draws against a different distribution are rejected
    order = np.argsort(-ref)
    swapped = ref.copy()
    swapped[order[0]], swapped[order[1]] = ref[order[1]], ref[order[0]]
    assert chi2_stat(counts, swapped) > crit
    other, _ = reference_probs(logits, temperature=1.0 if name == "T0.7" else cfg["temperature"])
    assert chi2_stat(counts, other) > crit


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(temperature=np.ones(3)), "one per row"),
])
def test_sampling_bad_parameters(ext, kwargs, match):
    x = np.zeros((2, 12), np.float32)
    with pytest.raises(ValueError, match=match):
        ext.sample(x, **kwargs)
    with pytest.raises(ValueError, match=match):
        ext.processed_probs(x, **kwargs)


def test_sampling_bad_logits(ext):
    for bad, match in [(np.zeros((2, 2, 3), np.float32), "1-d"), (np.zeros(5, np.float64), "float32"),
                       (np.zeros((2, 0), np.float32), "empty"), ([0.0, 1.0], "numpy")]:
        with pytest.raises(ValueError, match=match):
            ext.sample(bad)
        with pytest.raises(ValueError, match=match):
            ext.argmax(bad)


# ---- speculative sampling --------------------------------------------------------------------

def random_tree(rng, n):
    parents = [-1] + [int(rng.integers(-1, i)) for i in range(1, n)]
    return parents


@pytest.mark.parametrize("q_kind", ["none", "random"])
def test_verify_tree_matches_cpu_verifier(ext, q_kind):
    rng = np.random.default_rng(11 if q_kind == "none" else 12)
    for case in range(300):
        V = int(rng.choice([2, 5, 12, 300]))
        n = int(rng.integers(0, 9))
        parents = random_tree(rng, n) if n else []
        alpha = 0.3 if case % 2 else 1.0
        p = f32(rng.dirichlet(np.full(V, alpha), size=n + 1))
        if case % 5 == 0:
            p = f32(np.stack([top_k_top_p(r, 3, 0.8) for r in p]))  # zeros in the target
        q = None if q_kind == "none" else f32(rng.dirichlet(np.full(V, alpha), size=n))
        if q is None:
            # deterministic drafts: often the target's argmax, so paths get long
            tokens = [int(np.argmax(p[parents[i] + 1])) if rng.random() < 0.6 else int(rng.integers(0, V))
                      for i in range(n)]
        else:
            tokens = [int(rng.choice(V, p=q[i].astype(np.float64) / q[i].sum())) for i in range(n)]
        seed, pos = int(rng.integers(0, 2**63)), int(rng.integers(0, 2**20))
        want = ops.verify_tree(tokens, parents, p, q, seed, pos)
        got = ext.verify_tree(tokens, parents, p, q, seed, pos)
        assert (list(got[0]), got[1], got[2]) == (list(want[0]), want[1], want[2]), (case, tokens, parents)


def test_verify_trees_batched_matches_single(ext):
    rng = np.random.default_rng(21)
    V, B = 40, 25
    sizes = rng.integers(0, 7, size=B)
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    toks, pars, p_rows, q_rows, singles = [], [], [], [], []
    seeds = rng.integers(0, 2**40, size=B).astype(np.uint64)
    positions = rng.integers(0, 1000, size=B).astype(np.uint64)
    for b in range(B):
        n = int(sizes[b])
        parents = random_tree(rng, n) if n else []
        p = f32(rng.dirichlet(np.full(V, 0.5), size=n + 1))
        q = f32(rng.dirichlet(np.full(V, 0.5), size=n))
        tokens = [int(rng.integers(0, V)) for _ in range(n)]
        toks += tokens
        pars += parents
        p_rows.append(p)
        q_rows.append(q)
        singles.append(ops.verify_tree(tokens, parents, p, q, int(seeds[b]), int(positions[b])))
    acc, num, nxt, bonus = ext.verify_trees(indptr, np.array(toks, np.int32), np.array(pars, np.int32),
                                            f32(np.concatenate(p_rows)), f32(np.concatenate(q_rows)), seeds, positions)
    assert acc.shape[0] == B and acc.shape[1] >= 1
    for b, (accepted, next_token, is_bonus) in enumerate(singles):
        assert num[b] == len(accepted)
        assert list(acc[b, : num[b]]) == list(accepted)
        assert (acc[b, num[b]:] == -1).all()
        assert nxt[b] == next_token and bool(bonus[b]) == is_bonus


@pytest.mark.parametrize("with_q", [False, True])
def test_verify_chain_matches_cpu_verifier(ext, with_q):
    rng = np.random.default_rng(31 + with_q)
    B, k, V = 200, 4, 20
    p = f32(rng.dirichlet(np.full(V, 0.4), size=(B, k + 1)))
    q = f32(rng.dirichlet(np.full(V, 0.4), size=(B, k))) if with_q else None
    drafts = np.empty((B, k), np.int32)
    for b in range(B):
        for j in range(k):
            src = q[b, j] if with_q else p[b, j]  # one-hot drafts: mostly likely tokens
            drafts[b, j] = rng.choice(V, p=src.astype(np.float64) / src.sum())
    seeds = np.arange(B, dtype=np.uint64) * 7919
    out, num = ext.verify_chain(p, drafts, q, seeds, POS)
    assert out.shape == (B, k + 1) and num.shape == (B,)
    parents = list(range(-1, k - 1))
    for b in range(B):
        accepted, nxt, _ = ops.verify_tree(drafts[b].tolist(), parents, p[b], None if q is None else q[b], int(seeds[b]), POS)
        assert num[b] == len(accepted)
        np.testing.assert_array_equal(out[b, : num[b]], drafts[b, accepted])
        assert out[b, num[b]] == nxt
        assert (out[b, num[b] + 1:] == -1).all()
    assert 0 < num.mean() < k  # both acceptances and rejections happened


def test_verify_chain_empty_is_autoregressive_sampling(ext):
    rng = np.random.default_rng(41)
    V, B = 12, 500
    p = f32(rng.dirichlet(np.ones(V), size=(B, 1)))
    out, num = ext.verify_chain(p, np.zeros((B, 0), np.int32), None, np.arange(B, dtype=np.uint64), 3)
    assert (num == 0).all()
    for b in range(0, B, 25):
        assert out[b, 0] == ops.verify_tree([], [], p[b], None, b, 3)[1]


def _first_emitted_chain(ext, p, q, drafts):
    n, k = drafts.shape
    out, num = ext.verify_chain(f32(np.broadcast_to(p, (n,) + p.shape)), drafts.astype(np.int32),
                                f32(np.broadcast_to(q, (n,) + q.shape)), np.arange(n, dtype=np.uint64), POS)
    return out[:, 0]


@pytest.mark.parametrize("k", [1, 3])
def test_chain_output_follows_target(ext, k):
    rng, p, q = _problem(20 + k, k + 1)
    drafts = _sample_rows(rng, q[:k], 4 * VN)
    first = _first_emitted_chain(ext, f32(p), f32(q[:k]), drafts)
    check_matches(first, p[0], q[0], f"gpu chain k={k}")


def test_chain_output_follows_filtered_target(ext):
    rng, p_raw, q = _problem(60, 3)
    p = np.stack([top_k_top_p(row, 6, 0.85) for row in p_raw])
    drafts = _sample_rows(rng, q[:2], 4 * VN)
    assert (p[0][drafts[:, 0]] == 0).mean() > 0.1
    first = _first_emitted_chain(ext, f32(p), f32(q[:2]), drafts)
    check_matches(first, p[0], q[0], "gpu top-k/top-p chain")


@pytest.mark.parametrize("m", [2, 3])
def test_iid_tree_output_follows_target(ext, m):
    rng, p, q = _problem(30 + m, 2)
    n = 4 * VN
    kids = _sample_rows(rng, np.repeat(q[:1], m, axis=0), n)
    grand = _sample_rows(rng, np.repeat(q[1:], m, axis=0), n)
    tokens = np.concatenate([kids, grand], axis=1).astype(np.int32)  # [n, 2m]
    parents = np.array([-1] * m + list(range(m)), np.int32)
    p_rows = f32(np.concatenate([p[:1], np.repeat(p[1:], 2 * m, axis=0)]))  # [1 + 2m, V]
    q_rows = f32(np.concatenate([np.repeat(q[:1], m, axis=0), np.repeat(q[1:], m, axis=0)]))
    indptr = (np.arange(n + 1) * 2 * m).astype(np.int32)
    acc, num, nxt, _ = ext.verify_trees(indptr, tokens.reshape(-1), np.tile(parents, n), f32(np.tile(p_rows, (n, 1))),
                                        f32(np.tile(q_rows, (n, 1))), np.arange(n, dtype=np.uint64), POS)
    first = np.where(num > 0, tokens[np.arange(n), np.maximum(acc[:, 0], 0)], nxt)
    check_matches(first, p[0], q[0], f"gpu iid tree m={m}")


@pytest.mark.parametrize("case", BAD_VERIFY_TREE_CASES)
def test_verify_tree_bad_input(ext, case):
    args = bad_verify_tree_args(case, VV)
    with pytest.raises(ValueError):
        ops.verify_tree(**args)
    with pytest.raises(ValueError):
        ext.verify_tree(**args)


def test_verify_chain_and_trees_bad_input(ext):
    p = f32(np.full((2, 3, VV), 1.0 / VV))
    d = np.zeros((2, 2), np.int32)
    with pytest.raises(ValueError, match="k \\+ 1"):
        ext.verify_chain(p, np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="out of range"):
        ext.verify_chain(p, np.full((2, 2), VV, np.int32))
    with pytest.raises(ValueError, match="draft_probs"):
        ext.verify_chain(p, d, f32(np.full((2, 3, VV), 0.1)))
    with pytest.raises(ValueError, match="seeds"):
        ext.verify_chain(p, d, None, np.arange(3, dtype=np.uint64))
    with pytest.raises(ValueError, match="int32"):
        ext.verify_chain(p, d.astype(np.int64))
    rows = f32(np.full((5, VV), 1.0 / VV))
    with pytest.raises(ValueError, match="node_indptr"):
        ext.verify_trees(np.array([0, 2, 4], np.int32), np.zeros(3, np.int32), np.array([-1, 0, -1], np.int32), rows)
    with pytest.raises(ValueError, match="parent"):
        ext.verify_trees(np.array([0, 2, 3], np.int32), np.zeros(3, np.int32), np.array([-1, 0, 0], np.int32), rows)
