"""The CPU matmul kernels alone, side by side in one run: specdec_native's packed int4 / int8 /
bfloat16 matmul vs torch (bfloat16 and float32 `x @ W.T`, the same threads) at a few token
counts, with the weights either streamed from DRAM (enough distinct matrices to overflow the
last-level cache, as in a forward pass) or resident in cache (one matrix, called again and
again), against the read-bandwidth roofline measured in the same run.

    python bench/bench_matmul.py [--shape 8960x1536] [--dtypes int4,int8,bfloat16] [--tokens 1,2,4,5,8]
                                 [--threads 2] [--stream-mb 700] [--peers torch] [--repeats 3]

Each row: ms per matmul (the fastest of --repeats sweeps), the weight bytes read per second, and
GMAC/s. Decode (1 token) should sit at the roofline; a verification pass of a few tokens reads
the same bytes, so it stays near the 1-token time until the tile's compute no longer hides under
the memory stream. Writes JSON (default bench/results/matmul.json).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

TORCH_DTYPES = {"bfloat16": "bfloat16", "float32": "float32"}


def sweep(call, mats, repeats: int) -> float:
    """Seconds per call over all of `mats`, the fastest of `repeats` sweeps (after one warm-up)."""
    for w in mats[:2]:
        call(w)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for w in mats:
            call(w)
        best = min(best, (time.perf_counter() - t) / len(mats))
    return best


def ours(dtype, base, count, tokens, repeats, rng):
    from specdec_native import ops

    mats = [ops.PackedWeight(base + np.float32(i * 1e-3), dtype) for i in range(count)]
    out = {}
    for m in tokens:
        x = rng.standard_normal((m, base.shape[1])).astype(np.float32)
        out[m] = sweep(lambda w: ops.matmul(x, w), mats, repeats)
    return out


def torch_peer(dtype, base, count, tokens, repeats, rng, threads):
    import torch

    torch.set_num_threads(threads)
    td = getattr(torch, TORCH_DTYPES[dtype])
    first = torch.from_numpy(base).to(td)
    mats = [first] + [(first + i * 1e-3).to(td) for i in range(1, count)]
    out = {}
    with torch.inference_mode():
        for m in tokens:
            x = torch.from_numpy(rng.standard_normal((m, base.shape[1])).astype(np.float32)).to(td)
            out[m] = sweep(lambda w: x @ w.T, mats, repeats)
    return out


def main() -> int:
    from specdec_native import ops

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="8960x1536", help="out x in features (Qwen2.5-1.5B's up projection)")
    ap.add_argument("--dtypes", default="int4,int8,bfloat16")
    ap.add_argument("--tokens", default="1,2,4,5,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stream-mb", type=float, default=700, help="total weight bytes of the DRAM-streamed sweep")
    ap.add_argument("--peers", default="torch", help="'torch' or ''")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "matmul.json"))
    args = ap.parse_args()
    n, k = (int(v) for v in args.shape.lower().split("x"))
    tokens = [int(t) for t in args.tokens.split(",")]
    ops.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, k)).astype(np.float32)
    bandwidth = ops.measure_read_bandwidth(1 << 30, 5)
    print(f"{n} x {k}, {args.threads} threads; read bandwidth {bandwidth / 1e9:.1f} GB/s")
    peers = [("torch", d) for d in TORCH_DTYPES] if "torch" in args.peers else []
    rows = []
    print(f"{'engine':15s} {'dtype':9s} {'weights':8s} " + "".join(f"{'M=' + str(m):>22s}" for m in tokens))
    for engine, dtype in [("specdec_native", d) for d in filter(None, args.dtypes.split(","))] + peers:
        nbytes = ops.PackedWeight(base, dtype).nbytes if engine == "specdec_native" else \
            n * k * (2 if dtype == "bfloat16" else 4)
        for place, count, repeats in (("dram", max(2, int(args.stream_mb * 1e6 // nbytes)), args.repeats),
                                      ("cache", 1, 50 * args.repeats)):
            if engine == "specdec_native":
                times = ours(dtype, base, count, tokens, repeats, rng)
            else:
                times = torch_peer(dtype, base, count, tokens, repeats, rng, args.threads)
            cells = []
            for m in tokens:
                s = times[m]
                cells.append(f"{s * 1e3:7.3f} ms {nbytes / s / 1e9:5.1f} GB/s")
                rows.append({"engine": engine, "dtype": dtype, "weights": place, "tokens": m, "seconds": s,
                             "weight_bytes": nbytes, "gb_per_s": nbytes / s / 1e9, "gmac_per_s": n * k * m / s / 1e9})
            print(f"{engine:15s} {dtype:9s} {place:8s} " + "".join(f"{c:>22s}" for c in cells), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "read_bandwidth": bandwidth, "rows": rows}, indent=1))
    print(f"roofline at 1 token: weight bytes / {bandwidth / 1e9:.1f} GB/s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
