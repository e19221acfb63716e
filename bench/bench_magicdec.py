"""MagicDec on the CPU: self-speculation with a sparse-KV draft (the target attending only its
attention-sink page and a recent window) against plain autoregressive decoding and a draft
model, as the context and the batch grow, side by side in one run.

MagicDec's argument: at long context decoding reads more KV than weights, so a draft that keeps
the weights but reads a fixed KV budget gets cheap relative to the target (c falls with the
context), while verifying k + 1 tokens reads the KV once. The crossover: as context and batch
grow, the sparse draft wins. Beside each row: the bytes one target step reads (weights + KV,
the memory-bound limit) and the measured draft/target cost.

    python bench/bench_magicdec.py [--models smollm2,qwen1.5b] [--contexts 512,2048,7680]
                                   [--batches 1,4,16] [--k 4] [--window 256] [--tokens 32]

Every request of a batch shares one long document (prefilled once, through the prefix cache)
and ends with its own suffix, so the timed part is decoding. Writes a table, JSON and a PNG
(bench/results/magicdec.{json,png}).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_models  # noqa: E402
from bench_serving import token_slices  # noqa: E402

SUFFIX = 16


def model_paths(name: str):
    """(target, draft model or None)."""
    if name == "smollm2":
        return fetch_models.smollm2_gguf(), None
    if name == "qwen1.5b":
        return fetch_models.qwen_coder_gguf("1.5b"), fetch_models.qwen_coder_gguf("0.5b")
    if name == "qwen0.5b":
        return fetch_models.qwen_coder_gguf("0.5b"), None
    raise SystemExit(f"unknown model {name!r}: smollm2, qwen0.5b, qwen1.5b")


def configs(draft, k: int, sink: int, window: int) -> dict:
    out = {"autoregressive": {},
           f"sparse_kv k={k}": dict(speculative={"method": "sparse_kv", "num_speculative_tokens": k,
                                                 "sink_tokens": sink, "window_tokens": window})}
    if draft:
        out[f"draft model k={k}"] = dict(draft=draft, speculative={"method": "draft", "num_speculative_tokens": k})
    return out


def run_model(name: str, contexts, batches, k: int, sink: int, window: int, tokens: int, dtype: str,
              threads: int) -> list:
    from specdec_native import LLM, SamplingParams

    target, draft = model_paths(name)
    longest = max(contexts) + SUFFIX + tokens + 16
    rows = []
    for config, extra in configs(draft, k, sink, window).items():
        llm = LLM(target, dtype=dtype, num_threads=threads, max_model_len=longest, max_num_seqs=max(batches),
                  progress=False, **extra)
        cfg = llm.config
        kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
        wbytes = llm.engine.weight_bytes_per_token
        for ctx in contexts:
            doc, *suffixes = token_slices(llm.tokenizer, ctx, 1 + max(batches))
            prompts = [doc + s[:SUFFIX] for s in suffixes]
            params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
            # Prefill once (two tokens: one decode step also lets a draft model cache its own
            # prefill); the timed runs find all but each prompt's last page in the prefix cache.
            # The document first, alone: requests admitted together would each prefill it.
            t = time.perf_counter()
            llm.generate(prompt_token_ids=[doc + [doc[0]]], sampling_params=SamplingParams(max_tokens=2, temperature=0))
            prefill = time.perf_counter() - t
            llm.generate(prompt_token_ids=prompts, sampling_params=SamplingParams(max_tokens=2, temperature=0))
            for b in batches:
                t = time.perf_counter()
                outs = llm.generate(prompt_token_ids=prompts[:b], sampling_params=params)
                wall = time.perf_counter() - t
                n = sum(len(o.token_ids) for o in outs)
                steps = sum(o.metrics["steps"] for o in outs)
                mal = sum(len(o.token_ids) - 1 for o in outs) / max(steps, 1)
                draft_s = sum(o.metrics.get("draft_seconds", 0.0) for o in outs)
                verify_s = sum(o.metrics.get("verify_seconds", 0.0) for o in outs)
                kv_gb = b * (ctx + SUFFIX + tokens / 2) * kv_bytes_per_token / 1e9
                row = {"model": name, "config": config, "context": ctx + SUFFIX, "batch": b,
                       "tokens_per_s": n / wall, "seconds": wall, "mean_accepted_length": mal,
                       "draft_share": draft_s / max(draft_s + verify_s, 1e-9),
                       "weight_gb_per_step": wbytes / 1e9, "kv_gb_per_step": kv_gb, "prefill_s": prefill}
                rows.append(row)
                print(f"  {name:8s} {config:18s} ctx {ctx + SUFFIX:5d} batch {b:3d}: {n / wall:7.1f} tok/s, "
                      f"{mal:4.2f} tokens/step, drafting {100 * row['draft_share']:4.1f}% of decode; "
                      f"target step reads {wbytes / 1e9:.2f} GB weights + {kv_gb:.2f} GB KV", flush=True)
        del llm
    return rows


def speedups(rows) -> list:
    """Each speculative row's tokens/s over the autoregressive row of the same cell."""
    ar = {(r["model"], r["context"], r["batch"]): r["tokens_per_s"] for r in rows if r["config"] == "autoregressive"}
    for r in rows:
        r["speedup_vs_ar"] = r["tokens_per_s"] / ar[(r["model"], r["context"], r["batch"])]
    return rows


def table(rows) -> str:
    lines = ["| model | config | context | batch | tok/s | x AR | tokens/step | drafting share | GB read per target step (W + KV) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['config']} | {r['context']} | {r['batch']} | {r['tokens_per_s']:.1f} | "
                     f"{r['speedup_vs_ar']:.2f} | {r['mean_accepted_length']:.2f} | {100 * r['draft_share']:.0f}% | "
                     f"{r['weight_gb_per_step']:.2f} + {r['kv_gb_per_step']:.2f} |")
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for config in sorted({r["config"] for r in rows if r["model"] == model and r["config"] != "autoregressive"}):
            for b in sorted({r["batch"] for r in rows}):
                pts = sorted((r["context"], r["speedup_vs_ar"]) for r in rows
                             if r["model"] == model and r["config"] == config and r["batch"] == b)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                            linestyle="-" if config.startswith("sparse") else "--", label=f"{config}, batch {b}")
        ax.axhline(1.0, color="gray", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("speedup over autoregressive")
        ax.set_title(f"{model}: sparse-KV self-speculation (MagicDec)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,qwen1.5b")
    ap.add_argument("--contexts", default="512,2048,7680")  # SmolLM2 holds 8,192 tokens
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--sink", type=int, default=16)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "magicdec.json"))
    args = ap.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for model in args.models.split(","):
        rows += run_model(model, contexts, batches, args.k, args.sink, args.window, args.tokens, args.dtype,
                          args.threads)
    speedups(rows)
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
