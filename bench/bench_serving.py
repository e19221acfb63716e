"""Serving on the CPU, side by side in one run:

1. Time to first token for a request whose 2,000-token prefix is in the prefix cache (warm) vs
   not (cold), on SmolLM2-135M; llama.cpp's cold time to first token on the same prompt beside it.
2. Throughput (generated tokens/s over all requests) vs batch size, autoregressive vs
   speculative (the Qwen2.5-Coder 0.5B draft -> 1.5B target), short and long prompts: the
   MagicDec question of where speculation stops paying here. Beside each row: the target's
   weight bytes per step and KV bytes per step (decode reads both), which bound it.

    python bench/bench_serving.py [--batches 1,2,4,8,16,32] [--tokens 32] [--dtype int4]
                                  [--parts ttft,throughput] [--out bench/results/serving.json]

Writes a table to stdout, JSON and a PNG plot (beside the JSON).
"""
from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_models  # noqa: E402


def corpus_text() -> str:
    """Plain English and code available offline: the standard library's own sources."""
    import argparse as a, json as j, textwrap as t
    return "\n\n".join(inspect.getsource(m) for m in (a, j.decoder, t))


def token_slices(tok, n: int, count: int):
    """`count` disjoint slices of `n` tokens of the corpus."""
    ids = tok.encode(corpus_text(), add_special_tokens=False)
    if n * count > len(ids):
        ids = ids * (n * count // len(ids) + 1)
    return [ids[i * n:(i + 1) * n] for i in range(count)]


# ---- 1. time to first token, cold vs warm -----------------------------------------------------

def bench_ttft(dtype: str, threads: int, prefix_len: int, repeats: int, peers) -> dict:
    from specdec_native import LLM, SamplingParams

    gguf = fetch_models.smollm2_gguf()
    llm = LLM(gguf, dtype=dtype, num_threads=threads, max_model_len=prefix_len + 256, progress=False)
    prefix, *suffixes = token_slices(llm.tokenizer, prefix_len, 1 + 2 * repeats)
    suffixes = [s[:24] for s in suffixes]
    one = SamplingParams(max_tokens=1, temperature=0)
    cold, warm = [], []
    for r in range(repeats):
        llm.engine.reset_prefix_cache()
        cold.append(llm.generate(prompt_token_ids=[prefix + suffixes[2 * r]], sampling_params=one)[0].metrics)
        warm.append(llm.generate(prompt_token_ids=[prefix + suffixes[2 * r + 1]], sampling_params=one)[0].metrics)
    res = {
        "model": "SmolLM2-135M-Instruct", "dtype": llm.engine.dtype, "prompt_tokens": prefix_len + 24,
        "cold_ttft_s": statistics.median(m["ttft"] for m in cold),
        "warm_ttft_s": statistics.median(m["ttft"] for m in warm),
        "warm_cached_tokens": warm[0]["cached_prompt_tokens"],
    }
    res["warm_over_cold"] = res["warm_ttft_s"] / res["cold_ttft_s"]
    print(f"TTFT, {res['prompt_tokens']}-token prompt, {prefix_len}-token shared prefix ({res['dtype']}):")
    print(f"  cold {res['cold_ttft_s'] * 1e3:8.1f} ms   warm {res['warm_ttft_s'] * 1e3:7.1f} ms "
          f"({res['warm_cached_tokens']} tokens from the cache)   warm/cold = {res['warm_over_cold']:.3f}", flush=True)
    if "llamacpp" in peers:
        res["llamacpp_cold_ttft_s"] = llamacpp_ttft(gguf, threads, prefix + suffixes[0], prefix_len + 256)
        print(f"  llama.cpp cold {res['llamacpp_cold_ttft_s'] * 1e3:8.1f} ms (Q4_1 as shipped)", flush=True)
    return res


def llamacpp_ttft(gguf: str, threads: int, ids, n_ctx: int) -> float:
    from llama_cpp import Llama

    m = Llama(gguf, n_ctx=n_ctx, n_threads=threads, n_batch=512, verbose=False)
    times = []
    for _ in range(2):
        m.reset()
        t = time.perf_counter()
        m.eval(ids)
        times.append(time.perf_counter() - t)
    return min(times)


# ---- 2. throughput vs batch size ------------------------------------------------------------

def bench_throughput(dtype: str, threads: int, batches, tokens: int, contexts: dict, k: int) -> list:
    from specdec_native import LLM, SamplingParams

    target = fetch_models.qwen_coder_gguf("1.5b")
    draft = fetch_models.qwen_coder_gguf("0.5b")
    longest = max(contexts.values()) + tokens + 16
    max_seqs = max(batches)
    configs = {
        "autoregressive": dict(),
        f"draft chain k={k}": dict(draft=draft, speculative={"method": "draft", "num_speculative_tokens": k}),
    }
    rows = []
    for name, extra in configs.items():
        llm = LLM(target, dtype=dtype, num_threads=threads, max_model_len=longest, max_num_seqs=max_seqs,
                  progress=False, **extra)
        wbytes = llm.engine.weight_bytes_per_token
        cfg = llm.config
        kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
        for ctx_name, ctx in contexts.items():
            prompts = token_slices(llm.tokenizer, ctx, max_seqs)
            params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
            # Prefill once: the timed runs find every prompt but its last token in the prefix cache,
            # so they time decoding.
            # Two tokens: one decode step also lets a draft model cache its own prefill.
            llm.generate(prompt_token_ids=prompts, sampling_params=SamplingParams(max_tokens=2, temperature=0))
            for b in batches:
                t = time.perf_counter()
                outs = llm.generate(prompt_token_ids=prompts[:b], sampling_params=params)
                wall = time.perf_counter() - t
                n = sum(len(o.token_ids) for o in outs)
                steps = sum(o.metrics["steps"] for o in outs) / b
                mal = sum(len(o.token_ids) - 1 for o in outs) / max(sum(o.metrics["steps"] for o in outs), 1)
                kv_gb = b * (ctx + tokens / 2) * kv_bytes_per_token / 1e9
                rows.append({"config": name, "context": ctx_name, "prompt_tokens": ctx, "batch": b,
                             "tokens_per_s": n / wall, "seconds": wall, "target_steps": steps,
                             "mean_accepted_length": mal, "weight_gb_per_step": wbytes / 1e9,
                             "kv_gb_per_step": kv_gb})
                print(f"  {name:22s} {ctx_name:5s} ctx {ctx:5d} batch {b:3d}: {n / wall:7.1f} tok/s "
                      f"({steps:5.1f} target steps/request, {mal:4.2f} tokens/step; reads/step: weights "
                      f"{wbytes / 1e9:.2f} GB + KV {kv_gb:.2f} GB)", flush=True)
        del llm
    return rows


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (config, ctx) in sorted({(r["config"], r["context"]) for r in rows}):
        pts = sorted((r["batch"], r["tokens_per_s"]) for r in rows if r["config"] == config and r["context"] == ctx)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                linestyle="-" if config == "autoregressive" else "--", label=f"{config}, {ctx} prompts")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (concurrent requests)")
    ax.set_ylabel("generated tokens/s (all requests)")
    ax.set_title("Qwen2.5-Coder-1.5B on 2 CPU cores: autoregressive vs speculative")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--tokens", type=int, default=32)
    # Whole pages + 1: the timed runs find all but the last prompt token in the prefix cache.
    ap.add_argument("--short", type=int, default=65, help="prompt tokens of the short context")
    ap.add_argument("--long", type=int, default=513, help="prompt tokens of the long context")
    ap.add_argument("--k", type=int, default=3, help="draft chain length")
    ap.add_argument("--prefix", type=int, default=2000, help="shared prefix tokens (TTFT)")
    ap.add_argument("--parts", default="ttft,throughput")
    ap.add_argument("--peers", default="llamacpp")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "serving.json"))
    args = ap.parse_args()
    parts, peers = set(args.parts.split(",")), set(filter(None, args.peers.split(",")))
    result = {"threads": args.threads, "dtype": args.dtype}
    if "ttft" in parts:
        result["ttft"] = bench_ttft(args.dtype, args.threads, args.prefix, 3, peers)
    if "throughput" in parts:
        batches = [int(b) for b in args.batches.split(",")]
        print(f"Throughput, {args.tokens} tokens per request, T = 0 ({args.dtype}):", flush=True)
        result["throughput"] = bench_throughput(args.dtype, args.threads, batches, args.tokens,
                                                {"short": args.short, "long": args.long}, args.k)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    if result.get("throughput"):
        plot(result["throughput"], out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
