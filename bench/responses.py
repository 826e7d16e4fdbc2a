"""End-to-end time to generate the book's 110 test responses: the book's loop against ours.

Same model (gpt2-small shape, random weights, fp32, greedy), same prompts (the book's test
split in the alpaca style), same number of new tokens. The book's loop goes one record at
a time and runs the whole context through the model for every new token; ours is
`instructkit.responses.generate_responses` (batched, KV cache), what `instructkit generate`
runs. The book's loop is timed on the first `--book-records` records and its time for all
110 is extrapolated per record (the full run would take hours here); both must produce the
same responses on those records.

    python bench/responses.py [--new-tokens 64] [--book-records 10] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import BOOK_DATA, build_tokenizer, load_book_split
from book_reference import generate_book


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--book-records", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    if not BOOK_DATA.exists():
        print(f"skipped: {BOOK_DATA} not found")
        return 0
    from instructkit.data import get_style
    from instructkit.model import load_pretrained
    from instructkit.responses import extract_response, generate_responses

    tokenizer = build_tokenizer()
    model, _ = load_pretrained("random:gpt2-small", tokenizer=tokenizer, seed=0)
    model.eval()
    style = get_style("alpaca")
    _, test, _ = load_book_split()

    book_responses = []
    start = time.perf_counter()
    for record in test[: args.book_records]:
        prompt = style.prompt(record)
        idx = torch.tensor([tokenizer.encode(prompt)])
        out = generate_book(
            model, idx, args.new_tokens, model.config.context_length, tokenizer.eos_id
        )
        book_responses.append(
            extract_response(style, prompt, tokenizer.decode(out[0, idx.shape[1] :].tolist()))
        )
    book_per_record = (time.perf_counter() - start) / args.book_records

    start = time.perf_counter()
    ours = generate_responses(
        model,
        tokenizer,
        style,
        test,
        batch_size=args.batch_size,
        max_new_tokens=args.new_tokens,
        progress=False,
    )
    ours_total = time.perf_counter() - start

    same = [r["model_response"] for r in ours[: args.book_records]] == book_responses
    book_total = book_per_record * len(test)
    print(
        f"{len(test)} test records, {args.new_tokens} new tokens at most, gpt2-small random weights, "
        f"{torch.get_num_threads()} threads, tokenizer {getattr(tokenizer, 'name', '?')}"
    )
    print(
        f"book loop: {book_per_record:.2f} s/record on {args.book_records} records -> {book_total:.0f} s for all"
    )
    print(f"instructkit generate_responses (batch {args.batch_size}): {ours_total:.1f} s for all")
    print(f"speed-up: {book_total / ours_total:.1f}x; same responses on the timed records: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
