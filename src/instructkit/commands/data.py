"""`instructkit data`: look at an instruction file before training on it, or write the built-in one.

`inspect` validates every record (instruction records and conversations), then reports
what training will see: split sizes, duplicate records and test/validation records that
copy a training record, token lengths of prompts and responses, records that truncation
would cut (and whose end-of-text target the book's collate would lose), records that would
train on nothing (prompt masking, or a conversation cut before its first assistant token),
and the padding efficiency of random, length-grouped and packed batches. With --model, the
model's tokenizer, chat template and context length are used. `builtin` writes the
built-in demo dataset to a file. `dedup`, `generate` and `prefs` (commands.data_tools)
remove duplicates and have an LLM write records or DPO pairs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from instructkit.commands import HelpFormatter
from instructkit.commands.data_tools import register_actions
from instructkit.commands.finetune import add_finetune_flags

SHOWN_TOKEN_CHARS = 18
DEFAULT_CONTEXT = 1024
DEFAULT_TOKENIZER = "gpt2"
PACKING_MODEL = "random:tiny"
INSPECT_FINETUNE_FLAGS = ("tokenizer", "style", "allowed_max_length", "batch_size", "seed")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect, deduplicate or extend an instruction file; write the built-in dataset",
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
        "--fields",
        default=None,
        help="column mapping, e.g. instruction=prompt,output=completion",
    )
    inspect.add_argument(
        "--context-length",
        type=int,
        default=None,
        help=f"model context length (default: --model's, else {DEFAULT_CONTEXT})",
    )
    # finetune's own flags and defaults, so the report describes what finetune will do;
    # only the tokenizer differs: without --model there is none to take, so GPT-2's.
    add_finetune_flags(inspect, INSPECT_FINETUNE_FLAGS, defaults={"tokenizer": None})
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
        default=None,
        help="the model to train (any spec finetune accepts): its tokenizer, chat template and "
        "context length are used, and --check-packing runs it (default: none; then the "
        f"tokenizer is --tokenizer, else gpt2, and --check-packing runs {PACKING_MODEL})",
    )
    inspect.add_argument(
        "--check-examples", type=int, default=16, help="examples the packing self-test uses"
    )
    inspect.add_argument(
        "--quiet", action="store_true", help="no progress bars (shown when a file takes a while)"
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
    register_actions(actions)


def run_builtin(args: argparse.Namespace) -> int:
    from instructkit.data.builtin import write_builtin

    count = write_builtin(args.out, args.seed)
    print(f"wrote {count} records to {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from instructkit.data import (
        STYLE_NAMES,
        InstructionDataset,
        get_style,
        load_instructions,
        parse_fields,
    )
    from instructkit.data.leakage import check_splits, format_split_check
    from instructkit.data.stats import record_stats, token_stats, truncation_limit
    from instructkit.errors import DataError, UserError
    from instructkit.files import check_writable

    problems = [
        f"--{name.replace('_', '-')} must be at least {low}, got {value}"
        for name, value, low in (
            ("context_length", args.context_length, 1),
            ("allowed_max_length", args.allowed_max_length, 1),
            ("batch_size", args.batch_size, 1),
            ("check_examples", args.check_examples, 1),
            ("show_labels", args.show_labels, 0),
        )
        if value is not None and value < low
    ]
    if problems:
        raise UserError(problems)
    if args.style is not None and args.style not in STYLE_NAMES:
        get_style(args.style)  # the unknown-style error, before the file is read
    if args.plot:
        check_writable(args.plot, "--plot")
    records = load_instructions(args.file, parse_fields(args.fields))
    _print_records(args.file, record_stats(records, source=str(args.file)))
    print(format_split_check(check_splits(records, source=str(args.file)), records))

    model = tokenizer = None
    if args.model is not None:
        random = args.model.startswith("random:")  # a preset has no tokenizer of its own
        given = args.tokenizer or (DEFAULT_TOKENIZER if random else None)
        model, tokenizer = _load_model(args.model, given, args.seed)
    else:
        tokenizer = _tokenizer_or_none(args.tokenizer or DEFAULT_TOKENIZER)
    if tokenizer is None:
        return 0
    context_length = args.context_length or (
        model.config.context_length if model is not None else DEFAULT_CONTEXT
    )
    dataset = InstructionDataset(  # style None: the model's template or alpaca
        records, tokenizer, args.style, progress=not args.quiet
    )
    limit = truncation_limit(args.allowed_max_length, context_length)
    stats = token_stats(
        dataset, context_length, limit, args.batch_size, args.seed, progress=not args.quiet
    )
    _print_tokens(stats, dataset, args.batch_size)

    if args.show_labels:
        _show_labels(dataset, limit, args.show_labels)
    if args.check_packing:
        if model is None:
            model, _ = _load_model(PACKING_MODEL, dataset.tokenizer, args.seed)
        _check_packing(args.model or PACKING_MODEL, model, dataset, limit, args.check_examples)
    if args.plot:
        from instructkit.plots import plot_length_histogram

        plot_length_histogram(
            stats.prompt_lengths, stats.response_lengths, args.plot, limit, title=args.file.name
        )
        print(f"wrote {args.plot}")

    too_long = [
        f"{args.file}: record index {index}: prompt alone is {stats.prompt_lengths[index]} "
        f"tokens, the context length is {context_length}: no room for the response"
        for index in stats.prompts_filling_context
    ]
    if too_long:
        raise DataError(too_long)
    return 0


def _load_model(spec: str, tokenizer, seed: int):
    """The model and its tokenizer (`tokenizer`, a spec or object, overrides the model's)."""
    from instructkit.errors import ModelError
    from instructkit.model import load_pretrained

    model, found = load_pretrained(spec, tokenizer=tokenizer, seed=seed)
    if found is None:
        raise ModelError(f"model {spec!r} comes without a tokenizer; pass one with --tokenizer")
    return model, found


def _print_records(path: Path, stats) -> None:
    from instructkit.console import plural
    from instructkit.data.stats import CONVERSATION_ROLES

    print(f"{path}: {plural(stats.records, 'record')}, all valid")
    if stats.conversations:
        print(f"  conversations: {stats.conversations} (messages each: {stats.turns})")
    if stats.records > stats.conversations:
        print(f"  with input: {stats.with_input}")
    if stats.extra_keys:
        print(f"  extra keys kept: {', '.join(stats.extra_keys)}")
    split_by = "each record's split field" if stats.split_method == "field" else "book split"
    print(f"  {split_by} (train/test/val): {'/'.join(map(str, stats.split_sizes))}")
    for field, summary in stats.characters.items():
        per = " (per message)" if field in CONVERSATION_ROLES else ""
        print(f"  {field} characters{per}: {summary}")


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


def _print_tokens(stats, dataset, batch_size: int) -> None:
    from instructkit.data.stats import summarize

    tokenizer = dataset.tokenizer
    print(
        f"tokens ({tokenizer.name}, style {dataset.style.name}, vocabulary {tokenizer.vocab_size}):"
    )
    print(f"  prompt:   {summarize(stats.prompt_lengths)}")
    print(f"  response: {summarize(stats.response_lengths)}")
    print(f"  total:    {summarize(stats.total_lengths)}  (with the end-of-text token)")
    print(f"  longer than the context length {stats.context_length}: {stats.over_context}")
    print(
        f"  truncated to {stats.limit} tokens: {stats.truncated} (the book's collate drops "
        "their end-of-text target; InstructionCollator keeps it)"
    )
    print(f"  training on zero tokens with mask_prompt: {stats.masked_empty}")
    if stats.trained_lengths is not None:
        print(f"  trained (assistant) tokens: {summarize(stats.trained_lengths)}")
        print(f"  left with no trained token by truncation: {stats.untrained}")
    print(f"padding efficiency, real tokens / all tokens (batch size {batch_size}):")
    for mode in stats.batching:
        shape = f"{mode.batches} batch" + ("" if mode.batches == 1 else "es")
        if mode.packed:
            shape += f" of up to {batch_size} rows x {stats.limit} tokens"
        print(f"  {mode.name + ':':16}{mode.padding_efficiency:.3f}  ({shape})")


def _check_packing(spec: str, model, dataset, limit: int, count: int) -> None:
    """Run the packed-vs-padded self-test on the first examples of the user's data."""
    from instructkit.console import plural
    from instructkit.data.packing_check import TOLERANCE, check_packing
    from instructkit.errors import UserError

    max_length = min(limit, model.config.context_length)
    examples = dataset.examples[:count]
    check = check_packing(model, examples, dataset.tokenizer.eos_id, max_length)
    print(
        f"packing self-test ({spec}, {plural(check.examples, 'example')} in "
        f"{plural(check.packed_rows, 'packed row')}): max logit difference "
        f"{check.max_logit_difference:.2e}, loss padded {check.loss_padded:.6f} "
        f"vs packed {check.loss_packed:.6f}"
    )
    if not check.positions_restart:
        raise UserError(
            "packing self-test failed: position ids do not restart at 0 in every packed "
            "example; train without --pack"
        )
    if not check.passed:
        raise UserError(
            f"packing self-test failed: packed examples differ from padded ones by more than "
            f"{TOLERANCE} (see the numbers above); train without --pack"
        )
    print("  position ids restart at 0 in every packed example")
    print("  passed: packing changes nothing the model computes")


def _show_labels(dataset, limit: int, count: int) -> None:
    from instructkit.data.stats import label_targets

    tokenizer = dataset.tokenizer
    width = SHOWN_TOKEN_CHARS + 2
    for index, example in enumerate(dataset.examples[:count]):
        if example.loss_mask is None:
            legend = "'train' = always trained, 'prompt' = trained unless mask_prompt"
        else:
            legend = "'train' = trained (assistant turns), 'ignored' = no loss"
        print(f"\nexample {index}: {len(example)} tokens, prompt {example.prompt_length}; {legend}")
        print(f"  {'pos':>5}  {'input':{width}}  {'target':{width}}  loss")
        for row in label_targets(example, tokenizer.eos_id, limit):
            shown = "-" if row.target_id is None else _token_text(tokenizer, row.target_id)
            print(
                f"  {row.position:>5}  {_token_text(tokenizer, row.input_id):{width}}  "
                f"{shown:{width}}  {row.label}"
            )


def _token_text(tokenizer, token: int) -> str:
    text = repr(tokenizer.decode([token]))
    return text if len(text) <= SHOWN_TOKEN_CHARS + 2 else text[: SHOWN_TOKEN_CHARS + 1] + "…"
