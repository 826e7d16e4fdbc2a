"""`instructkit data dedup|generate|prefs`: clean a records file, or have an LLM extend it.

`dedup` removes exact and near-duplicate records (`instructkit.data.dedup`); `generate`
and `prefs` ask an LLM through the judge's client for new instruction records and for
DPO preference pairs (`instructkit.data.synth`). `commands.data` registers them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from instructkit.commands import HelpFormatter

DEDUP_DESCRIPTION = """\
Remove exact and near-duplicate records from FILE and write the rest to --out, in
FILE's format (JSON list, JSONL or CSV; or the format --out's suffix names).

Fields are compared one by one after normalising case, spacing and punctuation: a
record is a duplicate when every compared field equals, or is within a small edit of,
the same field of an earlier record that is kept (Levenshtein similarity >= --threshold,
and the same numbers). The first record of each group stays. Records that share an
instruction but differ in input or output are different records. Keys other than
--fields are not compared and are kept in the output.

examples:
  instructkit data dedup instruction-data.json --out clean.json
  instructkit data dedup data.jsonl --out clean.jsonl --threshold 1 --fields instruction,output
"""

GENERATE_DESCRIPTION = """\
Have an LLM write N new instruction records (the book's Llama 3 + Ollama recipe): it
gets only the start of a user turn of its chat template (--template) and writes a
request, whose first line becomes the instruction; then it answers that instruction.
Instructions that duplicate --seed-data or an earlier new record are dropped before
the answer is asked for. Progress is saved to OUT.partial: after a kill or Ctrl-C, the
same command resumes.

examples:
  instructkit data generate --with ollama:llama3 --n 100 --out generated.json
  instructkit data generate --with openai:gpt-4o-mini --url https://api.openai.com \\
      --n 500 --seed-data instruction-data.json --out more.json --concurrency 8
"""

PREFS_DESCRIPTION = """\
Make preference pairs for DPO from --data (the book's recipe): the LLM rewrites each
record's output to be more polite (stored as `chosen`) and less polite (`rejected`);
instruction, input, output and other keys are kept. --recipe book does as the book's
notebook: one rewrite per record, polite or impolite by a seeded coin, paired with the
original output. Progress is saved to OUT.partial: after a kill the same command resumes.

example:
  instructkit data prefs --with ollama:llama3 --data instruction-data.json --out prefs.json
"""


def register_actions(actions) -> None:
    """Add dedup, generate and prefs to `instructkit data`'s actions."""
    dedup = actions.add_parser(
        "dedup",
        help="remove exact and near-duplicate records",
        description=DEDUP_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    dedup.add_argument("file", type=Path, metavar="FILE", help="records file")
    dedup.add_argument("--out", type=Path, required=True, metavar="CLEAN", help="output file")
    dedup.add_argument(
        "--threshold",
        type=float,
        default=0.9,
        help="lowest per-field similarity of near duplicates; 1 removes exact duplicates only",
    )
    dedup.add_argument(
        "--fields", default="instruction,input,output", help="comma-separated fields to compare"
    )
    dedup.add_argument("--examples", type=int, default=3, help="duplicate groups to print")
    dedup.set_defaults(run=run_dedup)

    generate = actions.add_parser(
        "generate",
        help="have an LLM write new instruction records",
        description=GENERATE_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    generate.add_argument("--n", type=int, required=True, help="new records to make")
    generate.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file")
    generate.add_argument(
        "--seed-data", type=Path, metavar="FILE", help="existing records not to duplicate"
    )
    generate.add_argument(
        "--template",
        default="auto",
        help="chat template whose user-turn start prompts the model: auto (from the model "
        "name), llama3, chatml, phi3, gemma",
    )
    generate.add_argument("--seed", type=int, default=0, help="attempt k samples with seed+k")
    generate.add_argument(
        "--threshold", type=float, default=0.9, help="similarity that makes an instruction a copy"
    )
    generate.add_argument(
        "--max-attempts", type=int, help="instruction requests this run may make (default 4N+20)"
    )
    _add_llm_flags(generate)
    generate.set_defaults(run=run_generate)

    prefs = actions.add_parser(
        "prefs",
        help="have an LLM write chosen/rejected answers for DPO",
        description=PREFS_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    prefs.add_argument("--data", type=Path, required=True, metavar="FILE", help="records file")
    prefs.add_argument("--out", type=Path, required=True, metavar="PREF", help="output file")
    prefs.add_argument("--recipe", choices=("both", "book"), default="both", help="see above")
    prefs.add_argument("--seed", type=int, default=0, help="seed of --recipe book's coin")
    _add_llm_flags(prefs)
    prefs.set_defaults(run=run_prefs)


def _add_llm_flags(parser: argparse.ArgumentParser) -> None:
    """The LLM server flags, as `instructkit evaluate` takes them for its judge."""
    parser.add_argument(
        "--with",
        dest="llm",
        required=True,
        metavar="BACKEND:MODEL",
        help="the LLM, BACKEND one of ollama, openai (e.g. ollama:llama3)",
    )
    parser.add_argument(
        "--url",
        help="LLM server; when not given, http://localhost:11434 for ollama, "
        "https://api.openai.com for openai",
    )
    parser.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key (sent when set)",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="extra attempts after a connection error, timeout or 5xx",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _client(args: argparse.Namespace):
    from instructkit.errors import UserError
    from instructkit.evaluate.judge import JudgeClient, RetryPolicy, parse_judge_spec

    if args.retries < 0:
        raise UserError(f"--retries must be 0 or more, got {args.retries}")
    backend, model = parse_judge_spec(args.llm, flag="--with")
    return JudgeClient(
        backend,
        model,
        args.url,
        api_key=os.environ.get(args.api_key_env) or None,
        timeout=args.timeout,
        retry=RetryPolicy(retries=args.retries),
    )


def _parse_compare_fields(spec: str) -> list[str]:
    from instructkit.errors import UserError

    fields = [name.strip() for name in spec.split(",") if name.strip()]
    if not fields:
        raise UserError(f"--fields {spec!r} names no field; e.g. instruction,input,output")
    return list(dict.fromkeys(fields))


def run_dedup(args: argparse.Namespace) -> int:
    from instructkit.data import load_instructions
    from instructkit.data.dedup import check_threshold, find_duplicates, format_duplicates
    from instructkit.data.writing import save_records
    from instructkit.errors import UserError

    check_threshold(args.threshold)
    fields = _parse_compare_fields(args.fields)
    if args.out.resolve() == args.file.resolve():
        raise UserError(f"--out {args.out} is the input file; choose another --out")
    records = load_instructions(args.file)
    report = find_duplicates(records, fields, args.threshold)
    print(format_duplicates(report, records, max(0, args.examples)))
    kept = [records[index] for index in report.kept]
    fmt = save_records(args.out, kept, source=args.file)
    print(f"wrote {len(kept)} of {len(records)} records to {args.out} ({fmt})")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from instructkit.data import load_instructions
    from instructkit.data.synth import generate_records

    existing = load_instructions(args.seed_data) if args.seed_data else []
    with _client(args) as client:
        result = generate_records(
            client,
            args.n,
            args.out,
            existing=existing,
            seed_data=args.seed_data,
            template=args.template,
            seed=args.seed,
            threshold=args.threshold,
            concurrency=args.concurrency,
            max_attempts=args.max_attempts,
            progress=not args.quiet,
        )
    rejected = result.rejected
    print(
        f"{len(result.records) - result.resumed} new records in {result.attempts} attempts "
        f"this run ({len(result.records)} of {args.n} in all); dropped "
        f"{rejected['duplicate']} duplicates, {rejected['empty']} empty replies, "
        f"{rejected['failed']} failed requests"
        + (f" (first: {result.errors[0]})" if result.errors else "")
    )
    if len(result.records) < args.n:
        print(
            f"only {len(result.records)} of {args.n} made within --max-attempts; progress is in "
            f"{args.out}.partial: run again (perhaps with more --max-attempts) to continue"
        )
        return 1
    print(f"wrote {len(result.records)} records to {args.out}")
    return 0


def run_prefs(args: argparse.Namespace) -> int:
    from instructkit.data import load_instructions
    from instructkit.data.synth import make_preferences

    records = load_instructions(args.data)
    with _client(args) as client:
        result = make_preferences(
            client,
            records,
            args.out,
            data=args.data,
            recipe=args.recipe,
            seed=args.seed,
            concurrency=args.concurrency,
            progress=not args.quiet,
        )
    if result.failed:
        first = next(iter(result.failed.values()))
        print(
            f"{len(result.failed)} records failed (first: {first}); {result.done} done are in "
            f"{args.out}.partial: run the same command again to retry the rest"
        )
        return 1
    print(f"wrote {len(result.records)} records with chosen/rejected to {args.out}")
    return 0
