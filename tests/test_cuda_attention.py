"""CUDA paged attention (decode, tree verification with bit-packed masks, split-KV) and GEMM /
GEMV, against the CPU ops and float64 numpy. Without a GPU every test here skips.

Tolerances: float32 K/V and q: rtol 1e-4, atol 5e-5 against float64 (the kernel's f32 online
softmax in base 2 and its summation order are the only differences). bfloat16 / float16 K/V:
the caches are rounded on the host the same way the reference is fed, so the same tolerance
applies; with io_dtype='kv' q and out are rounded as well: atol 2e-2 (bf16) / 4e-3 (f16).
GEMV: NMSE <= 1e-9 against float64 of the rounded / dequantized weights; cuBLAS (x rounded to
the weight dtype too): NMSE <= 1e-8.
"""
import glob
import os
import site
import zlib

import numpy as np
import pytest

from helpers import random_parents
from specdec_native import cuda, ops
from specdec_native.ops import tree_mask

needs_gpu = pytest.mark.skipif(cuda.gpu_count() == 0, reason="no CUDA GPU on this machine")


# ---------------------------------------------------------------------------------------------
# references


def round_bf16(a):
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32)


def round_to(a, dtype):
    if dtype == "bfloat16":
        return round_bf16(a)
    if dtype == "float16":
        return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)
    return np.asarray(a, np.float32)


