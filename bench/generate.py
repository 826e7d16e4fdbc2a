"""Benchmark: new tokens per second with the KV cache against the book's loop without it.

Both run the same GPTModel (gpt2-small shape, random weights, fp32, greedy). The book's
`generate_text_simple` feeds the whole context through the model for every new token;
`instructkit.generate.generate` feeds one position per token and keeps the rest in a
KV cache. The run checks that both produce the same tokens, then measures batch-8
throughput of `generate_batch` (prompts of different lengths, left-padded).

    python bench/generate.py                     # 256 new tokens, gpt2-small, batch 8
    python bench/generate.py --preset tiny --new-tokens 32   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from instructkit.generate import generate, generate_batch
from instructkit.model import load_pretrained


def book_generate(model, idx: torch.Tensor, max_new_tokens: int, context_size: int) -> torch.Tensor:
    """The book's generate_text_simple: the whole (cropped) context every step."""
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits = model(idx_cond)
        idx_next = torch.argmax(logits[:, -1, :], dim=-1, keepdim=True)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, _ = load_pretrained(f"random:{args.preset}", seed=0)
    context = model.config.context_length
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, args.prompt_tokens), generator=generator)  # (1, P)
    lengths = [args.prompt_tokens - 8 + (i * 16) // max(args.batch, 1) for i in range(args.batch)]
    batch = [torch.randint(0, vocab, (max(n, 1),), generator=generator).tolist() for n in lengths]

    generate(model, prompt, 4)  # warm-up: allocator, kernels
    book_generate(model, prompt, 4, context)

    cached, cached_s = timed(generate, model, prompt, args.new_tokens, context_size=context)
    reference, reference_s = timed(book_generate, model, prompt, args.new_tokens, context)
    same = torch.equal(cached, reference)
    batched, batch_s = timed(generate_batch, model, batch, args.new_tokens, batch_size=args.batch)
    batch_tokens = sum(len(tokens) for tokens in batched)

    results = {
        "preset": args.preset,
        "params": model.num_parameters(),
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "book_loop_tokens_per_s": round(args.new_tokens / reference_s, 2),
        "kv_cache_tokens_per_s": round(args.new_tokens / cached_s, 2),
        "kv_cache_speedup": round(reference_s / cached_s, 2),
        "same_tokens": same,
        "batch": args.batch,
        "batch_prompt_tokens": lengths,
        "batch_tokens_per_s": round(batch_tokens / batch_s, 2),
        "batch_vs_single_stream": round((batch_tokens / batch_s) / (args.new_tokens / cached_s), 2),
    }
    print(json.dumps(results, indent=2))
    print(
        f"KV cache: {results['kv_cache_tokens_per_s']} tokens/s vs book loop "
        f"{results['book_loop_tokens_per_s']} tokens/s = {results['kv_cache_speedup']}x "
        f"(same tokens: {same}); batch {args.batch}: {results['batch_tokens_per_s']} tokens/s "
        f"= {results['batch_vs_single_stream']}x single-stream"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    if not same:
        raise SystemExit("cached and uncached generation disagree")


if __name__ == "__main__":
    main()
