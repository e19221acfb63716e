"""End to end on the GPU, side by side in one run: our autoregressive decoding vs speculative
decoding (draft model chain, n-gram) with LLM(device="cuda") (and autoregressive without CUDA
graphs, SPECDEC_CUDA_GRAPHS=0, to show what the graphs save), and transformers' generate (and
its assisted generation with the same draft) on the same GPU, against the bandwidth limit
(decode reads every weight once per token: tokens/s <= HBM bytes/s / weight bytes per token).

    python bench/bench_cuda_e2e.py [--pair qwen | --shape llama3-8b|qwen1.5b] [--tokens 128]
        [--k 4] [--dtype auto|int8|int4] [--peers transformers] [--out bench/results/cuda_e2e.json]

--pair qwen: the Qwen2.5-Coder 0.5B -> 1.5B GGUF pair (bench/fetch_models.py; it must already
be in the model cache on a machine without network), on code prompts.
--shape: a random-weight checkpoint of that shape (bf16, written here with transformers on the
GPU). Random weights agree with no other model, so the draft is the target itself (everything
accepted: the ceiling of speculation, not a realistic speedup) and n-gram runs on a repetitive
prompt. Batch 1, T = 0. Needs a CUDA GPU and the _cuda extension; exits with a message
otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {
    "llama3-8b": dict(arch="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
    "qwen1.5b": dict(arch="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                     num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0),
}
CODE_PROMPT = ("Write a Python function `merge_intervals(intervals)` that merges overlapping intervals "
               "and returns them sorted. Include a docstring and type hints.")


def write_random_checkpoint(shape: str, root: Path) -> Path:
    import torch
    import transformers

    spec = dict(SHAPES[shape])
    arch = spec.pop("arch")
    cfg_cls, model_cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[arch]
    config = getattr(transformers, cfg_cls)(max_position_embeddings=4096, tie_word_embeddings=False, **spec)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = getattr(transformers, model_cls)(config).to(torch.bfloat16)
    path = root / shape
    model.save_pretrained(str(path), safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    return path


def timed_generate(llm, prompt_ids, tokens):
    from specdec_native import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    llm.generate(prompt_token_ids=[prompt_ids], sampling_params=SamplingParams(max_tokens=4, temperature=0))
    t = time.perf_counter()
    out = llm.generate(prompt_token_ids=[prompt_ids], sampling_params=params)[0]
    return len(out.token_ids) / (time.perf_counter() - t), out


def transformers_tps(path, prompt_ids, tokens, assistant=None):
    import torch
    import transformers

    load = dict(torch_dtype=torch.bfloat16)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **load).cuda().eval()
    helper = transformers.AutoModelForCausalLM.from_pretrained(str(assistant), **load).cuda().eval() if assistant else None
    ids = torch.tensor([prompt_ids], device="cuda")
    kw = dict(do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)
    if helper is not None:
        kw["assistant_model"] = helper
    with torch.no_grad():
        model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(ids, **kw)
        torch.cuda.synchronize()
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t)


def main() -> int:
    from bench_cuda_attention import device_info
    from specdec_native import LLM, cuda

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", choices=["qwen"], default=None)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--dtype", default="auto", help="our weights on the GPU: auto (bf16), bfloat16, float16, int8, int4")
    ap.add_argument("--peers", default="transformers")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cuda_e2e.json"))
    args = ap.parse_args()
    if not cuda.cuda_available():
        raise SystemExit("needs a CUDA GPU and the _cuda extension (specdec_native.cuda.cuda_available() is False)")
    info = device_info()
    name, sms, peak = info["name"], info["sms"], info["peak_bytes_per_s"]
    tmp = tempfile.TemporaryDirectory()
    if args.pair == "qwen":
        import fetch_models

        target, draft = fetch_models.qwen_coder_gguf("1.5b"), fetch_models.qwen_coder_gguf("0.5b")
        label = "Qwen2.5-Coder 0.5B -> 1.5B"
    else:
        target = draft = write_random_checkpoint(args.shape, Path(tmp.name))
        label = f"random {args.shape} (draft = the target itself)"
    common = dict(device="cuda", dtype=args.dtype, progress=False, enable_prefix_caching=False)
    configs = {
        "autoregressive": {},
        "autoregressive, no graphs": dict(cuda_graphs=False),  # every forward eager: the launch overhead
        f"draft chain k={args.k}": dict(draft=str(draft), speculative={"method": "draft", "num_speculative_tokens": args.k}),
        f"ngram k={args.k}": dict(speculative={"method": "ngram", "num_speculative_tokens": args.k}),
    }
    rows = []
    ar = LLM(str(target), **common)
    if ar.tokenizer is not None and args.pair:
        prompt_ids = ar.tokenizer.encode(CODE_PROMPT)
    else:
        prompt_ids = [11, 12, 13, 14, 15, 16, 17, 18] * 8  # repetitive: n-gram drafts apply
    bound = peak / ar.engine.weight_bytes_per_token
    for cfg, extra in configs.items():
        extra = dict(extra)
        graphs = extra.pop("cuda_graphs", True)
        os.environ["SPECDEC_CUDA_GRAPHS"] = "1" if graphs else "0"  # read when the model loads
        llm = ar if not extra and graphs else LLM(str(target), **common, **extra)
        os.environ.pop("SPECDEC_CUDA_GRAPHS")
        tps, out = timed_generate(llm, prompt_ids, args.tokens)
        rows.append({"config": cfg, "tokens_per_s": tps, "mean_accepted_length": out.metrics.get("mean_accepted_length", 1.0)})
        print(f"{cfg:24s} {tps:8.1f} tok/s  {rows[-1]['mean_accepted_length']:.2f} tokens/pass", flush=True)
        if llm is not ar:
            del llm
    del ar
    if "transformers" in args.peers:
        for cfg, helper in [("transformers generate", None), ("transformers assisted", draft)]:
            try:
                tps = transformers_tps(target, prompt_ids, args.tokens, helper)
            except Exception as e:  # a peer that cannot run is reported, not fatal
                print(f"{cfg}: skipped ({type(e).__name__}: {e})")
                continue
            rows.append({"config": cfg, "tokens_per_s": tps})
            print(f"{cfg:24s} {tps:8.1f} tok/s", flush=True)
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["vs_autoregressive"] = r["tokens_per_s"] / base
    print(f"{label} on {name} ({sms} SMs): autoregressive bound {bound:.0f} tok/s "
          f"({peak / 1e9:.0f} GB/s peak / weight bytes per token)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "device": name, "model": label, "bound_tokens_per_s": bound,
                               "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