def make_batch(rng, page_size, hkv, group, head_dim, requests, extra_pages=3):
    """requests: [(kv_len, qo_len)]; pages are a shuffled, non-contiguous subset of the pool."""
    num_pages = sum(-(-kv // page_size) for kv, _ in requests) + extra_pages
    k_cache = rng.standard_normal((num_pages, page_size, hkv, head_dim)).astype(np.float32)
    v_cache = rng.standard_normal((num_pages, page_size, hkv, head_dim)).astype(np.float32)
    free = list(rng.permutation(num_pages))
    qo_indptr, kv_indptr, kv_indices, last = [0], [0], [], []
    for kv_len, qo_len in requests:
        n = -(-kv_len // page_size)
        kv_indices += [free.pop() for _ in range(n)]
        kv_indptr.append(kv_indptr[-1] + n)
        qo_indptr.append(qo_indptr[-1] + qo_len)
        last.append(kv_len - (n - 1) * page_size)
    q = rng.standard_normal((qo_indptr[-1], hkv * group, head_dim)).astype(np.float32)
    return dict(q=q, k_cache=k_cache, v_cache=v_cache, qo_indptr=np.array(qo_indptr, np.int32),
                kv_indptr=np.array(kv_indptr, np.int32), kv_indices=np.array(kv_indices, np.int32),
                kv_last_page_len=np.array(last, np.int32))


def dense_kv(args, b):
    kvp, ps = args["kv_indptr"], args["k_cache"].shape[1]
    pages = args["kv_indices"][kvp[b]:kvp[b + 1]]
    kv_len = (len(pages) - 1) * ps + args["kv_last_page_len"][b] if len(pages) else 0
    shape = (len(pages) * ps,) + args["k_cache"].shape[2:]
    k = args["k_cache"][pages].reshape(shape)[:kv_len].astype(np.float64)
    v = args["v_cache"][pages].reshape(shape)[:kv_len].astype(np.float64)
    return k, v


def causal_mask(qo_len, kv_len):
    return np.arange(kv_len)[None, :] <= kv_len - qo_len + np.arange(qo_len)[:, None]


def reference(args, masks, scale):
    q, qo = args["q"].astype(np.float64), args["qo_indptr"]
    out = np.zeros(q.shape, np.float64)
    for b in range(len(qo) - 1):
        if qo[b + 1] == qo[b]:
            continue
        k, v = dense_kv(args, b)
        g = q.shape[1] // k.shape[1]
        kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)  # qo head h reads kv head h // g
        s = np.einsum("qhd,khd->hqk", q[qo[b]:qo[b + 1]], kk) * scale
        s = np.where(masks[b][None], s, -np.inf)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        out[qo[b]:qo[b + 1]] = np.einsum("hqk,khd->qhd", p, vv)
    return out


def mask_args(masks):
    flat = np.concatenate([m.ravel() for m in masks]) if masks else np.zeros(0, bool)
    mask_indptr = np.concatenate([[0], np.cumsum([m.size for m in masks])]).astype(np.int64)
    return dict(custom_mask=flat, mask_indptr=mask_indptr)


def rounded(args, kv_dtype, io_dtype="float32"):
    """The arguments as the device sees them (caches, and q with io_dtype='kv', rounded)."""
    r = dict(args)
    r["k_cache"] = round_to(args["k_cache"], kv_dtype)
    r["v_cache"] = round_to(args["v_cache"], kv_dtype)
    if io_dtype == "kv":
        r["q"] = round_to(args["q"], kv_dtype)
    return r


def check_attention(ext, args, masks, *, kv_dtype="float32", io_dtype="float32", kv_chunk=0,
                    use_mask=False, cpu=True):
    scale = 1.0 / np.sqrt(args["q"].shape[-1])
    extra = mask_args(masks) if use_mask else {}
    out = ext.paged_attention(**args, **extra, kv_dtype=kv_dtype, io_dtype=io_dtype, kv_chunk=kv_chunk)
    assert out.shape == args["q"].shape and out.dtype == np.float32
    seen = rounded(args, kv_dtype, io_dtype)
    ref = reference(seen, masks, scale)
    if io_dtype == "kv" and kv_dtype != "float32":
        atol = 2e-2 if kv_dtype == "bfloat16" else 4e-3
        np.testing.assert_allclose(out, ref, rtol=0, atol=atol)
    else:
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=5e-5)
        if cpu:  # the CPU op on the same (rounded) inputs
            cpu_out = ops.paged_attention(**seen, **extra)
            np.testing.assert_allclose(out, cpu_out, rtol=1e-4, atol=5e-5)
    return out


# ---------------------------------------------------------------------------------------------
# paged attention: decode


DECODE_CONTEXTS = [1, 2, 17, 31, 32, 33, 100, 511, 1000, 4097]


@needs_gpu
@pytest.mark.parametrize("kv_dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("hkv,group", [(4, 1), (2, 4), (1, 8)])
@pytest.mark.parametrize("page_size", [16, 1])
def test_decode_matches_cpu_and_float64(kv_dtype, head_dim, hkv, group, page_size):
    ext = cuda.extension()
    rng = np.random.default_rng(zlib.crc32(f"dec-{kv_dtype}-{head_dim}-{hkv}-{group}-{page_size}".encode()))
    requests = [(kv, 1) for kv in DECODE_CONTEXTS] + [(int(rng.integers(1, 300)), 1) for _ in range(6)]
    args = make_batch(rng, page_size, hkv, group, head_dim, requests)
    masks = [causal_mask(qo, kv) for kv, qo in requests]
    check_attention(ext, args, masks, kv_dtype=kv_dtype)


@needs_gpu
@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("kv_chunk", [0, 32, 96, 1 << 20])
def test_decode_split_kv(batch, kv_chunk):
    """Forced chunk sizes (0 = automatic, which splits at small batch; 1 << 20 = never)."""
    ext = cuda.extension()
    rng = np.random.default_rng(batch * 1000 + kv_chunk % 997)
    requests = [(4097 if b == 0 else int(rng.integers(1, 2500)), 1) for b in range(batch)]
    args = make_batch(rng, 16, 2, 4, 128, requests)
    check_attention(ext, args, [causal_mask(1, kv) for kv, _ in requests], kv_dtype="bfloat16",
                    kv_chunk=kv_chunk)


@needs_gpu
def test_batch_one_long_context_is_split_automatically():
    ext = cuda.extension()
    rng = np.random.default_rng(3)
    args = make_batch(rng, 16, 2, 4, 128, [(32768, 1)])
    t = ext.time_paged_attention(**args, kv_dtype="bfloat16", iters=1)
    assert t["split_tokens"] == 1 and t["blocks"] >= 64 and t["ms"] > 0, t
    check_attention(ext, args, [causal_mask(1, 32768)], kv_dtype="bfloat16", cpu=False)


@needs_gpu
@pytest.mark.parametrize("kv_dtype", ["bfloat16", "float16"])
def test_io_in_kv_dtype(kv_dtype):
    ext = cuda.extension()
    rng = np.random.default_rng(7)
    requests = [(700, 1), (5, 1), (64, 1)]
    args = make_batch(rng, 16, 2, 4, 64, requests)
    check_attention(ext, args, [causal_mask(1, kv) for kv, _ in requests], kv_dtype=kv_dtype, io_dtype="kv")


# ---------------------------------------------------------------------------------------------
# prefill / chunked prefill (causal, several queries), and tree verification (custom mask)


@needs_gpu
@pytest.mark.parametrize("hkv,group", [(2, 1), (2, 4), (1, 8), (1, 32)])
@pytest.mark.parametrize("kv_chunk", [0, 64])
def test_causal_multi_query(hkv, group, kv_chunk):
    ext = cuda.extension()
    rng = np.random.default_rng(zlib.crc32(f"pre-{hkv}-{group}-{kv_chunk}".encode()))
    requests = [(300, 300), (37, 5), (520, 17), (9, 9), (1, 1), (258, 0), (1000, 3)]
    args = make_batch(rng, 16, hkv, group, 64, requests)
    check_attention(ext, args, [causal_mask(qo, kv) for kv, qo in requests], kv_chunk=kv_chunk)


@needs_gpu
@pytest.mark.parametrize("kv_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("hkv,group", [(4, 1), (2, 4), (1, 8)])
@pytest.mark.parametrize("page_size", [16, 1])
@pytest.mark.parametrize("kv_chunk", [0, 64])
def test_tree_verify_matches_cpu_and_float64(kv_dtype, head_dim, hkv, group, page_size, kv_chunk):
    ext = cuda.extension()
    rng = np.random.default_rng(zlib.crc32(f"tree-{kv_dtype}-{head_dim}-{hkv}-{group}-{page_size}-{kv_chunk}".encode()))
    batch = int(rng.integers(1, 17))
    trees = [(int(rng.integers(0, 1500)), random_parents(rng, int(rng.integers(1, 40)))) for _ in range(batch)]
    trees[0] = (4097 - 25, random_parents(rng, 25))  # one long context
    requests = [(p + len(par), len(par)) for p, par in trees]
    args = make_batch(rng, page_size, hkv, group, head_dim, requests)
    masks = [tree_mask(p, par) for p, par in trees]
    out = check_attention(ext, args, masks, kv_dtype=kv_dtype, kv_chunk=kv_chunk, use_mask=True)
    # A chain is causal: a tree that is one chain equals the causal result.
    chain = [(50, list(range(-1, 9)))]
    cargs = make_batch(rng, page_size, hkv, group, head_dim, [(60, 10)])
    a = ext.paged_attention(**cargs, **mask_args([tree_mask(*chain[0])]), kv_dtype=kv_dtype)
    c = ext.paged_attention(**cargs, kv_dtype=kv_dtype)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
    assert np.isfinite(out).all()


@needs_gpu
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("kv_chunk", [64, 1 << 20])
def test_padded_plan_changes_nothing(use_mask, kv_chunk):
    """A CUDA graph's step pads the plan (empty work items, merge entries, partial slots) so its
    launches keep their grids: the padding must not touch the output, bit for bit."""
    ext = cuda.extension()
    rng = np.random.default_rng(kv_chunk % 991 + use_mask)
    requests = [(300, 5), (37, 3), (700, 1)]
    args = make_batch(rng, 16, 2, 4, 64, requests)
    masks = [causal_mask(qo, kv) for kv, qo in requests]
    if use_mask:  # a tree: each row sees the prefix, a random subset of the new tokens and itself
        for m in masks:
            qo = m.shape[0]
            m[:, -qo:] &= rng.random((qo, qo)) < 0.5
            m[np.arange(qo), m.shape[1] - qo + np.arange(qo)] = True
    extra = mask_args(masks) if use_mask else {}
    plain = ext.paged_attention(**args, **extra, kv_dtype="bfloat16", kv_chunk=kv_chunk)
    for pad in (1, 7, 300):
        padded = ext.paged_attention(**args, **extra, kv_dtype="bfloat16", kv_chunk=kv_chunk, pad_plan=pad)
        np.testing.assert_array_equal(padded, plain)
    with pytest.raises(ValueError, match="pad_plan"):
        ext.paged_attention(**args, pad_plan=-1)


@needs_gpu
def test_arbitrary_masks_and_sparse_rows():
    """Masks that are not trees: random rows (each with at least one visible key), including
    rows whose only visible key is far from the diagonal (split chunks that see nothing)."""
    ext = cuda.extension()
    rng = np.random.default_rng(13)
    requests = [(900, 7), (33, 33), (1, 1), (300, 2)]
    args = make_batch(rng, 16, 2, 4, 64, requests)
    masks = []
    for kv, qo in requests:
        m = rng.random((qo, kv)) < 0.05
        m[np.arange(qo), rng.integers(0, kv, qo)] = True
        masks.append(m)
    masks[0][3] = False
    masks[0][3, 0] = True  # row 3 of request 0 sees only key 0
    for chunk in (0, 32, 128):
        check_attention(ext, args, masks, use_mask=True, kv_chunk=chunk)


@needs_gpu
def test_empty_batch_and_requests_without_queries():
    ext = cuda.extension()
    rng = np.random.default_rng(2)
    args = make_batch(rng, 4, 1, 1, 64, [(3, 0)])
    assert ext.paged_attention(**args).shape == (0, 1, 64)
    args = make_batch(rng, 4, 1, 1, 64, [])
    assert ext.paged_attention(**args).shape == (0, 1, 64)


# ---------------------------------------------------------------------------------------------
# bit-packed masks


@needs_gpu
def test_pack_mask_bits_matches_numpy_packbits():
    ext = cuda.extension()
    rng = np.random.default_rng(4)
    sizes = [0, 1, 7, 8, 9, 64, 100, 1023]
    segs = [rng.random(n) < 0.5 for n in sizes]
    flat = np.concatenate(segs)
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    packed, packed_indptr = ext.pack_mask_bits(flat, indptr)
    expect = [np.packbits(s, bitorder="little") for s in segs]
    np.testing.assert_array_equal(packed_indptr, np.concatenate([[0], np.cumsum([len(e) for e in expect])]))
    np.testing.assert_array_equal(packed, np.concatenate(expect))
    assert packed.dtype == np.uint8 and packed_indptr.dtype == np.int64


# ---------------------------------------------------------------------------------------------
# GEMM / GEMV


def nmse(a, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.sum((np.asarray(a, np.float64) - ref) ** 2) / max(np.sum(ref ** 2), 1e-300))


def weight_as_seen(ext, w, dtype):
    if dtype == "int8":
        q, s = ext.quantize_int8(w)
        return (q.astype(np.float64).reshape(w.shape[0], -1, 32) * s[:, :, None]).reshape(w.shape)
    if dtype == "int4":  # 16 bytes per 32 columns: column j in byte j's low nibble, j + 16 in its high one
        q, sm = ext.quantize_int4(w)
        b = q.reshape(w.shape[0], -1, 16)
        nib = np.concatenate([b & 0xF, b >> 4], axis=2).astype(np.float64)  # [N, K/32, 32]
        return (nib * sm[:, :, :1] + sm[:, :, 1:]).reshape(w.shape)
    return round_to(w, dtype).astype(np.float64)


def cublas_or_skip(ext):
    dirs = []
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
    ext.set_cublas_search_dirs(dirs)
    try:
        return ext.cublas_library()
    except RuntimeError as e:
        pytest.skip(f"libcublas not found: {e}")


@needs_gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "int8", "int4"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 13])
@pytest.mark.parametrize("n,k", [(1, 32), (5, 96), (64, 256), (1000, 4096), (37, 4128)])
def test_gemv_matches_float64(dtype, m, n, k):
    ext = cuda.extension()
    rng = np.random.default_rng(zlib.crc32(f"gemv-{dtype}-{m}-{n}-{k}".encode()))
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y = ext.gemm(x, w, bias, dtype=dtype, backend="gemv")
    assert y.shape == (m, n) and y.dtype == np.float32
    ref = x.astype(np.float64) @ weight_as_seen(ext, w, dtype).T + bias
    assert nmse(y, ref) <= 1e-9
    if dtype not in ("int8", "int4"):  # the CPU matmul over the same weights (f32 activations)
        cpu = ops.matmul(x, ops.PackedWeight(w, dtype), bias)
        np.testing.assert_allclose(y, cpu, rtol=1e-3, atol=1e-3)


@needs_gpu
@pytest.mark.parametrize("dtype,bound", [("int8", 1e-3), ("int4", 2e-2)])
def test_gemv_quantized_close_to_unquantized(dtype, bound):
    ext = cuda.extension()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 2048)).astype(np.float32)
    w = rng.standard_normal((512, 2048)).astype(np.float32)
    y = ext.gemm(x, w, dtype=dtype)
    assert nmse(y, x.astype(np.float64) @ w.T.astype(np.float64)) <= bound


