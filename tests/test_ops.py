"""The CPU ops against float64 numpy references written here, on every kernel set this CPU has
(portable C++, AVX2, AVX-512 VNNI, AMX tiles), plus one test per kind of bad input."""
import zlib

import numpy as np
import pytest

from specdec_native import ops
from specdec_native.ops import tree_mask

from helpers import CPU_ISAS

# ---------------------------------------------------------------------------------------------
# references: weight rounding done in numpy, independently of the C++ packers


def round_bf16(w):
    """float32 -> bfloat16 (round to nearest even on the dropped 16 bits) -> float64."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


def round_f16(w):
    return np.asarray(w, dtype=np.float32).astype(np.float16).astype(np.float64)


def quantize_q8_parts(a):
    """Q8_0 blocks of 32 along each row: scale = absmax / 127, q = lround(a / scale) (ties away
    from zero), in float32 arithmetic as a C quantizer does it. Returns (q, scale) as float64,
    q [rows, K], scale [rows, K / 32]."""
    a = np.asarray(a, dtype=np.float32)
    n, k = a.shape
    assert k % 32 == 0
    blocks = a.reshape(n, k // 32, 32)
    scale = (np.abs(blocks).max(axis=2, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    t = (blocks * inv).astype(np.float32).astype(np.float64)
    q = np.sign(t) * np.floor(np.abs(t) + 0.5)  # C lround: half away from zero
    assert np.abs(q).max() <= 127
    return q.reshape(n, k), scale[:, :, 0].astype(np.float64)


def quantize_q8(w):
    """The float64 values an int8 weight stands for: q * scale."""
    q, scale = quantize_q8_parts(w)
    return q * np.repeat(scale, 32, axis=1)


def quantize_q4_parts(a):
    """4-bit blocks of 32 along each row (like GGUF Q4_1): min and scale = (max - min) / 15, both
    rounded to float16, q = floor((a - min) / scale + 0.5) clamped to 0..15, in float32
    arithmetic as the C quantizer does it. Returns (q, scale, min) as float64, q [rows, K],
    scale and min [rows, K / 32]."""
    a = np.asarray(a, dtype=np.float32)
    n, k = a.shape
    assert k % 32 == 0
    blocks = a.reshape(n, k // 32, 32)
    lo, hi = blocks.min(axis=2, keepdims=True), blocks.max(axis=2, keepdims=True)
    scale = ((hi - lo) / np.float32(15)).astype(np.float16).astype(np.float32)
    mn = lo.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    v = ((blocks - mn).astype(np.float32) * inv).astype(np.float32)
    q = np.where(v > 0, np.floor((v + np.float32(0.5)).astype(np.float32)), 0)
    q = np.minimum(q, 15).astype(np.float64)
    return q.reshape(n, k), scale[:, :, 0].astype(np.float64), mn[:, :, 0].astype(np.float64)


def quantize_q4(w):
    """The float64 values a 4-bit weight stands for: q * scale + min."""
    q, scale, mn = quantize_q4_parts(w)
    return q * np.repeat(scale, 32, axis=1) + np.repeat(mn, 32, axis=1)


QUANTIZED = ("int8", "int4")


def reference_weight(w, dtype):
    return {
        "float32": lambda a: np.asarray(a, np.float64),
        "bfloat16": round_bf16,
        "float16": round_f16,
        "int8": quantize_q8,
        "int4": quantize_q4,
    }[dtype](w)


ALL_ISAS = CPU_ISAS


@pytest.fixture(params=ALL_ISAS)
def kernel_set(request):
    """Runs the test once per CPU kernel set; the ones this CPU lacks skip."""
    if request.param not in ops.available_cpu_isas():
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    prev = ops.set_cpu_isa(request.param)
    try:
        assert ops.cpu_isa() == request.param
        yield request.param
    finally:
        ops.set_cpu_isa(prev)


def test_cpu_isa_switches_and_restores():
    available = ops.available_cpu_isas()
    assert available[0] == "portable" and set(available) <= set(ALL_ISAS)
    best = ops.cpu_isa()
    assert best == available[-1]
    prev = ops.set_cpu_isa("portable")
    try:
        assert prev == best and ops.cpu_isa() == "portable"
    finally:
        assert ops.set_cpu_isa("best") == "portable"
    assert ops.cpu_isa() == best
    with pytest.raises(ValueError, match="available: portable"):
        ops.set_cpu_isa("sse9")


# ---------------------------------------------------------------------------------------------
# matmul

MATMUL_SHAPES = [  # (M, K, N)
    (1, 32, 1),
    (2, 64, 5),
    (3, 96, 64),
    (5, 576, 130),
    (17, 64, 130),
    (64, 96, 5),
    (100, 576, 64),
    (100, 32, 130),
    (17, 576, 1),
    (1, 576, 130),
    (16, 160, 33),    # AMX: one full 16-token tile, a half superblock, a partial 16-row tile
    (33, 1024, 48),   # AMX: three 11-token tiles
    (4, 64, 9),       # quantized tiles of 4, 7 (or 4 + 3), 8 + 7 (or 5 x 3) and 6 + 6 + 5 tokens
    (7, 128, 12),
    (15, 64, 33),
    (17, 192, 8),
]
ODD_K_SHAPES = [(3, 36, 5), (17, 4, 64), (2, 100, 130), (64, 12, 7)]  # K % 8 != 0


def check_matmul(M, K, N, dtype, with_bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = (rng.standard_normal((N, K)) * 0.5).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    pw = ops.PackedWeight(w, dtype)
    assert pw.dtype == dtype
    assert tuple(pw.shape) == (N, K)
    y = ops.matmul(x, pw, bias).astype(np.float64)
    assert y.shape == (M, N)
    wr = reference_weight(w, dtype)
    x64 = x.astype(np.float64)
    b64 = bias.astype(np.float64) if with_bias else np.zeros(N)
    if dtype in QUANTIZED:
        # Quantized weights run against activations quantized per block of 32 (Q8_0 x Q8_0 and
        # Q4_1 x Q8_1, as GGUF): y = sum over blocks of sx * (xq . w), w the dequantized weights.
        xq, sx = quantize_q8_parts(x)
        nb = K // 32
        ref = (np.einsum("mbi,nbi->mnb", xq.reshape(M, nb, 32), wr.reshape(N, nb, 32)) * sx[:, None, :]).sum(axis=2) + b64
        scale = (np.einsum("mbi,nbi->mnb", np.abs(xq).reshape(M, nb, 32), np.abs(wr).reshape(N, nb, 32)) * sx[:, None, :]).sum(axis=2) + np.abs(b64)
        # Whatever the activations' rounding, y stays within its bound of the exact product
        # with the quantized weights: |x - xq*sx| <= sx/2 per element.
        act_bound = (np.abs(wr).reshape(N, nb, 32).sum(axis=2) @ (sx / 2).T).T
        weight_only = x64 @ wr.T + b64
        assert (np.abs(y - weight_only) <= act_bound * (1 + 1e-4) + 1e-5 * scale).all()
    else:
        ref = x64 @ wr.T + b64
        scale = np.abs(x64) @ np.abs(wr).T + np.abs(b64)
    err = np.abs(y - ref)
    bad = err > 1e-5 * scale + 1e-30
    assert not bad.any(), f"max err {err.max()} at {np.argwhere(bad)[:5]}, scale {scale.max()}"


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int8", "int4"])
@pytest.mark.parametrize("M,K,N", MATMUL_SHAPES)
def test_matmul(kernel_set, M, K, N, dtype, with_bias):
    check_matmul(M, K, N, dtype, with_bias, seed=M * 1000003 + K * 1009 + N)


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("M,K,N", ODD_K_SHAPES)
def test_matmul_k_not_multiple_of_8(kernel_set, M, K, N, dtype, with_bias):
    check_matmul(M, K, N, dtype, with_bias, seed=7 + M + K + N)


def test_matmul_bias_is_added_once_per_output():
    rng = np.random.default_rng(1)
    x = np.zeros((4, 64), np.float32)
    w = rng.standard_normal((6, 64)).astype(np.float32)
    b = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(ops.matmul(x, ops.PackedWeight(w), b), np.tile(b, (4, 1)))


@pytest.mark.parametrize("dtype", QUANTIZED)
@pytest.mark.parametrize("K", [36, 100, 48])
def test_quantized_falls_back_to_bf16_when_k_not_multiple_of_32(kernel_set, K, dtype):
    rng = np.random.default_rng(K)
    w = rng.standard_normal((9, K)).astype(np.float32)
    x = rng.standard_normal((5, K)).astype(np.float32)
    pw = ops.PackedWeight(w, dtype)
    assert pw.dtype == "bfloat16"
    assert pw.nbytes == 2 * 9 * K
    ref = x.astype(np.float64) @ round_bf16(w).T
    scale = np.abs(x.astype(np.float64)) @ np.abs(round_bf16(w)).T
    assert (np.abs(ops.matmul(x, pw) - ref) <= 1e-5 * scale).all()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_int4_largest_block_sums_are_exact(kernel_set, sign):
    # Every weight q = 15 and every activation q = +-127: the largest integer sums the kernels
    # accumulate (16 products per 16-bit lane on AVX2: 16 x 15 x 127 = 30480).
    w = np.ones((8, 256), np.float32)
    w[:, ::32] = 0.0  # each block's minimum is 0 and its scale 1/15, so q = 15 elsewhere
    pw = ops.PackedWeight(w, "int4")
    x = np.full((9, 256), sign, np.float32)
    y = ops.matmul(x, pw).astype(np.float64)
    xq, sx = quantize_q8_parts(x)
    ref = (xq * np.repeat(sx, 32, axis=1)) @ quantize_q4(w).T
    np.testing.assert_allclose(y, ref, rtol=1e-5)
    np.testing.assert_allclose(y, sign * 248.0, rtol=1e-3)  # 8 blocks x 31 ones (f16 scale 1/15)


def test_int8_quantization_matches_reference_rounding():
    # One block with values that land exactly on .5 after scaling: absmax 127 -> scale 1, so
    # w / scale is w itself and lround must round the halves away from zero.
    row = np.array([127.0, -127.0, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5] + [0.0] * 24, np.float32)
    w = row[None, :]
    pw = ops.PackedWeight(w, "int8")
    assert pw.dtype == "int8"
    eye = np.eye(32, dtype=np.float32)  # one-hot activations quantize exactly (q = 127)
    deq = ops.matmul(eye, pw)[:, 0]  # column n=0 of W^T = the dequantized row
    expected = np.array([127, -127, 3, -3, 1, -1, 2, -2] + [0] * 24, np.float64)
    np.testing.assert_allclose(deq, expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(deq, quantize_q8(w)[0], rtol=1e-6, atol=0)


def test_int4_quantization_matches_reference_rounding(kernel_set):
    # min -3, max 12: scale 1 and min -3 are exact in float16, so w - min lands on integers and
    # halves, which round up; a constant block has scale 0 and stands for its value exactly.
    row = np.array([-3.0, 12.0, -2.5, 0.5, 1.49, 4.5, 11.6, 0.0] + [2.0] * 24, np.float32)
    w = np.stack([row, np.full(32, 0.75, np.float32)])
    pw = ops.PackedWeight(w, "int4")
    assert pw.dtype == "int4"
    eye = np.eye(32, dtype=np.float32)  # one-hot activations quantize exactly (q = 127)
    deq = ops.matmul(eye, pw).T  # W as the kernels see it
    expected = np.array([-3, 12, -2, 1, 1, 5, 12, 0] + [2] * 24, np.float64)
    np.testing.assert_allclose(deq[0], expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(deq[1], 0.75, rtol=1e-6, atol=0)
    np.testing.assert_allclose(deq, quantize_q4(w), rtol=1e-6, atol=0)


def edge_value_blocks():
    """Blocks on the quantizers' special paths: signed-zero ties at the minimum or maximum,
    all-zero blocks of both signs, subnormals, one huge value, constant blocks."""
    rng = np.random.default_rng(5)
    rows = [np.where(rng.random(32) < 0.5, -0.0, 0.0),  # only zeros, mixed signs
            np.concatenate([[0.0, -0.0], rng.uniform(0.1, 2.0, 30)]),  # minimum a +0 / -0 tie
            np.concatenate([[-0.0, 0.0], -rng.uniform(0.1, 2.0, 30)]),  # maximum a tie
            rng.standard_normal(32) * 1e-41,  # subnormals
            np.concatenate([[1e30], rng.standard_normal(31)]),
            np.full(32, -2.25),
            rng.standard_normal(32)]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_quantizers_match_reference_on_edge_values(dtype):
    # int8 leaves out the subnormals (their scale's inverse overflows: they quantize to 0) and
    # int4 the 1e30 block (its range overflows the f16 scale).
    w = edge_value_blocks()[[0, 1, 2, 4, 5, 6] if dtype == "int8" else [0, 1, 2, 3, 5, 6]]
    deq = ops.matmul(np.eye(32, dtype=np.float32), ops.PackedWeight(w, dtype)).T.astype(np.float64)
    np.testing.assert_allclose(deq, reference_weight(w, dtype), rtol=1e-6, atol=1e-45)


@pytest.mark.parametrize("dtype", QUANTIZED)
def test_non_finite_weights_pack_without_crashing(dtype):
    # NaN and inf weights have no meaningful quantization (the products they enter are not
    # finite), but packing them must not crash, and the rows without them stay exact.
    w = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    w[0, 3], w[1, 7], w[2, 40] = np.nan, np.inf, -np.inf
    with np.errstate(invalid="ignore"):
        deq = ops.matmul(np.eye(64, dtype=np.float32), ops.PackedWeight(w, dtype)).T.astype(np.float64)
    np.testing.assert_allclose(deq[3:], reference_weight(w[3:], dtype), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_int4_error_is_within_half_a_step(seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((7, 96)) * 10.0 ** rng.uniform(-3, 1)).astype(np.float32)
    q, scale, mn = quantize_q4_parts(w)
    deq = ops.matmul(np.eye(96, dtype=np.float32), ops.PackedWeight(w, "int4")).T.astype(np.float64)
    step = np.repeat(scale, 32, axis=1)
    # float16 rounding of min and scale moves the grid by at most a few ulps of the range
    slack = 2e-3 * (np.abs(np.repeat(mn, 32, axis=1)) + 15 * step)
    assert (np.abs(deq - w) <= step / 2 + slack).all()
    assert ((0 <= q) & (q <= 15)).all()


@pytest.mark.parametrize("N,K", [(1, 32), (5, 64), (130, 576), (64, 96), (6, 36)])
def test_packed_weight_nbytes(N, K):
    # K % 32 == 0: packed in groups of 4 rows (zero-padded), int8 with one f32 scale per row
    # and block of 32, in superblocks of 64 columns (K zero-padded to a multiple of 64);
    # otherwise row-major (and int8 falls back to bfloat16).
    w = np.ones((N, K), np.float32)
    rows = -(-N // 4) * 4 if K % 32 == 0 else N
    assert ops.PackedWeight(w, "float32").nbytes == 4 * rows * K
    assert ops.PackedWeight(w, "bfloat16").nbytes == 2 * rows * K
    assert ops.PackedWeight(w, "float16").nbytes == 2 * rows * K
    k64 = -(-K // 64) * 64
    int8_bytes = rows * k64 + 4 * rows * k64 // 32 if K % 32 == 0 else 2 * rows * K
    assert ops.PackedWeight(w, "int8").nbytes == int8_bytes
    # int4: half a byte per weight plus a float16 scale and minimum per row and block of 32
    int4_bytes = rows * k64 // 2 + 4 * rows * k64 // 32 if K % 32 == 0 else 2 * rows * K
    assert ops.PackedWeight(w, "int4").nbytes == int4_bytes
    assert ops.PackedWeight(w).dtype == "float32"


def test_matmul_accepts_non_contiguous_input():
    rng = np.random.default_rng(3)
    xt = rng.standard_normal((64, 7)).astype(np.float32)
    w = rng.standard_normal((5, 64)).astype(np.float32)
    pw = ops.PackedWeight(w)
    y = ops.matmul(xt.T, pw)  # a transposed view
    np.testing.assert_allclose(y, ops.matmul(np.ascontiguousarray(xt.T), pw), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# rmsnorm, rope, silu_mul, embedding


@pytest.mark.parametrize("M,D", [(1, 8), (3, 64), (17, 36), (64, 576), (5, 3)])
@pytest.mark.parametrize("eps", [1e-6, 1e-5, 0.5])
def test_rmsnorm(kernel_set, M, D, eps):
    rng = np.random.default_rng(M * 31 + D)
    x = (rng.standard_normal((M, D)) * 3).astype(np.float32)
    w = rng.standard_normal(D).astype(np.float32)
    y = ops.rmsnorm(x, w, eps)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64**2).mean(axis=1, keepdims=True) + np.float64(np.float32(eps))) * w
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=1e-6)


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_reference(x, positions, theta):
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # [T, d/2]
    emb = np.concatenate([angles, angles], axis=-1)[:, None, :]  # [T, 1, d]
    x64 = x.astype(np.float64)
    return x64 * np.cos(emb) + rotate_half(x64) * np.sin(emb), angles


@pytest.mark.parametrize("T,H,D", [(1, 1, 2), (5, 3, 64), (17, 4, 36), (64, 2, 128)])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope(kernel_set, T, H, D, theta):
    rng = np.random.default_rng(T * 7 + D)
    x = rng.standard_normal((T, H, D)).astype(np.float32)
    positions = rng.integers(0, 3000, size=T).astype(np.int32)
    positions[0] = 0
    ref, angles = rope_reference(x, positions, theta)
    # float32 angle (position * float32 inv_freq) is off by a few ulps of the angle; the output
    # error is bounded by that times |x|.
    amax = angles.max(axis=1)[:, None, None]
    tol = np.abs(x).max() * (4 * amax * 2.0**-24 + 2e-6) + 1e-6
    for y in (ops.rope(x, positions, theta=theta),
              ops.rope(x, positions, inv_freq=ops.rope_inv_freq(D, theta))):
        assert y.shape == x.shape and y.dtype == np.float32
        err = np.abs(y.astype(np.float64) - ref)
        assert (err <= tol).all(), f"max err {err.max()}"
    # position 0 is the identity
    np.testing.assert_array_equal(ops.rope(x[:1], np.zeros(1, np.int32), theta=theta), x[:1])


def test_rope_inv_freq_matches_formula():
    for d in (2, 36, 64, 128):
        ref = 1.0 / 10000.0 ** (np.arange(0, d, 2, dtype=np.float64) / d)
        np.testing.assert_allclose(ops.rope_inv_freq(d), ref, rtol=1e-6)


def test_rope_does_not_modify_input():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 8)).astype(np.float32)
    x0 = x.copy()
    ops.rope(x, np.array([1, 2, 3], np.int32))
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("M,I", [(1, 1), (3, 64), (17, 37), (64, 576)])
def test_silu_mul(kernel_set, M, I):
    rng = np.random.default_rng(M + I)
    gu = (rng.standard_normal((M, 2 * I)) * 4).astype(np.float32)
    g, u = gu[:, :I].astype(np.float64), gu[:, I:].astype(np.float64)
    ref = g / (1.0 + np.exp(-g)) * u
    np.testing.assert_allclose(ops.silu_mul(gu), ref, rtol=1e-5, atol=1e-6)


def test_silu_mul_extremes(kernel_set):
    # the vectorized exp clamps its input: huge |gate| still gives silu's limits (0 and gate),
    # and every gate in [-90, 90] stays within float32 rounding of float64
    g = np.concatenate([np.array([-1e30, -1000, -100, -88.7, 88.7, 100, 1000, 1e30, 0.0, -0.0]),
                        np.linspace(-90, 90, 502)]).astype(np.float32)
    gu = np.concatenate([g, np.ones_like(g)])[None, :]
    out = ops.silu_mul(gu)[0].astype(np.float64)
    g64 = g.astype(np.float64)
    with np.errstate(over="ignore"):
        ref = g64 / (1.0 + np.exp(-g64))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int8", "int4"])
@pytest.mark.parametrize("V,D", [(10, 64), (50, 96), (7, 32)])
def test_embedding(dtype, V, D):
    rng = np.random.default_rng(V * D)
    table = rng.standard_normal((V, D)).astype(np.float32)
    ids = np.array([0, V - 1, 3, 3, 1, V // 2], np.int32)
    out = ops.embedding(ids, ops.PackedWeight(table, dtype))
    ref = reference_weight(table, dtype)[ids]
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=0)
    assert ops.embedding(np.zeros(0, np.int32), ops.PackedWeight(table, dtype)).shape == (0, D)


# ---------------------------------------------------------------------------------------------
# paged attention


def make_batch(rng, page_size, num_pages, hkv, group, head_dim, requests):
    """requests: list of (kv_len, qo_len). Pages are handed out as a shuffled, non-contiguous
    subset of [0, num_pages). Returns the op arguments and each request's dense K/V."""
    k_cache = rng.standard_normal((num_pages, page_size, hkv, head_dim)).astype(np.float32)
    v_cache = rng.standard_normal((num_pages, page_size, hkv, head_dim)).astype(np.float32)
    free = list(rng.permutation(num_pages))
    qo_indptr, kv_indptr, kv_indices, last = [0], [0], [], []
    dense = []
    for kv_len, qo_len in requests:
        n = -(-kv_len // page_size)
        pages = [free.pop() for _ in range(n)]
        kv_indices += pages
        kv_indptr.append(kv_indptr[-1] + n)
        qo_indptr.append(qo_indptr[-1] + qo_len)
        last.append(kv_len - (n - 1) * page_size)
        k = k_cache[pages].reshape(n * page_size, hkv, head_dim)[:kv_len]
        v = v_cache[pages].reshape(n * page_size, hkv, head_dim)[:kv_len]
        dense.append((k.astype(np.float64), v.astype(np.float64)))
    q = rng.standard_normal((qo_indptr[-1], hkv * group, head_dim)).astype(np.float32)
    args = dict(
        q=q, k_cache=k_cache, v_cache=v_cache,
        qo_indptr=np.array(qo_indptr, np.int32), kv_indptr=np.array(kv_indptr, np.int32),
        kv_indices=np.array(kv_indices, np.int32), kv_last_page_len=np.array(last, np.int32),
    )
    return args, dense


def causal_mask(qo_len, kv_len):
    i = np.arange(qo_len)[:, None]
    j = np.arange(kv_len)[None, :]
    return j <= kv_len - qo_len + i


def dense_attention(q, k, v, mask, scale):
    """q [qo, Hq, D], k/v [kv, Hkv, D] float64, mask [qo, kv] bool -> [qo, Hq, D]."""
    hq, hkv = q.shape[1], k.shape[1]
    g = hq // hkv
    kk = np.repeat(k, g, axis=1)  # qo head h reads kv head h // g
    vv = np.repeat(v, g, axis=1)
    s = np.einsum("qhd,khd->hqk", q.astype(np.float64), kk) * scale
    s = np.where(mask[None], s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, vv)


def reference(args, dense, masks, scale):
    q, qo = args["q"], args["qo_indptr"]
    out = np.zeros(q.shape, np.float64)
    for b, (k, v) in enumerate(dense):
        out[qo[b]:qo[b + 1]] = dense_attention(q[qo[b]:qo[b + 1]], k, v, masks[b], scale)
    return out


ATTN_CASES = {
    # name: (page_size, requests [(kv_len, qo_len)])
    "decode": (4, [(1, 1), (7, 1), (8, 1), (13, 1), (33, 1)]),
    "prefill": (4, [(5, 5), (8, 8), (1, 1), (19, 19)]),
    "mixed": (16, [(40, 1), (17, 17), (33, 5), (16, 3), (2, 2), (50, 7)]),
    "page1": (1, [(3, 1), (6, 6), (9, 4)]),
}


def _request_alone(args, b):
    """paged_attention of request b of a batch, run on its own."""
    qo, kvp = args["qo_indptr"], args["kv_indptr"]
    return ops.paged_attention(
        args["q"][qo[b]:qo[b + 1]], args["k_cache"], args["v_cache"],
        np.array([0, qo[b + 1] - qo[b]], np.int32), np.array([0, kvp[b + 1] - kvp[b]], np.int32),
        args["kv_indices"][kvp[b]:kvp[b + 1]], args["kv_last_page_len"][b:b + 1])


@pytest.mark.parametrize("head_dim", [64, 36])
@pytest.mark.parametrize("hkv,group", [(1, 2), (2, 2), (2, 4), (4, 1)])
@pytest.mark.parametrize("case", sorted(ATTN_CASES))
def test_paged_attention_causal(kernel_set, case, hkv, group, head_dim):
    page_size, requests = ATTN_CASES[case]
    rng = np.random.default_rng(zlib.crc32(f"{case}-{hkv}-{group}-{head_dim}".encode()))
    num_pages = sum(-(-kv // page_size) for kv, _ in requests) + 7
    args, dense = make_batch(rng, page_size, num_pages, hkv, group, head_dim, requests)
    scale = 1.0 / np.sqrt(head_dim)
    out = ops.paged_attention(**args)
    assert out.shape == args["q"].shape and out.dtype == np.float32
    ref = reference(args, dense, [causal_mask(qo, kv) for kv, qo in requests], scale)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5)

    # An explicit custom mask equal to the causal one gives the same result.
    masks = [causal_mask(qo, kv) for kv, qo in requests]
    flat = np.concatenate([m.ravel() for m in masks])
    mask_indptr = np.concatenate([[0], np.cumsum([m.size for m in masks])]).astype(np.int64)
    out_m = ops.paged_attention(**args, custom_mask=flat, mask_indptr=mask_indptr)
    np.testing.assert_allclose(out_m, out, rtol=1e-6, atol=1e-6)

    # Batched == each request alone.
    qo = args["qo_indptr"]
    for b in range(len(requests)):
        np.testing.assert_allclose(_request_alone(args, b), out[qo[b]:qo[b + 1]], rtol=1e-6, atol=1e-6)


def test_paged_attention_sm_scale(kernel_set):
    rng = np.random.default_rng(5)
    requests = [(9, 3), (4, 1)]
    args, dense = make_batch(rng, 4, 10, 2, 2, 16, requests)
    out = ops.paged_attention(**args, sm_scale=0.3)
    ref = reference(args, dense, [causal_mask(qo, kv) for kv, qo in requests], 0.3)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("hkv,group", [(1, 4), (2, 2)])
def test_paged_attention_tree_mask(kernel_set, hkv, group):
    rng = np.random.default_rng(11)
    # request 0: root, then two branches of length 2 (nodes 1-2 and 3-4)
    # request 1: a chain of 3 (a tree whose only branch is causal)
    # request 2: root with three children, one of which has a child
    trees = [(10, [-1, 0, 1, 0, 3]), (6, [-1, 0, 1]), (1, [-1, 0, 0, 0, 2])]
    requests = [(p + len(par), len(par)) for p, par in trees]
    args, dense = make_batch(rng, 4, 16, hkv, group, 32, requests)
    masks = [tree_mask(p, par) for p, par in trees]
    flat = np.concatenate([m.ravel() for m in masks])
    mask_indptr = np.concatenate([[0], np.cumsum([m.size for m in masks])]).astype(np.int64)
    out = ops.paged_attention(**args, custom_mask=flat, mask_indptr=mask_indptr)
    ref = reference(args, dense, masks, 1.0 / np.sqrt(32))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5)
    # The chain request (1) equals plain causal attention.
    causal = ops.paged_attention(**args)
    np.testing.assert_allclose(out[5:8], causal[5:8], rtol=1e-6, atol=1e-6)
    # And the branchy request does not (the mask matters).
    assert np.abs(out[:5] - causal[:5]).max() > 1e-2


def test_paged_attention_empty_batch_and_zero_queries():
    rng = np.random.default_rng(2)
    args, _ = make_batch(rng, 4, 4, 1, 1, 8, [(3, 0)])
    out = ops.paged_attention(**args)
    assert out.shape == (0, 1, 8)


# ---------------------------------------------------------------------------------------------
# bad input


def good_attention_args():
    rng = np.random.default_rng(0)
    args, _ = make_batch(rng, 4, 8, 2, 2, 16, [(6, 2), (5, 1)])
    return args


def call_attention(**overrides):
    args = good_attention_args()
    args.update(overrides)
    return ops.paged_attention(**args)


def test_good_attention_args_are_good():
    call_attention()


def test_bad_dtype_and_ndim():
    w = ops.PackedWeight(np.ones((4, 32), np.float32))
    with pytest.raises(ValueError, match="float32"):
        ops.matmul(np.ones((2, 32)), w)  # float64
    with pytest.raises(ValueError, match="2-d"):
        ops.matmul(np.ones(32, np.float32), w)
    with pytest.raises(ValueError, match="float32"):
        ops.PackedWeight(np.ones((4, 32)), "float32")
    with pytest.raises(ValueError, match="dtype must be one of"):
        ops.PackedWeight(np.ones((4, 32), np.float32), "int3")
    with pytest.raises(ValueError, match="float32"):
        ops.rmsnorm(np.ones((2, 4)), np.ones(4, np.float32))
    with pytest.raises(ValueError, match="int32"):
        ops.rope(np.ones((2, 1, 4), np.float32), np.zeros(2, np.int64))
    a = good_attention_args()
    with pytest.raises(ValueError, match="q: expected dtype float32"):
        call_attention(q=a["q"].astype(np.float64))
    with pytest.raises(ValueError, match="3-d"):
        call_attention(q=a["q"].reshape(a["q"].shape[0], -1))
    with pytest.raises(ValueError, match="int32"):
        call_attention(kv_indices=a["kv_indices"].astype(np.int64))


def test_bad_shapes():
    w = ops.PackedWeight(np.ones((4, 32), np.float32))
    with pytest.raises(ValueError, match="in_features"):
        ops.matmul(np.ones((2, 64), np.float32), w)
    with pytest.raises(ValueError, match="out_features"):
        ops.matmul(np.ones((2, 32), np.float32), w, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="hidden size"):
        ops.rmsnorm(np.ones((2, 4), np.float32), np.ones(5, np.float32))
    with pytest.raises(ValueError, match="positions"):
        ops.rope(np.ones((2, 1, 4), np.float32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="gate_up"):
        ops.silu_mul(np.ones((2, 5), np.float32))
    a = good_attention_args()
    with pytest.raises(ValueError, match="head_dim"):
        call_attention(q=np.ones((3, 4, 8), np.float32))
    with pytest.raises(ValueError, match="v_cache"):
        call_attention(v_cache=a["v_cache"][:, :2].copy())


def test_bad_page_table():
    a = good_attention_args()
    with pytest.raises(ValueError, match="not a page"):
        call_attention(kv_indices=np.where(np.arange(len(a["kv_indices"])) == 1, 8, a["kv_indices"]).astype(np.int32))
    with pytest.raises(ValueError, match="not a page"):
        call_attention(kv_indices=np.where(np.arange(len(a["kv_indices"])) == 0, -1, a["kv_indices"]).astype(np.int32))
    for bad in (0, 5):
        last = a["kv_last_page_len"].copy()
        last[1] = bad
        with pytest.raises(ValueError, match="kv_last_page_len"):
            call_attention(kv_last_page_len=last)
    with pytest.raises(ValueError, match=r"qo_indptr\[-1\]"):
        call_attention(qo_indptr=np.array([0, 2, 4], np.int32))
    with pytest.raises(ValueError, match="kv_indptr"):
        call_attention(kv_indptr=np.array([0, 2, 9], np.int32))
    with pytest.raises(ValueError, match="KV tokens"):  # more queries than KV tokens, no mask
        call_attention(q=np.ones((7, 4, 16), np.float32), qo_indptr=np.array([0, 7, 7], np.int32))


def test_bad_heads():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        call_attention(q=np.ones((3, 3, 16), np.float32))


def test_bad_masks():
    # request 0: qo 2 x kv 6; request 1: qo 1 x kv 5
    masks = [causal_mask(2, 6), causal_mask(1, 5)]
    flat = np.concatenate([m.ravel() for m in masks])
    indptr = np.array([0, 12, 17], np.int64)
    call_attention(custom_mask=flat, mask_indptr=indptr)  # sanity: valid
    with pytest.raises(ValueError, match="mask_indptr"):
        call_attention(custom_mask=flat)
    empty_row = flat.copy()
    empty_row[6:12] = False  # request 0, row 1
    with pytest.raises(ValueError, match="attends to nothing"):
        call_attention(custom_mask=empty_row, mask_indptr=indptr)
    with pytest.raises(ValueError, match="bool"):
        call_attention(custom_mask=flat.astype(np.uint8), mask_indptr=indptr)
    with pytest.raises(ValueError, match="int64"):
        call_attention(custom_mask=flat, mask_indptr=indptr.astype(np.int32))
    with pytest.raises(ValueError, match="mask_indptr"):
        call_attention(custom_mask=flat, mask_indptr=np.array([0, 12, 18], np.int64))


def test_mask_slices_must_match_requests():
    # Request b's mask is custom_mask[mask_indptr[b]:mask_indptr[b+1]] and must hold
    # qo_len * kv_len entries (2 * 6 and 1 * 5 here); the op must never read past a slice.
    with pytest.raises(ValueError, match="mask"):
        call_attention(custom_mask=np.ones(17, bool), mask_indptr=np.array([0, 4, 17], np.int64))
    with pytest.raises(ValueError, match="mask"):  # request 1 would read past the end
        call_attention(custom_mask=np.ones(12, bool), mask_indptr=np.array([0, 12, 12], np.int64))


def test_decreasing_indptr_is_rejected_before_use():
    # qo_indptr = [0, 200000, 3]: request 0 claims 200000 queries (fewer than its KV tokens),
    # request 1 a negative count. The whole table must be checked before anything is indexed
    # with it (this once wrote 200000 entries into a 3-entry buffer and crashed the process).
    ps, pages = 1024, 200
    k = np.zeros((pages, ps, 1, 1), np.float32)
    with pytest.raises(ValueError, match="non-decreasing"):
        ops.paged_attention(np.zeros((3, 1, 1), np.float32), k, k, np.array([0, 200000, 3], np.int32),
                            np.array([0, pages, pages], np.int32), np.arange(pages, dtype=np.int32),
                            np.array([ps, ps], np.int32))
    with pytest.raises(ValueError, match="non-decreasing"):  # kv_indptr[1] past kv_indices
        call_attention(kv_indptr=np.array([0, 50, 3], np.int32))


def test_bad_embedding_ids():
    table = ops.PackedWeight(np.ones((10, 32), np.float32))
    with pytest.raises(ValueError, match="out of range"):
        ops.embedding(np.array([0, 10], np.int32), table)
    with pytest.raises(ValueError, match="out of range"):
        ops.embedding(np.array([-1], np.int32), table)
    with pytest.raises(ValueError, match="int32"):
        ops.embedding(np.array([0, 1], np.int64), table)


# ---------------------------------------------------------------------------------------------
# paged attention: long KV (several key chunks, split over threads when the batch is small),
# query blocks crossing masks, odd group sizes and head dims


def _mask_args(masks):
    flat = np.concatenate([m.ravel() for m in masks])
    mask_indptr = np.concatenate([[0], np.cumsum([m.size for m in masks])]).astype(np.int64)
    return dict(custom_mask=flat, mask_indptr=mask_indptr)


LONG_CASES = {
    # name: (page_size, hkv, group, head_dim, requests [(kv_len, qo_len)])
    "decode1": (16, 3, 3, 64, [(1000, 1)]),
    "decode2_g6": (5, 2, 6, 64, [(613, 1), (300, 1)]),
    "decode_g7_d128": (16, 1, 7, 128, [(777, 1)]),
    "decode_g1_d36": (3, 4, 1, 36, [(530, 1), (9, 1)]),
    "prefill_g3": (16, 3, 3, 64, [(300, 300)]),
    "prefill_ragged": (7, 2, 3, 40, [(270, 13), (37, 37), (520, 3), (258, 1)]),
    "prefill_g1_d128": (16, 2, 1, 128, [(263, 263)]),
    "prefill_g7": (8, 1, 7, 64, [(275, 19), (40, 11)]),
}


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("case", sorted(LONG_CASES))
def test_paged_attention_long(kernel_set, case, threads):
    page_size, hkv, group, head_dim, requests = LONG_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    num_pages = sum(-(-kv // page_size) for kv, _ in requests) + 5
    args, dense = make_batch(rng, page_size, num_pages, hkv, group, head_dim, requests)
    args["q"] *= 2.0  # peakier softmax: the running max changes across blocks and chunks
    scale = 1.0 / np.sqrt(head_dim)
    prev = ops.num_threads()
    ops.set_num_threads(threads)
    try:
        out = ops.paged_attention(**args)
        masks = [causal_mask(qo, kv) for kv, qo in requests]
        ref = reference(args, dense, masks, scale)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5)
        # A row does not depend on the batch, its query block or the split over threads:
        # the same causal mask given explicitly, and each request alone, are bitwise equal.
        np.testing.assert_array_equal(ops.paged_attention(**args, **_mask_args(masks)), out)
        qo, kvp = args["qo_indptr"], args["kv_indptr"]
        for b in range(len(requests)):
            np.testing.assert_array_equal(_request_alone(args, b), out[qo[b]:qo[b + 1]])
        # The last query of a prefill equals a decode step of that query.
        for b in range(len(requests)):
            last = qo[b + 1] - 1
            one = ops.paged_attention(
                args["q"][last:last + 1], args["k_cache"], args["v_cache"], np.array([0, 1], np.int32),
                np.array([0, kvp[b + 1] - kvp[b]], np.int32), args["kv_indices"][kvp[b]:kvp[b + 1]],
                args["kv_last_page_len"][b:b + 1])
            np.testing.assert_array_equal(one, out[last:last + 1])
    finally:
        ops.set_num_threads(prev)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("hkv,group,head_dim", [(3, 3, 64), (1, 6, 128), (2, 1, 20), (1, 7, 64)])
def test_paged_attention_random_mask_long(kernel_set, hkv, group, head_dim, threads):
    """Random custom masks (each row keeps a random subset, at least one key; whole 8-key blocks
    and chunks masked out for some rows) over long KV, ragged requests."""
    rng = np.random.default_rng(zlib.crc32(f"rm-{hkv}-{group}-{head_dim}".encode()))
    requests = [(300, 11), (5, 3), (700, 17), (263, 1)]
    args, dense = make_batch(rng, 16, sum(-(-kv // 16) for kv, _ in requests) + 3, hkv, group, head_dim, requests)
    args["q"] *= 2.0
    masks = []
    for kv, qo in requests:
        density = rng.choice([0.02, 0.3, 0.9], size=(qo, 1))
        m = rng.random((qo, kv)) < density
        if qo > 2:
            m[1] = False
            m[1, kv - 1] = True  # only the very last key
            m[2] = False
            m[2, 0] = True  # only the first key
        m[np.arange(qo), rng.integers(0, kv, qo)] = True
        masks.append(m)
    prev = ops.num_threads()
    ops.set_num_threads(threads)
    try:
        out = ops.paged_attention(**args, **_mask_args(masks))
    finally:
        ops.set_num_threads(prev)
    ref = reference(args, dense, masks, 1.0 / np.sqrt(head_dim))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-5)
