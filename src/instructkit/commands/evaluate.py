"""`instructkit evaluate`: offline metrics and an optional LLM judge over a responses file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from instructkit.commands import HelpFormatter


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a responses file: exact match, ROUGE-L, optional LLM judge",
        description=(
            "Score model responses against the reference outputs (exact match after\n"
            "normalisation, ROUGE-L F1, per `family` when records have one) and, with --judge,\n"
            "ask an LLM for a 0-100 score per record with the book's prompt. Scores go to\n"
            "--out, rewritten as they arrive; running again resumes where a run stopped.\n\n"
            "  instructkit evaluate --responses runs/x/responses.json --judge ollama:llama3\n"
            "  instructkit evaluate --responses r.json --judge openai:gpt-4o-mini --url https://api.openai.com"
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--responses", required=True, help="records with model_response (the book's format)"
    )
    parser.add_argument(
        "--against",
        metavar="B.json",
        help="judge pairwise: --responses against these responses to the same records "
        "(needs --judge; each pair asked in both orders; writes pairwise.json by default)",
    )
    parser.add_argument("--out", help="scores file; when not given, scores.json beside --responses")
    parser.add_argument(
        "--judge", help="BACKEND:MODEL, BACKEND one of ollama, openai (e.g. ollama:llama3)"
    )
    parser.add_argument(
        "--url",
        help="judge server; when not given, http://localhost:11434 for ollama, https://api.openai.com for openai",
    )
    parser.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the judge's API key (sent when set)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="judge requests in flight at once"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per judge request")
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="extra attempts after a connection error, timeout or 5xx",
    )
    parser.add_argument(
        "--response-key", default="model_response", help="field holding the response"
    )
    parser.add_argument(
        "--group-key", default="family", help="field to break the metrics down by, when present"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from instructkit.errors import UserError
    from instructkit.evaluate import default_scores_path, evaluate_responses, format_report
    from instructkit.evaluate.judge import JudgeClient, RetryPolicy, parse_judge_spec
    from instructkit.files import check_writable

    if args.retries < 0:
        raise UserError(f"--retries must be 0 or more, got {args.retries}")
    default = (  # checked here, before any judge is asked
        Path(args.responses).with_name("pairwise.json")
        if args.against
        else default_scores_path(args.responses)
    )
    out = check_writable(args.out or default, "--out")
    judge = None
    if args.judge:
        backend, model = parse_judge_spec(args.judge)
        api_key = os.environ.get(args.api_key_env) or None
        judge = JudgeClient(
            backend,
            model,
            args.url,
            api_key=api_key,
            timeout=args.timeout,
            retry=RetryPolicy(retries=args.retries),
        )
    elif args.url:
        raise UserError("--url needs --judge BACKEND:MODEL")
    if args.against:
        return run_pairwise(args, judge)
    try:
        doc = evaluate_responses(
            args.responses,
            out,
            judge,
            concurrency=args.concurrency,
            response_key=args.response_key,
            group_key=args.group_key or None,
            progress=not args.quiet,
        )
    finally:
        if judge is not None:
            judge.close()
    print(format_report(doc))
    print(f"wrote {out}")
    return 0


def run_pairwise(args: argparse.Namespace, judge) -> int:
    from instructkit.errors import UserError
    from instructkit.evaluate.pairwise import compare_responses, format_pairwise

    if judge is None:
        raise UserError("--against needs --judge BACKEND:MODEL to compare the responses")
    try:
        doc = compare_responses(
            args.responses,
            args.against,
            judge,
            args.out,
            concurrency=args.concurrency,
            response_key=args.response_key,
            progress=not args.quiet,
        )
    finally:
        judge.close()
    print(format_pairwise(doc))
    print(f"wrote {args.out or Path(args.responses).with_name('pairwise.json')}")
    return 0
