"""Feature-level drafting (EAGLE-3 heads) on the CPU, side by side in one run: autoregressive vs
an EAGLE-3 head vs n-gram (and the 0.5B draft model when the target is Qwen2.5-Coder-1.5B, also
with its LM head cut to the head's draft vocabulary or --draft-vocab's: FR-Spec's `draft_vocab`), plus
llama.cpp's autoregressive decoding of the same GGUF. Beside each row: mean accepted length and
the head's draft cost ratio c (one drafted token's time / one autoregressive step's).

    python bench/bench_eagle.py [--head HEAD_DIR] [--target smollm2|qwen1.5b|PATH] [--k 3 | --k 1,2,4,8]
                                [--trees 4:8:4,4:16:5] [--prompts heldout,code,code2] [--tokens 64]
                                [--peers llamacpp] [--compare-head OTHER_HEAD_DIR] [--draft-k 3,4]
                                [--draft-vocab VOCAB.json] [--draft-adaptive 6] [--repeats 3]

--trees adds EAGLE-2 dynamic trees from the same head, each top_k:max_nodes:depth. --k takes a
list: one head chain per length (n-gram uses the first; the draft model --draft-k's, default the first). Beside each row:
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


def load_prompts(head: Path, which: str, llm):
    if which == "heldout":
        import torch

        data = torch.load(head / "data.pt", weights_only=False)
        return [h["ids"][:h["prompt_len"]] for h in data["heldout"]]
    return [prompt_ids(llm, *PROMPTS[which])]


def measure(engines, prompts, tokens_per_request, repeats=1):
    """One request at a time (batch 1), configurations interleaved; each (configuration, prompt)
    runs `repeats` times and keeps its fastest run (the machine's noise only ever slows a run);
    a row per configuration."""
    from specdec_native import SamplingParams

    params = SamplingParams(max_tokens=tokens_per_request, temperature=0, ignore_eos=True)
    for llm in engines.values():  # warm up
        llm.generate(prompt_token_ids=prompts[:1], sampling_params=SamplingParams(max_tokens=4, temperature=0))
    best = {}  # (name, prompt index) -> (seconds, output)
    for _ in range(repeats):
        for i, p in enumerate(prompts):
            for name, llm in engines.items():
                t = time.perf_counter()
                o = llm.generate(prompt_token_ids=[p], sampling_params=params)[0]
                seconds = time.perf_counter() - t
                if (name, i) not in best or seconds < best[name, i][0]:
                    best[name, i] = (seconds, o)
    keys = ("seconds", "tokens", "draft_s", "drafted", "verify_s", "passes")
    acc = {name: dict.fromkeys(keys, 0.0) for name in engines}
    accepted_len = {name: [] for name in engines}
    for (name, _), (seconds, o) in best.items():
        a = acc[name]
        a["seconds"] += seconds
        a["tokens"] += len(o.token_ids)
        a["draft_s"] += o.metrics.get("draft_seconds", 0.0)
        a["drafted"] += o.metrics.get("drafted", 0)
        a["verify_s"] += o.metrics.get("verify_seconds", 0.0)
        a["passes"] += o.metrics.get("steps", 0)
        accepted_len[name].append(o.metrics.get("mean_accepted_length", 1.0))
    ar = acc["autoregressive"]
    ar_step = ar["seconds"] / ar["tokens"]
    # The forward alone, from the engine's own timing (no drafting, no Python): what verification costs.
    ar_pass = ar["verify_s"] / max(ar["passes"], 1)
    rows = []
    for name, a in acc.items():
        tps = a["tokens"] / a["seconds"]
        row = {"config": name, "tokens_per_s": tps, "vs_autoregressive": tps * ar_step,
               "mean_accepted_length": statistics.mean(accepted_len[name]),
               "draft_cost_ratio": (a["draft_s"] / a["drafted"]) / ar_step if a["drafted"] else 0.0,
               "draft_share": a["draft_s"] / a["seconds"],
               "pass_cost": (a["verify_s"] / max(a["passes"], 1)) / ar_pass if ar_pass else 0.0,
               "nodes_per_pass": a["drafted"] / max(a["passes"], 1)}
        rows.append(row)
        print(f"{name:22s} {tps:7.1f} tok/s  {row['vs_autoregressive']:5.2f}x AR  "
              f"{row['mean_accepted_length']:4.2f} tokens/pass  c = {row['draft_cost_ratio']:.3f} per drafted token  "
              f"drafting {row['draft_share']:.0%} of the time  pass = {row['pass_cost']:.2f} AR steps "
              f"({row['nodes_per_pass']:.1f} nodes)", flush=True)
    return rows


def main() -> int:
    from specdec_native import LLM

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head", help="an EAGLE-3 head directory (without one: only the other drafters' rows, "
                                   "on --prompts other than heldout)")
    ap.add_argument("--compare-head", help="another head (say an earlier one) whose chains run beside --head's")
    ap.add_argument("--target", default="smollm2")
    ap.add_argument("--k", default="3", help="chain length(s) of the head, comma-separated")
    ap.add_argument("--trees", default="4:8:4,4:16:5", help="EAGLE-2 trees top_k:max_nodes:depth, comma-separated ('' for none)")
    ap.add_argument("--prompts", default="heldout",
                    help="comma-separated sets, each measured in turn: heldout (the head's data.pt) or one of "
                         + ",".join(PROMPTS))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--draft-vocab", help="the 0.5B draft's reduced vocabulary (JSON list of ids; default: the head's)")
    ap.add_argument("--draft-k", help="qwen1.5b: the 0.5B draft model's chain length(s), comma-separated (default: --k's first)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each (configuration, prompt); the fastest is kept")
    ap.add_argument("--draft-adaptive", type=int, default=0, metavar="K",
                    help="qwen1.5b: add the 0.5B draft (with the draft vocabulary) choosing each step's chain length <= K")
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", default="llamacpp")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "eagle.json"))
    args = ap.parse_args()
    target = fetch_models.model_or_path(args.target)
    common = dict(dtype=args.dtype, num_threads=args.threads, progress=False, enable_prefix_caching=False)
    chains = [int(k) for k in str(args.k).split(",")]
    k = chains[0]
    if not args.head and "heldout" in args.prompts.split(","):
        ap.error("--prompts heldout needs --head (its held-out prompts)")
    heads = [args.head] if args.head else []
    configs = {
        "autoregressive": {},
        **{f"eagle chain k={c}": dict(draft=head, speculative={"method": "eagle", "num_speculative_tokens": c,
                                                               "tree": "chain"}) for c in chains for head in heads},
        **{f"eagle tree {t}": dict(draft=head, speculative={
            "method": "eagle", "num_speculative_tokens": int(t.split(":")[2]),
            "tree": {"top_k": int(t.split(":")[0]), "max_nodes": int(t.split(":")[1])}})
           for t in filter(None, args.trees.split(",")) for head in heads},
        **{f"eagle chain k={c} ({Path(args.compare_head).name})": dict(
            draft=args.compare_head, speculative={"method": "eagle", "num_speculative_tokens": c, "tree": "chain"})
           for c in (chains if args.compare_head else [])},
        f"ngram k={k}": dict(speculative={"method": "ngram", "num_speculative_tokens": k}),
    }
    if args.target == "qwen1.5b":
        draft = fetch_models.qwen_coder_gguf("0.5b")
        vocab = args.draft_vocab or args.head  # FR-Spec: an LM head of these tokens only (a head: its t2d)
        for dk in [int(x) for x in args.draft_k.split(",")] if args.draft_k else [k]:
            configs[f"0.5B draft k={dk}"] = dict(draft=draft, speculative={"method": "draft", "num_speculative_tokens": dk})
            if vocab:
                configs[f"0.5B draft k={dk}, draft vocab"] = dict(draft=draft, speculative={
                    "method": "draft", "num_speculative_tokens": dk, "draft_vocab": vocab})
        if args.draft_adaptive and vocab:
            configs[f"0.5B draft adaptive k<={args.draft_adaptive}, draft vocab"] = dict(draft=draft, speculative={
                "method": "draft", "num_speculative_tokens": args.draft_adaptive, "adaptive": True, "draft_vocab": vocab})
    engines = {name: LLM(target, **common, **extra) for name, extra in configs.items()}
    llamacpp = None
    if "llamacpp" in args.peers and target.endswith(".gguf"):
        llamacpp = run_llamacpp(target, args.threads, args.tokens)
    sets = {}
    for which in filter(None, args.prompts.split(",")):
        prompts = load_prompts(Path(args.head or "."), which, engines["autoregressive"])
        print(f"-- prompts: {which} ({len(prompts)})", flush=True)
        rows = measure(engines, prompts, args.tokens, args.repeats)
        if llamacpp is not None:
            ar_tps = rows[0]["tokens_per_s"]
            rows.append({"config": "llama.cpp autoregressive", "tokens_per_s": llamacpp,
                         "vs_autoregressive": llamacpp / ar_tps})
            print(f"  llama.cpp autoregressive ({Path(target).name})   {llamacpp:.2f} tok/s; "
                  f"best here {max(r['tokens_per_s'] for r in rows) / llamacpp:.2f}x of it", flush=True)
        sets[which] = {"prompts": len(prompts), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "sets": sets}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