@needs_gpu
def test_quantize_int4_matches_the_cpu_quantizer():
    """The device int4 layout holds the CPU int4 weights: same blocks, same rounding."""
    ext = cuda.extension()
    rng = np.random.default_rng(9)
    w = rng.standard_normal((7, 96)).astype(np.float32)
    seen = weight_as_seen(ext, w, "int4")
    cpu = ops.matmul(np.eye(96, dtype=np.float32), ops.PackedWeight(w, "int4")).T  # its dequantized rows (one-hot x is exact in int8)
    assert np.abs(seen - w).max() <= (w.max(axis=1) - w.min(axis=1)).max() / 15 / 2 + 1e-3
    np.testing.assert_allclose(seen, cpu, rtol=0, atol=1e-5)


@needs_gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("m,n,k", [(9, 64, 64), (64, 1000, 512), (130, 257, 1024), (1, 128, 128)])
def test_cublas_gemm_matches_float64(dtype, m, n, k):
    ext = cuda.extension()
    cublas_or_skip(ext)
    rng = np.random.default_rng(zlib.crc32(f"cublas-{dtype}-{m}-{n}-{k}".encode()))
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    y = ext.gemm(x, w, bias, dtype=dtype, backend="cublas")
    ref = round_to(x, dtype).astype(np.float64) @ round_to(w, dtype).astype(np.float64).T + bias
    assert nmse(y, ref) <= 1e-8
    assert ext.time_gemm(x, w, bias, dtype=dtype, backend="auto", iters=2)["backend"] == ("cublas" if m > 8 else "gemv")


