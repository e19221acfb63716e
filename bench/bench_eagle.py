"""Feature-level drafting (EAGLE-3 heads) on the CPU, side by side in one run: autoregressive vs
an EAGLE-3 head vs n-gram (and the 0.5B draft model when the target is Qwen2.5-Coder-1.5B), plus
llama.cpp's autoregressive decoding of the same GGUF. Beside each row: mean accepted length and
the head's draft cost ratio c (one drafted token's time / one autoregressive step's).

    python bench/bench_eagle.py --head HEAD_DIR [--target smollm2|qwen1.5b|PATH] [--k 3 | --k 1,2,4,8]
                                [--trees 4:8:4,4:16:5] [--prompts heldout|code] [--tokens 64]
                                [--peers llamacpp]

--trees adds EAGLE-2 dynamic trees from the same head, each top_k:max_nodes:depth. --k takes a
list: one head chain per length (n-gram and the draft model use the first). Beside each row:
the target pass cost in autoregressive steps (the verification forward's time per pass over one
autoregressive step), and the draft nodes per pass.

A head comes from `specdec train-draft --target ... --out HEAD_DIR`; its held-out prompts
(HEAD_DIR/data.pt) are the default prompts, the prompts it was meant for. Batch 1, T = 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_models  # noqa: E402
from bench_spec import PROMPTS, prompt_ids, run_llamacpp  # noqa: E402


def target_path(name: str) -> str:
    if name == "smollm2":
        return fetch_models.smollm2_gguf()
    if name in ("qwen1.5b", "qwen0.5b"):
        return fetch_models.qwen_coder_gguf(name[4:])
    return name


def load_prompts(head: Path, which: str, llm):
    if which == "heldout":
        import torch

        data = torch.load(head / "data.pt", weights_only=False)
        return [h["ids"][:h["prompt_len"]] for h in data["heldout"]]
    return [prompt_ids(llm, *PROMPTS[which])]


def main() -> int:
    from specdec_native import LLM, SamplingParams

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head", required=True)
    ap.add_argument("--target", default="smollm2")
    ap.add_argument("--k", default="3", help="chain length(s) of the head, comma-separated")
    ap.add_argument("--trees", default="4:8:4,4:16:5", help="EAGLE-2 trees top_k:max_nodes:depth, comma-separated ('' for none)")
    ap.add_argument("--prompts", default="heldout", help="heldout (the head's data.pt) or one of " + ",".join(PROMPTS))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", default="llamacpp")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "eagle.json"))
    args = ap.parse_args()
    target = target_path(args.target)
    common = dict(dtype=args.dtype, num_threads=args.threads, progress=False, enable_prefix_caching=False)
    chains = [int(k) for k in str(args.k).split(",")]
    k = chains[0]
    configs = {
        "autoregressive": {},
        **{f"eagle chain k={c}": dict(draft=args.head, speculative={"method": "eagle", "num_speculative_tokens": c,
                                                                    "tree": "chain"}) for c in chains},
        **{f"eagle tree {t}": dict(draft=args.head, speculative={
            "method": "eagle", "num_speculative_tokens": int(t.split(":")[2]),
            "tree": {"top_k": int(t.split(":")[0]), "max_nodes": int(t.split(":")[1])}})
           for t in filter(None, args.trees.split(","))},
        f"ngram k={k}": dict(speculative={"method": "ngram", "num_speculative_tokens": k}),
    }
    if args.target == "qwen1.5b":
        configs[f"0.5B draft k={k}"] = dict(draft=fetch_models.qwen_coder_gguf("0.5b"),
                                            speculative={"method": "draft", "num_speculative_tokens": k})
    engines = {name: LLM(target, **common, **extra) for name, extra in configs.items()}
    prompts = load_prompts(Path(args.head), args.prompts, engines["autoregressive"])
    params = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    for llm in engines.values():  # warm up
        llm.generate(prompt_token_ids=prompts[:1], sampling_params=SamplingParams(max_tokens=4, temperature=0))
    seconds = {name: 0.0 for name in engines}
    tokens = {name: 0 for name in engines}
    accepted_len = {name: [] for name in engines}
    draft_s = {name: 0.0 for name in engines}
    drafted = {name: 0 for name in engines}
    verify_s = {name: 0.0 for name in engines}
    passes = {name: 0 for name in engines}
    for p in prompts:  # one request at a time (batch 1), configurations interleaved
        for name, llm in engines.items():
            t = time.perf_counter()
            o = llm.generate(prompt_token_ids=[p], sampling_params=params)[0]
            seconds[name] += time.perf_counter() - t
            tokens[name] += len(o.token_ids)
            accepted_len[name].append(o.metrics.get("mean_accepted_length", 1.0))
            draft_s[name] += o.metrics.get("draft_seconds", 0.0)
            drafted[name] += o.metrics.get("drafted", 0)
            verify_s[name] += o.metrics.get("verify_seconds", 0.0)
            passes[name] += o.metrics.get("steps", 0)
    ar_step = seconds["autoregressive"] / tokens["autoregressive"]
    # The forward alone, from the engine's own timing (no drafting, no Python): what verification costs.
    ar_pass = verify_s["autoregressive"] / max(passes["autoregressive"], 1)
    rows = []
    for name in engines:
        tps = tokens[name] / seconds[name]
        row = {"config": name, "tokens_per_s": tps, "vs_autoregressive": tps * ar_step,
               "mean_accepted_length": statistics.mean(accepted_len[name]),
               "draft_cost_ratio": (draft_s[name] / drafted[name]) / ar_step if drafted[name] else 0.0,
               "draft_share": draft_s[name] / seconds[name],
               "pass_cost": (verify_s[name] / max(passes[name], 1)) / ar_pass if ar_pass else 0.0,
               "nodes_per_pass": drafted[name] / max(passes[name], 1)}
        rows.append(row)
        print(f"{name:22s} {tps:7.1f} tok/s  {row['vs_autoregressive']:5.2f}x AR  "
              f"{row['mean_accepted_length']:4.2f} tokens/pass  c = {row['draft_cost_ratio']:.3f} per drafted token  "
              f"drafting {row['draft_share']:.0%} of the time  pass = {row['pass_cost']:.2f} AR steps "
              f"({row['nodes_per_pass']:.1f} nodes)", flush=True)
    if "llamacpp" in args.peers:
        gguf = target if target.endswith(".gguf") else None
        if gguf:
            tps = run_llamacpp(gguf, args.threads, args.tokens)
            rows.append({"config": "llama.cpp autoregressive", "tokens_per_s": tps, "vs_autoregressive": tps * ar_step})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "prompts": len(prompts), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
