"""`instructkit generate`: model responses for a split of a data file, or for one prompt."""

from __future__ import annotations

import argparse
from pathlib import Path

from instructkit.commands import HelpFormatter, add_model_arguments
from instructkit.config import SPLIT_METHODS, SPLIT_NAMES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate responses for a data split or one prompt",
        description=(
            "Generate the model's responses for the records of a split (the test split that\n"
            "the run in --model held out, by default) and save them beside the records as\n"
            "`model_response`; an\n"
            "interrupted run resumes from OUT.partial. With --prompt, print one response."
        ),
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="instruction file (JSON list, JSONL or CSV)")
    source.add_argument("--prompt", help="one instruction; its response is printed")
    parser.add_argument("--input", default="", help="the optional input for --prompt")
    parser.add_argument(
        "--split",
        choices=(*SPLIT_NAMES, "all"),
        default="test",
        help="which part of --data to answer",
    )
    parser.add_argument(
        "--split-by",
        choices=SPLIT_METHODS,
        help="how --data splits into train/test/val (as in finetune --split); default: as the "
        "run in --model was trained (its config.yaml), else auto",
    )
    parser.add_argument(
        "--out",
        help="responses file; when not given, RUN/responses.json for a run dir, else ./responses.json",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="records generated at once")
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="longest response in tokens"
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 is greedy decoding, as in the book"
    )
    parser.add_argument(
        "--top-k", type=int, default=None, help="sample from the k likeliest tokens"
    )
    parser.add_argument("--seed", type=int, default=123, help="makes sampled responses repeatable")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def default_out(model: str) -> Path:
    run_dir = Path(model)
    return run_dir / "responses.json" if (run_dir / "model").is_dir() else Path("responses.json")


def training_split(model: str) -> tuple[str, int]:
    """The split method and seed a run dir was trained with, so its test split is answered."""
    from instructkit.config import FinetuneConfig, load_config

    config_path = Path(model) / "config.yaml"
    if not config_path.is_file():
        return "auto", FinetuneConfig.seed
    values = load_config(config_path)
    return values.get("split", "book"), values.get("seed", FinetuneConfig.seed)


def run(args: argparse.Namespace) -> int:
    from instructkit.data import load_instructions, split_records
    from instructkit.responses import generate_responses, load_for_generation, respond

    model, tokenizer, style = load_for_generation(
        args.model, args.style, args.tokenizer, args.device
    )
    sampling = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "seed": args.seed,
    }
    if args.prompt is not None:
        print(respond(model, tokenizer, style, args.prompt, args.input, **sampling))
        return 0

    records = load_instructions(args.data)
    if args.split != "all":
        method, seed = training_split(args.model)
        train, test, val = split_records(records, args.split_by or method, seed, source=args.data)
        records = {"train": train, "test": test, "val": val}[args.split]
    out = Path(args.out) if args.out else default_out(args.model)
    generate_responses(
        model,
        tokenizer,
        style,
        records,
        out_path=out,
        batch_size=args.batch_size,
        model_spec=args.model,
        progress=not args.quiet,
        **sampling,
    )
    print(
        f"wrote {len(records)} responses ({args.split} split of {args.data}, style {style.name}) to {out}"
    )
    return 0
