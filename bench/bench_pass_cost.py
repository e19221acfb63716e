"""What one target forward of n tokens costs (a verification pass of n - 1 drafted tokens plus
the bonus position), side by side in one run: specdec_native vs llama.cpp (llama-cpp-python)
on the same GGUF, at the same thread count. Speculation pays only while v(n) = t(n) / t(1)
stays well below the n tokens a pass can win; decode (n = 1) is memory-bound, and as n grows
the pass turns compute-bound.

    python bench/bench_pass_cost.py [--target qwen1.5b|qwen0.5b|smollm2|PATH] [--n 1,2,3,4,5,6,8,12,16]
                                    [--dtype int4] [--threads 2] [--peers llamacpp]

Each row: ms per pass (min over --repeats), v(n), and ms per extra token. Both engines compute
the logits of every position (verification needs them all) from an empty KV cache. Beside the
table: the memory-bandwidth floor of one pass (weight bytes / read bandwidth, measured here).
Writes JSON (default bench/results/pass_cost.json).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_models  # noqa: E402
from bench_spec import timeit  # noqa: E402

PROMPT = "def quicksort(arr):\n    \"\"\"Sort a list of integers with quicksort and return a new list.\"\"\"\n" * 4


def warm_timeit(fn, repeats: int) -> float:
    fn()  # first call: allocations, page faults
    return timeit(fn, repeats)


def ours(gguf: str, ns, dtype: str, threads: int, repeats: int) -> dict:
    from specdec_native import LLM

    llm = LLM(gguf, dtype=dtype, num_threads=threads, max_num_seqs=1, progress=False)
    ids = llm.tokenizer.encode(PROMPT)
    if len(ids) < max(ns):
        raise ValueError(f"the bench prompt has {len(ids)} tokens, fewer than n = {max(ns)}")
    out = {n: warm_timeit(lambda: llm.prompt_logits(ids[:n]), repeats) for n in ns}
    del llm
    gc.collect()
    return out


def llamacpp(gguf: str, ns, threads: int, repeats: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=512, n_batch=512,
                logits_all=True, verbose=False)
    ids = llm.tokenize(PROMPT.encode())

    def run(n):
        llm.reset()  # empty KV cache: the same from-scratch pass as prompt_logits
        llm.eval(ids[:n])

    out = {n: warm_timeit(lambda: run(n), repeats) for n in ns}
    del llm
    gc.collect()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="qwen1.5b")
    ap.add_argument("--n", default="1,2,3,4,5,6,8,12,16")
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--peers", default="llamacpp")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "pass_cost.json"))
    args = ap.parse_args()
    ns = sorted({int(n) for n in args.n.split(",")} | {1})
    gguf = fetch_models.model_or_path(args.target)

    from specdec_native import ops

    ops.set_num_threads(args.threads)
    bandwidth = ops.measure_read_bandwidth(1 << 30, 5)
    rows = {"specdec_native": ours(gguf, ns, args.dtype, args.threads, args.repeats)}
    if "llamacpp" in args.peers.split(","):
        try:
            rows["llama.cpp"] = llamacpp(gguf, ns, args.threads, args.repeats)
        except ImportError:
            print("llama-cpp-python is not installed: llama.cpp column left out", flush=True)
    weight_bytes = Path(gguf).stat().st_size

    print(f"\n{Path(gguf).name}, {args.threads} threads; read bandwidth {bandwidth / 1e9:.1f} GB/s: "
          f"one pass reads >= {weight_bytes / 1e6:.0f} MB, floor {weight_bytes / bandwidth * 1e3:.1f} ms")
    header = "   n" + "".join(f"  {name:>16s} ms   v(n)  ms/extra" for name in rows)
    print(header + "\n" + "-" * len(header))
    for n in ns:
        cells = []
        for times in rows.values():
            t, t1 = times[n], times[1]
            extra = (t - t1) / (n - 1) * 1e3 if n > 1 else 0.0
            cells.append(f"  {t * 1e3:19.1f}  {t / t1:5.2f}  {extra:8.1f}")
        print(f"{n:4d}" + "".join(cells))
    if len(rows) == 2:
        a, b = rows.values()
        print("ours / llama.cpp pass time: " + ", ".join(f"n={n}: {a[n] / b[n]:.2f}" for n in ns))

    report = {"target": gguf, "dtype": args.dtype, "threads": args.threads, "read_bandwidth": bandwidth,
              "weight_bytes": weight_bytes, "seconds": {name: {str(n): t for n, t in r.items()} for name, r in rows.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
