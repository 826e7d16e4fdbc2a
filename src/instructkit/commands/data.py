"""`instructkit data`: look at an instruction file before training on it, or write the built-in one.

`inspect` validates every record, then reports what training will see: split sizes,
token lengths of prompts and responses, records that truncation would cut (and whose
end-of-text target the book's collate would lose), records that would train on nothing
with prompt masking, and the padding efficiency of random, length-grouped and packed
batches. `builtin` writes the built-in demo dataset to a file.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from instructkit.commands import HelpFormatter

SHOWN_TOKEN_CHARS = 18


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect an instruction file or write the built-in dataset",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    inspect = actions.add_parser(
        "inspect",
        help="validate a records file and report token lengths and batching statistics",
        description="Validate FILE (JSON list, JSONL or CSV) and report what training will see.",
        formatter_class=HelpFormatter,
    )
    inspect.add_argument("file", type=Path, metavar="FILE", help="records file")
    inspect.add_argument(
        "--tokenizer",
        default="gpt2",
        help="tiktoken name, .tiktoken ranks file, tokenizer.json, or a directory holding one",
    )
    inspect.add_argument(
        "--fields",
        default=None,
        help="column mapping, e.g. instruction=prompt,output=completion",
    )
    inspect.add_argument("--style", default="alpaca", help="prompt style (alpaca, phi3, chatml)")
    inspect.add_argument("--context-length", type=int, default=1024, help="model context length")
    inspect.add_argument(
        "--allowed-max-length",
        type=int,
        default=None,
        help="truncate examples to this many tokens (default: the context length)",
    )
    inspect.add_argument("--batch-size", type=int, default=8, help="batch size for padding stats")
    inspect.add_argument("--seed", type=int, default=0, help="seed for the shuffled batches")
    inspect.add_argument(
        "--show-labels",
        type=int,
        default=0,
        metavar="N",
        help="print the first N examples token by token, marking trained and ignored targets",
    )
    inspect.add_argument(
        "--plot", type=Path, default=None, metavar="FILE.png", help="write a token-length histogram"
    )
    inspect.add_argument(
        "--check-packing",
        action="store_true",
        help="self-test: each example's logits and the loss must be the same packed as padded",
    )
    inspect.add_argument(
        "--model",
        default="random:tiny",
        help="model for --check-packing (any spec finetune accepts); random:tiny needs no download",
    )
    inspect.add_argument(
        "--check-examples", type=int, default=16, help="examples the packing self-test uses"
    )
    inspect.set_defaults(run=run)

    builtin = actions.add_parser(
        "builtin",
        help="write the built-in instruction dataset (what the demo trains on)",
        description="Write the built-in instruction dataset as a JSON list.",
        formatter_class=HelpFormatter,
    )
    builtin.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file")
    builtin.add_argument("--seed", type=int, default=0, help="generation seed")
    builtin.set_defaults(run=run_builtin)


def run_builtin(args: argparse.Namespace) -> int:
    from instructkit.data.builtin import write_builtin

    count = write_builtin(args.out, args.seed)
    print(f"wrote {count} records to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from instructkit.data import (
        get_style,
        load_instructions,
        parse_fields,
        resolve_split_method,
        split_records,
    )
    from instructkit.errors import UserError

    problems = [
        f"--{name.replace('_', '-')} must be at least 1, got {value}"
        for name, value in (
            ("context_length", args.context_length),
            ("allowed_max_length", args.allowed_max_length),
            ("batch_size", args.batch_size),
        )
        if value is not None and value < 1
    ]
    if problems:
        raise UserError(problems)
    style = get_style(args.style)
    records = load_instructions(args.file, parse_fields(args.fields))
    method = resolve_split_method(records)
    train, test, val = split_records(records, method, source=args.file)
    print(f"{args.file}: {len(records)} records, all valid")
    print(f"  with input: {sum(bool(r['input']) for r in records)}")
    extra = sorted({key for r in records for key in r} - {"instruction", "input", "output"})
    if extra:
        print(f"  extra keys kept: {', '.join(extra)}")
    split_by = "each record's split field" if method == "field" else "book split"
    print(f"  {split_by} (train/test/val): {len(train)}/{len(test)}/{len(val)}")
    for field in ("instruction", "input", "output"):
        print(f"  {field} characters: {_stats([len(r[field]) for r in records])}")

    tokenizer = _tokenizer_or_none(args.tokenizer)
    if tokenizer is None:
        return 0
    return _token_report(args, records, style, tokenizer)


def _tokenizer_or_none(spec: str):
    """Load the tokenizer; a tiktoken name that cannot be downloaded only skips token stats."""
    import tiktoken

    from instructkit.errors import ModelError
    from instructkit.tokenizer import load_tokenizer

    try:
        return load_tokenizer(spec)
    except ModelError as error:
        if Path(spec).exists() or spec not in tiktoken.list_encoding_names():
            raise
        print(f"token statistics skipped: they need a tokenizer, and {error.problems[0]}")
        print("  e.g. --tokenizer path/to/tokenizer.json")
        return None


def _token_report(args, records, style, tokenizer) -> int:
    from instructkit.data import InstructionCollator, InstructionDataset, build_loader
    from instructkit.errors import DataError

    dataset = InstructionDataset(records, tokenizer, style)
    limit = args.allowed_max_length or args.context_length
    prompts = [example.prompt_length for example in dataset.examples]
    responses = [len(example) - example.prompt_length for example in dataset.examples]
    totals = dataset.lengths
    print(f"tokens ({tokenizer.name}, style {style.name}, vocabulary {tokenizer.vocab_size}):")
    print(f"  prompt:   {_stats(prompts)}")
    print(f"  response: {_stats(responses)}")
    print(f"  total:    {_stats([t + 1 for t in totals])}  (with the end-of-text token)")
    over_context = sum(t + 1 > args.context_length for t in totals)
    truncated = sum(t > limit for t in totals)
    print(f"  longer than the context length {args.context_length}: {over_context}")
    print(
        f"  truncated to {limit} tokens: {truncated} (the book's collate drops their "
        "end-of-text target; InstructionCollator keeps it)"
    )
    masking = InstructionCollator(tokenizer.eos_id, allowed_max_length=limit, mask_prompt=True)
    empty = 0
    for start in range(0, len(dataset), 64):
        batch = masking(dataset.examples[start : start + 64])
        empty += int(((batch.targets != masking.ignore_index).sum(1) == 0).sum())
    print(f"  training on zero tokens with mask_prompt: {empty}")

    print(f"padding efficiency, real tokens / all tokens (batch size {args.batch_size}):")
    modes = (
        ("random", InstructionCollator(tokenizer.eos_id, allowed_max_length=limit), False),
        ("length-grouped", InstructionCollator(tokenizer.eos_id, allowed_max_length=limit), True),
        (
            "packed",
            InstructionCollator(tokenizer.eos_id, allowed_max_length=limit, pack=True),
            False,
        ),
    )
    for name, collator, grouped in modes:
        loader = build_loader(
            dataset, collator, args.batch_size, group_by_length=grouped, seed=args.seed
        )
        batches = list(loader)
        real = sum(batch.num_real_tokens for batch in batches)
        total = sum(batch.input_ids.numel() for batch in batches)
        shape = f"{len(batches)} batch" + ("" if len(batches) == 1 else "es")
        if collator.pack:
            shape += f" of up to {args.batch_size} rows x {limit} tokens"
        print(f"  {name + ':':16}{real / total:.3f}  ({shape})")

    if args.show_labels:
        _show_labels(dataset, tokenizer, limit, args.show_labels)
    if args.check_packing:
        _check_packing(args, dataset, tokenizer, limit)
    if args.plot:
        from instructkit.plots import plot_length_histogram

        plot_length_histogram(prompts, responses, args.plot, limit, title=str(args.file.name))
        print(f"wrote {args.plot}")

    problems = [
        f"{args.file}: record index {index}: prompt alone is {length} tokens, the context "
        f"length is {args.context_length}: no room for the response"
        for index, length in enumerate(prompts)
        if length >= args.context_length
    ]
    if problems:
        raise DataError(problems)
    return 0


def _check_packing(args, dataset, tokenizer, limit: int) -> None:
    """Run the packed-vs-padded self-test on the first examples of the user's data."""
    from instructkit.errors import UserError
    from instructkit.model import load_pretrained
    from instructkit.model.packing_check import TOLERANCE, check_packing

    model, _ = load_pretrained(args.model, tokenizer=tokenizer)
    max_length = min(limit, model.config.context_length)
    check = check_packing(
        model, dataset.examples[: args.check_examples], tokenizer.eos_id, max_length
    )
    print(
        f"packing self-test ({args.model}, {check.examples} examples in {check.packed_rows} "
        f"packed rows): max logit difference {check.max_logit_difference:.2e}, loss padded "
        f"{check.loss_padded:.6f} vs packed {check.loss_packed:.6f}"
    )
    if not check.passed:
        raise UserError(
            f"packing self-test failed: packed examples differ from padded ones by more than "
            f"{TOLERANCE} (see the numbers above); train without --pack"
        )
    print("  passed: packing changes nothing the model computes")


