"""Autoregressive decode speed on the CPU, side by side in one run:
specdec_native (float32, bfloat16, int8) vs transformers (float32, bfloat16, same threads) vs
llama.cpp (llama-cpp-python on the GGUF file itself), against the memory-bandwidth roofline
measured in the same run: decode reads every weight once per token, so
tokens/s <= read bandwidth / weight bytes per token.

    python bench/bench_decode.py [--models smollm2,qwen1.5b] [--threads 2] [--tokens 64]

Prints a table and writes JSON (default bench/results/decode.json). Needs the [bench] extra;
llama-cpp-python is optional (`pip install llama-cpp-python`, built from source). On a CPU
with AMX, its default native build (0.3.36, seen 2026-12-04) crashes in ggml's AMX matmul on
the first token of these GGUF files; build it without AMX to measure it:
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
      -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF \
      -DGGML_AMX_INT8=OFF" pip install --force-reinstall --no-deps llama-cpp-python
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_models  # noqa: E402

PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"


def gguf_for(name: str) -> str:
    if name == "smollm2":
        return fetch_models.smollm2_gguf()
    if name in ("qwen0.5b", "qwen1.5b"):
        return fetch_models.qwen_coder_gguf(name[4:])
    raise SystemExit(f"unknown model {name!r} (smollm2, qwen0.5b, qwen1.5b)")


def bench_ours(hf_dir: Path, dtype: str, threads: int, tokens: int, repeats: int) -> dict:
    from specdec_native import LLM, SamplingParams

    llm = LLM(str(hf_dir), dtype=dtype, num_threads=threads, max_model_len=1024, max_num_seqs=1,
              progress=False)
    ids = llm.tokenizer.encode(PROMPT)
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    llm.generate(prompt_token_ids=[ids], sampling_params=SamplingParams(max_tokens=4, temperature=0.0))
    best = 0.0
    for _ in range(repeats):
        out = llm.generate(prompt_token_ids=[ids], sampling_params=params)[0]
        best = max(best, out.metrics["decode_tokens_per_s"])
    result = {"tokens_per_s": best, "bytes_per_token": llm.engine.weight_bytes_per_token,
              "dtype": llm.engine.dtype}
    del llm
    gc.collect()
    return result


def bench_transformers(hf_dir: Path, dtype: str, threads: int, tokens: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), torch_dtype=tdtype).eval()
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    ids = tok(PROMPT, return_tensors="pt").input_ids

    def run(n):
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=tok.eos_token_id)
        return time.perf_counter() - t

    run(2)
    best = 0.0
    for _ in range(repeats):
        t1, tn = run(1), run(tokens)
        best = max(best, (tokens - 1) / (tn - t1))
    bytes_per_token = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                          if "embed_tokens" not in n or model.config.tie_word_embeddings)
    del model
    gc.collect()
    return {"tokens_per_s": best, "bytes_per_token": bytes_per_token, "dtype": dtype}


def bench_llamacpp(gguf: str, threads: int, tokens: int, repeats: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=1024, verbose=False)
    ids = llm.tokenize(PROMPT.encode())
    best = 0.0
    for _ in range(repeats + 1):
        llm.reset()
        t_first = None
        for i, _tok in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True)):
            if i == 0:
                t_first = time.perf_counter()
            if i == tokens:
                break
        best = max(best, (tokens) / (time.perf_counter() - t_first))
    import gguf as gguf_lib

    reader = gguf_lib.GGUFReader(gguf)
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    bytes_per_token = sum(int(t.n_bytes) for t in reader.tensors if tied or t.name != "token_embd.weight")
    del llm
    gc.collect()
    return {"tokens_per_s": best, "bytes_per_token": bytes_per_token, "dtype": "gguf"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,qwen1.5b")
    ap.add_argument("--dtypes", default="float32,bfloat16,int8,int4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--peers", default="transformers,llamacpp")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "decode.json"))
    args = ap.parse_args()

    from specdec_native import checkpoint, ops

    ops.set_num_threads(args.threads)
    bandwidth = [ops.measure_read_bandwidth(1 << 30, 5)]
    rows = []
    for name in args.models.split(","):
        gguf = gguf_for(name)
        hf_dir = checkpoint.resolve(gguf, progress=True)  # float32 Hugging Face directory
        for dtype in args.dtypes.split(","):
            print(f"[{name}] specdec_native {dtype} ...", flush=True)
            rows.append({"model": name, "engine": "specdec_native", **bench_ours(hf_dir, dtype, args.threads, args.tokens, args.repeats)})
        if "transformers" in args.peers:
            for dtype in [d for d in args.dtypes.split(",") if d in ("float32", "bfloat16")]:
                print(f"[{name}] transformers {dtype} ...", flush=True)
                rows.append({"model": name, "engine": "transformers", **bench_transformers(hf_dir, dtype, args.threads, args.tokens, args.repeats)})
        if "llamacpp" in args.peers:
            try:
                import llama_cpp  # noqa: F401
            except ImportError:
                print("llama-cpp-python is not installed: skipping the llama.cpp peer", flush=True)
            else:
                print(f"[{name}] llama.cpp ...", flush=True)
                rows.append({"model": name, "engine": "llama.cpp", **bench_llamacpp(gguf, args.threads, args.tokens, args.repeats)})
    bandwidth.append(ops.measure_read_bandwidth(1 << 30, 5))
    bw = max(bandwidth)

    print(f"\nread bandwidth ({args.threads} threads): {bw / 1e9:.1f} GB/s "
          f"(start {bandwidth[0] / 1e9:.1f}, end {bandwidth[1] / 1e9:.1f}); decode roofline = bandwidth / bytes per token\n")
    header = f"{'model':9s} {'engine':15s} {'dtype':9s} {'MB/token':>9s} {'roofline':>9s} {'tok/s':>7s} {'%roof':>6s} {'vs HF f32':>9s} {'vs llama.cpp':>12s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        r["roofline_tokens_per_s"] = bw / r["bytes_per_token"]
        r["fraction_of_roofline"] = r["tokens_per_s"] / r["roofline_tokens_per_s"]
        hf = next((x for x in rows if x["model"] == r["model"] and x["engine"] == "transformers" and x["dtype"] == "float32"), None)
        lc = next((x for x in rows if x["model"] == r["model"] and x["engine"] == "llama.cpp"), None)
        r["vs_transformers_f32"] = r["tokens_per_s"] / hf["tokens_per_s"] if hf else None
        r["vs_llamacpp"] = r["tokens_per_s"] / lc["tokens_per_s"] if lc else None
        fmt = lambda v: f"{v:.2f}x" if v else "-"
        print(f"{r['model']:9s} {r['engine']:15s} {r['dtype']:9s} {r['bytes_per_token'] / 1e6:9.1f} "
              f"{r['roofline_tokens_per_s']:9.1f} {r['tokens_per_s']:7.1f} {100 * r['fraction_of_roofline']:5.0f}% "
              f"{fmt(r['vs_transformers_f32']):>9s} {fmt(r['vs_llamacpp']):>12s}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "tokens": args.tokens, "bandwidth_bytes_per_s": bw,
                               "bandwidth_samples": bandwidth, "cpu": _cpu_name(), "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
