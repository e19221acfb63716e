"""Paged attention on the GPU: achieved memory bandwidth against the GPU's HBM peak, side by side
in one run with torch SDPA on the same GPU. Decode (one query per request) and tree
verification (a random draft tree of --tree-nodes per request, bit-packed mask) at batch sizes
x contexts; optionally the GEMV path (--gemv).

    python bench/bench_cuda_attention.py [--batch 1,8,32,64] [--context 512,2048,8192,32768]
        [--qo-heads 32 --kv-heads 8 --head-dim 128] [--kv-dtype bfloat16] [--tree-nodes 16]
        [--peak-gbs 3350] [--gemv] [--out bench/results/cuda_attention.json]

Decode is memory-bound: bytes = K and V of every request (kv_len x kv_heads x head_dim x 2 x
dtype size) + q and out; GB/s = bytes / kernel time (CUDA events over --iters calls on
device-resident data: the timers are specdec_native._cuda.time_paged_attention / time_gemm).
Tree verification is counted with the same bytes (the ideal: each KV row read once).
The peak is 2 x memory clock x bus width (cuDeviceGetAttribute), or --peak-gbs.

K/V live in a pool of --pool-tokens tokens (default 262144: 1 GiB of bf16 at 8 x 128) whose
pages are drawn at random, with repetition when batch x context exceeds it; the pool is far
larger than L2, so repeated pages are not served from cache. torch gets dense [B, H, L, D]
tensors (skipped above --torch-max-gb or when torch has no CUDA). Needs a CUDA GPU and the
_cuda extension; exits with a message otherwise.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

import numpy as np

from specdec_native.ops import tree_mask


def random_parents(rng, n):
    return [-1] + [int(rng.integers(0, i)) for i in range(1, n)]


def ints(s: str):
    return [int(x) for x in s.split(",") if x]


def device_info():
    """name, SMs, peak HBM bytes/s from the driver (2 x memory clock x bus width)."""
    lib = ctypes.CDLL("libcuda.so.1")
    if lib.cuInit(0) != 0:
        raise SystemExit("cuInit failed: no usable CUDA driver")
    dev = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(dev), 0)
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, 256, dev)

    def attr(a):
        v = ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(v), a, dev)
        return v.value

    # CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16, _MEMORY_CLOCK_RATE = 36 (kHz),
    # _GLOBAL_MEMORY_BUS_WIDTH = 37 (bits)
    clock_khz, bus_bits = attr(36), attr(37)
    return {"name": name.value.decode(), "sms": attr(16), "memory_clock_khz": clock_khz,
            "bus_width_bits": bus_bits, "peak_bytes_per_s": 2.0 * clock_khz * 1e3 * bus_bits / 8}


class Pool:
    """K/V pages shared by every configuration (f32 on the host; rounded on upload)."""

    def __init__(self, rng, tokens, page_size, kv_heads, head_dim):
        pages = max(1, tokens // page_size)
        shape = (pages, page_size, kv_heads, head_dim)
        self.k = rng.standard_normal(shape, dtype=np.float32)
        self.v = rng.standard_normal(shape, dtype=np.float32)
        self.pages, self.page_size = pages, page_size


def make_args(rng, pool, batch, ctx, qo_len, qo_heads, head_dim):
    ps = pool.page_size
    n = -(-ctx // ps)
    if batch * n <= pool.pages:
        kv_indices = rng.permutation(pool.pages)[: batch * n]
    else:
        kv_indices = rng.integers(0, pool.pages, batch * n)
    return dict(
        q=rng.standard_normal((batch * qo_len, qo_heads, head_dim), dtype=np.float32),
        k_cache=pool.k, v_cache=pool.v,
        qo_indptr=(np.arange(batch + 1) * qo_len).astype(np.int32),
        kv_indptr=(np.arange(batch + 1) * n).astype(np.int32),
        kv_indices=kv_indices.astype(np.int32),
        kv_last_page_len=np.full(batch, ctx - (n - 1) * ps, np.int32),
    )


def torch_sdpa(torch, batch, ctx, qo_len, qo_heads, kv_heads, head_dim, dtype, mask, iters):
    F = torch.nn.functional
    tdt = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    q = torch.randn(batch, qo_heads, qo_len, head_dim, device="cuda", dtype=tdt)
    k = torch.randn(batch, kv_heads, ctx, head_dim, device="cuda", dtype=tdt)
    v = torch.randn(batch, kv_heads, ctx, head_dim, device="cuda", dtype=tdt)
    attn_mask = None
    if mask is not None:
        attn_mask = torch.from_numpy(np.stack(mask)).to("cuda")[:, None]  # [B, 1, T, L]
    kw = {"enable_gqa": True} if kv_heads != qo_heads else {}

    def call():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kw)

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        call()
    e1.record()
    torch.cuda.synchronize()
    ms = e0.elapsed_time(e1) / iters
    del q, k, v, attn_mask
    torch.cuda.empty_cache()
    return ms


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=ints, default=[1, 8, 32, 64])
    ap.add_argument("--context", type=ints, default=[512, 2048, 8192, 32768])
    ap.add_argument("--qo-heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--kv-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--tree-nodes", type=int, default=16, help="draft-tree nodes per request (0: no tree rows)")
    ap.add_argument("--pool-tokens", type=int, default=262144)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--peak-gbs", type=float, default=None, help="HBM peak in GB/s (default: from the driver)")
    ap.add_argument("--torch-max-gb", type=float, default=24.0, help="skip torch when its dense K/V exceed this")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--gemv", action="store_true", help="also time the GEMV path (bf16 / int8 weights)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cuda_attention.json"))
    args = ap.parse_args()

    try:
        from specdec_native import cuda
    except ImportError as e:
        raise SystemExit(f"specdec_native is not importable: {e}")
    ext = cuda.extension()
    if ext is None:
        raise SystemExit("bench_cuda_attention needs a CUDA GPU and the _cuda extension "
                         f"(GPUs seen by the driver: {cuda.gpu_count()})")
    info = device_info()
    peak = args.peak_gbs * 1e9 if args.peak_gbs else info["peak_bytes_per_s"]
    print(f"{info['name']}: {info['sms']} SMs, HBM peak {peak / 1e9:.0f} GB/s "
          f"({'given' if args.peak_gbs else 'memory clock x bus width'})")

    torch = None
    if not args.no_torch:
        try:
            import torch as _torch
            if _torch.cuda.is_available():
                torch = _torch
            else:
                print("torch has no CUDA: the torch SDPA column is skipped")
        except ImportError:
            print("torch is not installed: the torch SDPA column is skipped")

    esize = {"bfloat16": 2, "float16": 2, "float32": 4}[args.kv_dtype]
    rng = np.random.default_rng(0)
    t0 = time.time()
    pool = Pool(rng, args.pool_tokens, args.page_size, args.kv_heads, args.head_dim)
    print(f"K/V pool: {pool.pages} pages of {args.page_size} tokens ({time.time() - t0:.1f} s to fill)")

    modes = [("decode", 1)] + ([("tree", args.tree_nodes)] if args.tree_nodes > 0 else [])
    rows = []
    hdr = (f"{'mode':6} {'batch':>5} {'ctx':>6} | {'ours ms':>8} {'GB/s':>7} {'%peak':>6} {'blocks':>6} "
           f"{'chunk':>6} | {'torch ms':>8} {'GB/s':>7} {'%peak':>6}")
    print(hdr)
    print("-" * len(hdr))
    for mode, qo_len in modes:
        for batch in args.batch:
            for ctx in args.context:
                kv_len = ctx + (qo_len if mode == "tree" else 0)  # tree nodes are appended
                a = make_args(rng, pool, batch, kv_len, qo_len, args.qo_heads, args.head_dim)
                masks = None
                extra = {}
                if mode == "tree":
                    masks = [tree_mask(ctx, random_parents(rng, qo_len)) for _ in range(batch)]
                    flat = np.concatenate([m.ravel() for m in masks])
                    extra = dict(custom_mask=flat,
                                 mask_indptr=(np.arange(batch + 1) * masks[0].size).astype(np.int64))
                nbytes = (batch * kv_len * args.kv_heads * args.head_dim * 2 * esize
                          + 2 * batch * qo_len * args.qo_heads * args.head_dim * 4)
                row = {"mode": mode, "batch": batch, "context": ctx, "kv_len": kv_len, "qo_len": qo_len,
                       "bytes": nbytes}
                try:
                    t = ext.time_paged_attention(**a, **extra, kv_dtype=args.kv_dtype, iters=args.iters)
                    row.update(ours_ms=t["ms"], ours_gbs=nbytes / t["ms"] / 1e6,
                               ours_frac=nbytes / (t["ms"] * 1e-3) / peak, blocks=t["blocks"],
                               kv_chunk=t["kv_chunk"], split_tokens=t["split_tokens"])
                except (RuntimeError, ValueError) as e:
                    row["ours_error"] = str(e)
                dense = 2 * batch * kv_len * args.kv_heads * args.head_dim * esize
                if torch is not None and dense <= args.torch_max_gb * 1e9:
                    try:
                        ms = torch_sdpa(torch, batch, kv_len, qo_len, args.qo_heads, args.kv_heads,
                                        args.head_dim, args.kv_dtype, masks, args.iters)
                        row.update(torch_ms=ms, torch_gbs=nbytes / ms / 1e6, torch_frac=nbytes / (ms * 1e-3) / peak)
                    except Exception as e:  # noqa: BLE001 - report and go on (OOM, unsupported mask)
                        row["torch_error"] = f"{type(e).__name__}: {e}"[:200]
                        torch.cuda.empty_cache()
                rows.append(row)

                def fmt(k, spec, scale=1.0):
                    return format(row[k] * scale, spec) if k in row else format("-", ">" + spec.split(".")[0])
                print(f"{mode:6} {batch:5d} {ctx:6d} | {fmt('ours_ms', '8.3f')} {fmt('ours_gbs', '7.0f')} "
                      f"{fmt('ours_frac', '6.1f', 100)} {row.get('blocks', '-'):>6} {row.get('kv_chunk', '-'):>6} | "
                      f"{fmt('torch_ms', '8.3f')} {fmt('torch_gbs', '7.0f')} {fmt('torch_frac', '6.1f', 100)}"
                      + (f"  ours: {row['ours_error'][:60]}" if "ours_error" in row else ""), flush=True)

    gemv_rows = []
    if args.gemv:
        print("\nGEMV (weights [N, K] read once per call): bytes = weights (+ scales) + x + y")
        print(f"{'dtype':9} {'M':>2} {'N':>6} {'K':>6} | {'ms':>8} {'GB/s':>7} {'%peak':>6}")
        for dtype in ("bfloat16", "int8"):
            for n, k in ((4096, 4096), (14336, 4096), (4096, 14336)):
                w = rng.standard_normal((n, k), dtype=np.float32)
                for m in (1, 4, 8):
                    x = rng.standard_normal((m, k), dtype=np.float32)
                    t = ext.time_gemm(x, w, dtype=dtype, backend="gemv", iters=args.iters)
                    wbytes = n * k * (2 if dtype == "bfloat16" else 1) + (n * k // 32 * 4 if dtype == "int8" else 0)
                    nb = wbytes + 4 * m * (k + n)
                    r = {"dtype": dtype, "m": m, "n": n, "k": k, "ms": t["ms"], "gbs": nb / t["ms"] / 1e6,
                         "frac": nb / (t["ms"] * 1e-3) / peak}
                    gemv_rows.append(r)
                    print(f"{dtype:9} {m:2d} {n:6d} {k:6d} | {r['ms']:8.4f} {r['gbs']:7.0f} {100 * r['frac']:6.1f}")

    out = {"device": info, "peak_bytes_per_s": peak, "kv_dtype": args.kv_dtype, "qo_heads": args.qo_heads,
           "kv_heads": args.kv_heads, "head_dim": args.head_dim, "page_size": args.page_size,
           "tree_nodes": args.tree_nodes, "pool_tokens": args.pool_tokens, "iters": args.iters,
           "torch": None if torch is None else torch.__version__, "rows": rows, "gemv": gemv_rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