# ---------------------------------------------------------------------------------------------
# bad input


def good_args(rng=None):
    rng = rng or np.random.default_rng(0)
    return make_batch(rng, 4, 2, 2, 64, [(6, 2), (5, 1)])


@needs_gpu
def test_bad_attention_input():
    ext = cuda.extension()
    a = good_args()
    ext.paged_attention(**a)  # sanity
    with pytest.raises(ValueError, match="q: expected dtype float32"):
        ext.paged_attention(**{**a, "q": a["q"].astype(np.float64)})
    with pytest.raises(ValueError, match="head_dim"):
        ext.paged_attention(**{**a, "q": np.ones((3, 4, 32), np.float32)})
    with pytest.raises(ValueError, match="v_cache"):
        ext.paged_attention(**{**a, "v_cache": a["v_cache"][:, :2].copy()})
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        ext.paged_attention(**{**a, "q": np.ones((3, 3, 64), np.float32)})
    with pytest.raises(ValueError, match="not a page"):
        bad = a["kv_indices"].copy()
        bad[0] = a["k_cache"].shape[0]
        ext.paged_attention(**{**a, "kv_indices": bad})
    with pytest.raises(ValueError, match="kv_last_page_len"):
        ext.paged_attention(**{**a, "kv_last_page_len": np.array([2, 5], np.int32)})
    with pytest.raises(ValueError, match="KV tokens"):
        ext.paged_attention(**{**a, "q": np.ones((7, 4, 64), np.float32), "qo_indptr": np.array([0, 7, 7], np.int32)})
    with pytest.raises(ValueError, match="non-decreasing"):
        ext.paged_attention(**{**a, "kv_indptr": np.array([0, 50, 3], np.int32)})
    with pytest.raises(ValueError, match="kv_dtype"):
        ext.paged_attention(**a, kv_dtype="int8")
    with pytest.raises(ValueError, match="io_dtype"):
        ext.paged_attention(**a, io_dtype="float16")
    masks = [causal_mask(2, 6), causal_mask(1, 5)]
    ma = mask_args(masks)
    ext.paged_attention(**a, **ma)  # sanity
    empty_row = ma["custom_mask"].copy()
    empty_row[6:12] = False
    with pytest.raises(ValueError, match="attends to nothing"):
        ext.paged_attention(**a, custom_mask=empty_row, mask_indptr=ma["mask_indptr"])
    with pytest.raises(ValueError, match="mask"):
        ext.paged_attention(**a, custom_mask=np.ones(17, bool), mask_indptr=np.array([0, 4, 17], np.int64))
    with pytest.raises(ValueError, match="mask_indptr"):
        ext.paged_attention(**a, custom_mask=ma["custom_mask"])
    # head_dim other than 64 / 128: a clear error, not a crash
    b = make_batch(np.random.default_rng(1), 4, 1, 1, 36, [(5, 1)])
    with pytest.raises(RuntimeError, match="head_dim 36"):
        ext.paged_attention(**b)


@needs_gpu
def test_bad_gemm_input():
    ext = cuda.extension()
    x, w = np.ones((2, 64), np.float32), np.ones((4, 64), np.float32)
    with pytest.raises(ValueError, match="in_features"):
        ext.gemm(np.ones((2, 32), np.float32), w)
    with pytest.raises(ValueError, match="out_features"):
        ext.gemm(x, w, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        ext.gemm(np.ones((1, 40), np.float32), np.ones((4, 40), np.float32), dtype="int8")
    with pytest.raises(ValueError, match="multiple of 8"):
        ext.gemm(np.ones((1, 12), np.float32), np.ones((4, 12), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        ext.gemm(x, w, dtype="float32")
    with pytest.raises(ValueError, match="backend"):
        ext.gemm(x, w, backend="tensor")
    with pytest.raises(ValueError, match="float32"):
        ext.gemm(x.astype(np.float64), w)