def _show_labels(dataset, tokenizer, limit: int, count: int) -> None:
    """Each position's input token, its target, and whether the loss sees it."""
    from instructkit.data import InstructionCollator

    collator = InstructionCollator(tokenizer.eos_id, allowed_max_length=limit, mask_prompt=True)
    for index, example in enumerate(dataset.examples[:count]):
        batch = collator([example])
        full = InstructionCollator(tokenizer.eos_id, allowed_max_length=limit)([example])
        print(
            f"\nexample {index}: {len(example)} tokens, prompt {example.prompt_length}; "
            f"'train' = always trained, 'prompt' = trained unless mask_prompt"
        )
        print(
            f"  {'pos':>5}  {'input':{SHOWN_TOKEN_CHARS + 2}}  {'target':{SHOWN_TOKEN_CHARS + 2}}  loss"
        )
        for position, (token, target) in enumerate(
            zip(full.input_ids[0].tolist(), full.targets[0].tolist())
        ):
            masked = batch.targets[0, position].item() == collator.ignore_index
            label = (
                "ignored" if target == collator.ignore_index else ("prompt" if masked else "train")
            )
            shown = _token_text(tokenizer, target) if target != collator.ignore_index else "-"
            print(
                f"  {position:>5}  {_token_text(tokenizer, token):{SHOWN_TOKEN_CHARS + 2}}  "
                f"{shown:{SHOWN_TOKEN_CHARS + 2}}  {label}"
            )


def _token_text(tokenizer, token: int) -> str:
    text = repr(tokenizer.decode([token]))
    return text if len(text) <= SHOWN_TOKEN_CHARS + 2 else text[: SHOWN_TOKEN_CHARS + 1] + "…"


def _stats(values: list[int]) -> str:
    """min/mean/p95/max of a list of lengths (p95 by nearest rank)."""
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    mean = sum(ordered) / len(ordered)
    return f"min {ordered[0]}, mean {mean:.1f}, p95 {p95}, max {ordered[-1]}"
