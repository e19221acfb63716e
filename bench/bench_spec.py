"""Speculative decoding on the CPU with the real Qwen2.5-Coder pair (0.5B draft -> 1.5B target),
side by side in one run: autoregressive vs draft chain vs draft tree vs n-gram, at T = 0 and
T = 0.8, plus transformers' assisted generation and prompt lookup, and llama.cpp autoregressive.

Beside each speedup it prints what bounds it: the draft's cost ratio c (draft step / target
step), the verify ratio v(n) (target time for n tokens / for 1), the measured acceptance alpha,
and the analytic expectation (1 - a^(k+1)) / ((1 - a) (k c + v(k+1))).

    python bench/bench_spec.py [--dtype int4] [--tokens 96] [--threads 2] [--peers transformers,llamacpp]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_models  # noqa: E402

PASTED = ("The Apollo program was the third United States human spaceflight program carried out by "
          "NASA, which accomplished landing the first humans on the Moon from 1969 to 1972. It was "
          "first conceived during Dwight D. Eisenhower's administration as a three-person spacecraft "
          "to follow the one-person Project Mercury, which put the first Americans in space. Apollo "
          "was later dedicated to President John F. Kennedy's national goal of landing a man on the "
          "Moon and returning him safely to the Earth by the end of the 1960s.")

PROMPTS = {
    "code": ("completion", "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                           "    \"\"\" Check if in given list of numbers, are any two numbers closer to each other than\n"
                           "    given threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n    \"\"\"\n"),
    "code2": ("completion", "def quicksort(arr):\n    \"\"\"Sort a list of integers with quicksort and return a new list.\"\"\"\n"),
    "chat": ("chat", "Explain in three sentences what a hash map is and when to use one."),
    "summary": ("chat", "Summarize the following text in two sentences:\n\n" + PASTED),
}


def prompt_ids(llm, kind, text):
    if kind == "chat":
        rendered = llm.tokenizer.apply_chat_template([{"role": "user", "content": text}])
        return llm.tokenizer.encode(rendered, add_special_tokens=False)
    return llm.tokenizer.encode(text)


def timeit(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run_ours(target_dir, draft_dir, dtype, threads, tokens, temperature, configs_filter=None):
    from specdec_native import LLM, SamplingParams

    configs = [
        ("autoregressive", None, None),
        ("draft chain k=4", draft_dir, dict(method="draft", num_speculative_tokens=4)),
        ("draft chain k=6", draft_dir, dict(method="draft", num_speculative_tokens=6)),
        ("draft chain auto<=8", draft_dir, dict(method="draft", num_speculative_tokens=8, adaptive=True)),
        ("draft tree 2x6", draft_dir, dict(method="draft", num_speculative_tokens=4, tree={"top_k": 2, "max_nodes": 6})),
        ("draft tree 3x12", draft_dir, dict(method="draft", num_speculative_tokens=4, tree={"top_k": 3, "max_nodes": 12})),
        ("draft tree 3x12 auto", draft_dir, dict(method="draft", num_speculative_tokens=4,
                                                 tree={"top_k": 3, "max_nodes": 12}, adaptive=True)),
        ("draft tree 2x8 d6 auto", draft_dir, dict(method="draft", num_speculative_tokens=6,
                                                   tree={"top_k": 2, "max_nodes": 8}, adaptive=True)),
        ("ngram k=4", None, dict(method="ngram", num_speculative_tokens=4)),
        ("ngram auto<=8", None, dict(method="ngram", num_speculative_tokens=8, adaptive=True)),
    ]
    rows = []
    for name, draft, spec in configs:
        if configs_filter and name not in configs_filter and spec is not None:
            continue  # the autoregressive baseline always runs
        llm = LLM(str(target_dir), dtype=dtype, num_threads=threads, max_model_len=2048, max_num_seqs=1,
                  draft=str(draft) if draft else None, speculative=spec, progress=False)
        per_prompt = {}
        for pname, (kind, text) in PROMPTS.items():
            ids = prompt_ids(llm, kind, text)
            params = SamplingParams(max_tokens=tokens, temperature=temperature, seed=7, ignore_eos=True)
            llm.generate(prompt_token_ids=[ids[:8]], sampling_params=SamplingParams(max_tokens=2, temperature=0))
            out = llm.generate(prompt_token_ids=[ids], sampling_params=params)[0]
            m = out.metrics
            per_prompt[pname] = {
                "decode_tokens_per_s": m["decode_tokens_per_s"], "mean_accepted_length": m["mean_accepted_length"],
                "acceptance_rate": m["acceptance_rate"], "acceptance_by_position": m["acceptance_by_position"],
                "draft_seconds": m["draft_seconds"], "verify_seconds": m["verify_seconds"], "steps": m["steps"],
                "drafted_per_step": m["drafted"] / max(m["steps"], 1), "text": out.text[:80]}
        row = {"config": name, "spec": spec, "prompts": per_prompt}
        if spec and spec.get("adaptive"):
            row["cost_model"] = llm.engine.chain_length_cost_model()
        rows.append(row)
        print(f"  {name:20s} " + "  ".join(f"{p}: {v['decode_tokens_per_s']:5.1f} tok/s (mal {v['mean_accepted_length']:.2f})"
                                            for p, v in per_prompt.items()), flush=True)
        del llm
        gc.collect()
    return rows


def cost_model(target_dir, draft_dir, dtype, threads, k_max=8):
    """Step times: draft c = t_draft(1) / t_target(1); v(n) = t_target(n) / t_target(1)."""
    from specdec_native import LLM

    ids = list(range(1000, 1000 + 64))
    target = LLM(str(target_dir), dtype=dtype, num_threads=threads, max_model_len=2048, progress=False)
    t1 = timeit(lambda: target.prompt_logits(ids[:1]), 5)
    v = {n: timeit(lambda: target.prompt_logits(ids[:n]), 3) / t1 for n in (2, 3, 5, 7, 9, 13, 17)}
    del target
    gc.collect()
    draft = LLM(str(draft_dir), dtype=dtype, num_threads=threads, max_model_len=2048, progress=False)
    c = timeit(lambda: draft.prompt_logits(ids[:1]), 5) / t1
    del draft
    gc.collect()
    return {"target_step_seconds": t1, "c": c, "v": v}


def expected_speedup(alpha, k, c, v):
    if alpha >= 1:
        return (k + 1) / (k * c + v)
    return (1 - alpha ** (k + 1)) / ((1 - alpha) * (k * c + v))


def run_transformers(target_dir, draft_dir, threads, tokens):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(target_dir))
    target = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(str(draft_dir), dtype=torch.float32).eval()
    kind, text = PROMPTS["code"]
    ids = torch.tensor([tok(text).input_ids])
    results = {}
    for name, extra in [("transformers autoregressive", {}), ("transformers assisted (0.5B)", {"assistant_model": draft}),
                        ("transformers prompt lookup", {"prompt_lookup_num_tokens": 4})]:
        def gen(n):
            with torch.inference_mode():
                target.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id, **extra)
        gen(2)
        t1 = timeit(lambda: gen(1), 1)
        tn = timeit(lambda: gen(tokens), 1)
        results[name] = (tokens - 1) / (tn - t1)
        print(f"  {name:30s} {results[name]:5.2f} tok/s", flush=True)
    del target, draft
    gc.collect()
    return results


def run_llamacpp(gguf, threads, tokens):
    import bench_decode

    tps = bench_decode.bench_llamacpp(gguf, threads, tokens, repeats=2)["tokens_per_s"]
    print(f"  llama.cpp autoregressive ({Path(gguf).name})   {tps:5.2f} tok/s", flush=True)
    return tps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--temperatures", default="0,0.8")
    ap.add_argument("--peers", default="transformers,llamacpp")
    ap.add_argument("--configs", default="", help="comma-separated config names to run (default: all)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "spec.json"))
    args = ap.parse_args()
    from specdec_native import checkpoint

    target_gguf, draft_gguf = fetch_models.qwen_coder_gguf("1.5b"), fetch_models.qwen_coder_gguf("0.5b")
    target_dir = checkpoint.resolve(target_gguf, progress=True)
    draft_dir = checkpoint.resolve(draft_gguf, progress=True)

    print(f"cost model ({args.dtype}, {args.threads} threads) ...", flush=True)
    cost = cost_model(target_dir, draft_dir, args.dtype, args.threads)
    print(f"  target step {cost['target_step_seconds'] * 1e3:.1f} ms, draft cost ratio c = {cost['c']:.3f}, "
          "verify ratio v(n) = " + ", ".join(f"v({n})={x:.2f}" for n, x in cost["v"].items()), flush=True)

    report = {"dtype": args.dtype, "threads": args.threads, "tokens": args.tokens, "cost": cost, "runs": {}}
    for temp in [float(t) for t in args.temperatures.split(",")]:
        print(f"\nT = {temp}", flush=True)
        report["runs"][str(temp)] = run_ours(target_dir, draft_dir, args.dtype, args.threads, args.tokens, temp,
                                             [c for c in args.configs.split(",") if c] or None)
    if "transformers" in args.peers:
        print("\ntransformers (float32, T = 0, code prompt)", flush=True)
        report["transformers"] = run_transformers(target_dir, draft_dir, args.threads, min(args.tokens, 48))
    if "llamacpp" in args.peers:
        try:
            report["llamacpp_autoregressive"] = run_llamacpp(target_gguf, args.threads, args.tokens)
        except ImportError:
            print("llama-cpp-python not installed: skipping", flush=True)

    # Summary table: speedup over our own autoregressive, with the analytic expectation.
    print(f"\n{'T':>4s} {'config':20s} {'prompt':8s} {'tok/s':>7s} {'speedup':>8s} {'mal':>5s} {'alpha':>6s} {'expected':>9s} {'k/step':>6s}")
    for temp, rows in report["runs"].items():
        ar = {p: v["decode_tokens_per_s"] for p, v in rows[0]["prompts"].items()}
        for row in rows:
            spec = row["spec"] or {}
            k = spec.get("num_speculative_tokens", 0)
            for p, v in row["prompts"].items():
                speedup = v["decode_tokens_per_s"] / ar[p]
                v["speedup"] = speedup
                exp = ""
                if spec.get("method") == "draft" and not spec.get("tree") and not spec.get("adaptive"):
                    alpha = v["acceptance_rate"]
                    vv = cost["v"].get(k + 1) or cost["v"][min(cost["v"], key=lambda n: abs(n - k - 1))]
                    v["expected_speedup"] = expected_speedup(alpha, k, cost["c"], vv)
                    exp = f"{v['expected_speedup']:.2f}x"
                print(f"{temp:>4s} {row['config']:20s} {p:8s} {v['decode_tokens_per_s']:7.1f} {speedup:7.2f}x "
                      f"{v['mean_accepted_length']:5.2f} {v['acceptance_rate']:6.2f} {exp:>9s} {v['drafted_per_step']:6.2f}")
        code_best = max(statistics.mean([r["prompts"]["code"]["speedup"], r["prompts"]["code2"]["speedup"]]) for r in rows)
        print(f"  best speedup on code at T={temp}: {code_best:.2f}x")
    if report.get("llamacpp_autoregressive"):
        best = max(r["prompts"]["code"]["decode_tokens_per_s"] for r in report["runs"]["0.0"]) if "0.0" in report["runs"] else None
        if best:
            print(f"\nbest speculative tok/s on the code prompt at T=0: {best:.1f} = "
                  f"{best / report['llamacpp_autoregressive']:.2f}x llama.cpp autoregressive")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
