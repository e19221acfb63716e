"""Lossy acceptance (speculative cascades, typical acceptance) vs lossless speculation and plain
autoregressive decoding, on the Qwen2.5-Coder 0.5B -> 1.5B pair, side by side in one run: speed
against quality, as the rule's parameter varies.

Quality, measured against the target alone on the same prompts (T = 0):
  agreement  fraction of output positions equal to the target's own greedy output
  target_ll  the target's mean log-likelihood per generated token (teacher-forced scoring of the
             prompt + output with prompt_logits); the target's greedy output is the reference.

    python bench/bench_cascades.py [--tokens 48] [--dtype int4] [--out bench/results/cascades.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_models  # noqa: E402
from bench_spec import PROMPTS, prompt_ids  # noqa: E402

CONFIGS = [("lossless", {})] + [
    (f"cascade {rule} a={a}", {"acceptance": "cascade", "cascade_rule": rule, "cascade_alpha": a})
    for rule, alphas in (("chow", (0.1, 0.3, 0.5)), ("diff", (0.05, 0.2)), ("opt", (0.1, 0.5)))
    for a in alphas
] + [(f"typical eps={e}", {"acceptance": "typical", "typical_epsilon": e, "typical_delta": 0.3})
     for e in (0.09, 0.3)]


def mean_log_likelihood(llm, prompt, output) -> float:
    logits = llm.prompt_logits(prompt + output).astype(np.float64)
    rows = logits[len(prompt) - 1:len(prompt) - 1 + len(output)]
    rows -= rows.max(axis=1, keepdims=True)
    logp = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
    return float(np.mean(logp[np.arange(len(output)), output]))


def main() -> int:
    from specdec_native import LLM, SamplingParams, SpeculativeConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cascades.json"))
    args = ap.parse_args()
    target, draft = fetch_models.qwen_coder_gguf("1.5b"), fetch_models.qwen_coder_gguf("0.5b")
    params = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)

    def run(llm, prompts):
        t = time.perf_counter()
        outs = [llm.generate(prompt_token_ids=[p], sampling_params=params)[0] for p in prompts]
        return outs, sum(len(o.token_ids) for o in outs) / (time.perf_counter() - t)

    base = LLM(target, dtype=args.dtype, num_threads=args.threads, progress=False, enable_prefix_caching=False)
    prompts = [prompt_ids(base, kind, text) for kind, text in PROMPTS.values()]
    ref_outs, ar_tps = run(base, prompts)
    reference = [o.token_ids for o in ref_outs]
    ref_ll = float(np.mean([mean_log_likelihood(base, p, r) for p, r in zip(prompts, reference)]))
    rows = [{"config": "autoregressive", "tokens_per_s": ar_tps, "speedup": 1.0, "agreement": 1.0,
             "target_ll": ref_ll, "mean_accepted_length": 1.0}]
    print(f"{'config':24s} {'tok/s':>6s} {'speedup':>7s} {'agree':>6s} {'target ll':>9s} {'tok/step':>8s}")
    print(f"{'autoregressive':24s} {ar_tps:6.1f} {1.0:7.2f} {1.0:6.3f} {ref_ll:9.3f} {1.0:8.2f}", flush=True)
    for name, extra in CONFIGS:
        spec = SpeculativeConfig(method="draft", num_speculative_tokens=args.k, **extra)
        llm = LLM(target, dtype=args.dtype, num_threads=args.threads, progress=False, draft=draft,
                  speculative=spec, enable_prefix_caching=False)
        outs, tps = run(llm, prompts)
        agree = np.mean([np.mean(np.array(o.token_ids) == np.array(r)) for o, r in zip(outs, reference)])
        ll = float(np.mean([mean_log_likelihood(base, p, o.token_ids) for p, o in zip(prompts, outs)]))
        steps = sum(o.metrics["steps"] for o in outs)
        mal = sum(len(o.token_ids) - 1 for o in outs) / max(steps, 1)
        rows.append({"config": name, "tokens_per_s": tps, "speedup": tps / ar_tps, "agreement": float(agree),
                     "target_ll": ll, "mean_accepted_length": mal})
        print(f"{name:24s} {tps:6.1f} {tps / ar_tps:7.2f} {agree:6.3f} {ll:9.3f} {mal:8.2f}", flush=True)
        del llm
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"tokens": args.tokens, "k": args.k, "dtype": args.dtype, "rows": rows}, indent=1))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "agreement", "agreement with the target's greedy output"),
                           (axes[1], "target_ll", "target mean log-likelihood per token")):
        for r in rows:
            ax.scatter(r["speedup"], r[key])
            ax.annotate(r["config"], (r["speedup"], r[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("speedup over autoregressive")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Qwen2.5-Coder 0.5B -> 1.5B, T = 0: speed vs quality of lossy acceptance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
