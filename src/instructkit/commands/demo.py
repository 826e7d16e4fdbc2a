"""`instructkit demo`: the whole pipeline offline, on the built-in data and a small model.

A thin wrapper over `instructkit.demo.run_demo`: it parses the flags, runs the demo and
prints the summary the library returns.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from instructkit.commands import HelpFormatter
from instructkit.demo import DEMO_PRECISIONS, FULL
from instructkit.host import wait_passively_if_busy

# The plan's numbers come from the plan itself, so the help cannot fall behind it.
DESCRIPTION = f"""\
Run the whole instruction fine-tuning pipeline offline, with nothing to download.

Writes the built-in instruction dataset, trains a small byte-level BPE tokenizer on
its training split, fine-tunes a small Llama-style model from scratch (the
`{FULL.model.removeprefix("random:")}` preset, {FULL.max_steps:,} steps in fp32 on every CPU: the plan whose scores
BENCHMARKS.md measured) with the real finetune code path, generates responses
for the held-out test split, and scores them (exact match, ROUGE-L, per task family)
against the untrained model and trivial baselines. Writes the run directory
(config.yaml, metrics.jsonl, loss.png, checkpoints/, model/, responses.json,
scores.json) and report.md into --out.

examples:
  instructkit demo
  instructkit demo --quick --out runs/demo-quick
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline offline on built-in data and a small model",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/demo"),
        metavar="DIR",
        help="run directory; if it exists, the next free DIR-2, DIR-3, ... is used",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny model, few steps and a small test subset (under a minute; for tests and CI)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="reuse --out even if it already holds a run"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data, weights and training")
    parser.add_argument(
        "--precision",
        choices=DEMO_PRECISIONS,
        default="fp32",
        help=f"training precision of the {FULL.max_steps:,} steps; bf16 autocast is faster where "
        "the CPU multiplies bf16 natively (AVX-512 BF16, AMX), its scores not measured",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Before torch loads: spinning OpenMP threads are fastest on idle cores and starve a
    # core that another process uses.
    wait_passively_if_busy()
    from instructkit.demo import run_demo
    from instructkit.files import check_writable

    check_writable(args.out, "--out", directory=True)

    result = run_demo(
        args.out,
        quick=args.quick,
        overwrite=args.overwrite,
        seed=args.seed,
        progress=not args.quiet,
        precision=args.precision,
    )
    print(result.summary)
    return 0
