"""`instructkit generate`: model responses for a split of a data file, or for one prompt."""

from __future__ import annotations

import argparse
from pathlib import Path

from instructkit.commands import HelpFormatter, add_model_arguments
from instructkit.commands.flags import SAMPLING_FLAGS, add_generation_flags, generation_config
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
    add_generation_flags(parser, (*SAMPLING_FLAGS, "batch_size"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def default_out(model: str) -> Path:
    """RUN/responses.json for a run directory, else ./responses.json."""
    from instructkit.model.checkpoints import model_directory

    run_dir = Path(model)
    is_run = model_directory(run_dir) != run_dir  # a run keeps its weights in RUN/model
    return run_dir / "responses.json" if is_run else Path("responses.json")


def training_split(model: str) -> tuple[str, int]:
    """The split method and seed a run dir was trained with, so its test split is answered."""
    from instructkit.config import FinetuneConfig, load_config

    config_path = Path(model) / "config.yaml"
    if not config_path.is_file():
        return "auto", FinetuneConfig.seed
    values = load_config(config_path)
    return values.get("split", "book"), values.get("seed", FinetuneConfig.seed)


def run(args: argparse.Namespace) -> int:
    from instructkit.console import plural
    from instructkit.data import load_instructions, split_records
    from instructkit.files import check_writable
    from instructkit.loading import load_for_generation
    from instructkit.responses import generate_responses, respond

    config = generation_config(args)  # bad values fail before the model loads
    out = Path(args.out) if args.out else default_out(args.model)
    if args.prompt is None:  # checked before hours of generating, not at the rename
        check_writable(out, "--out")
    model, tokenizer, style = load_for_generation(
        args.model, args.style, args.tokenizer, args.device
    )
    if args.prompt is not None:
        print(respond(model, tokenizer, style, args.prompt, args.input, config=config))
        return 0

    records = load_instructions(args.data)
    if args.split != "all":
        method, seed = training_split(args.model)
        train, test, val = split_records(records, args.split_by or method, seed, source=args.data)
        records = {"train": train, "test": test, "val": val}[args.split]
    generate_responses(
        model,
        tokenizer,
        style,
        records,
        config=config,
        out_path=out,
        model_spec=args.model,
        progress=not args.quiet,
    )
    print(
        f"wrote {plural(len(records), 'response')} ({args.split} split of {args.data}, style {style.name}) to {out}"
    )
    return 0
