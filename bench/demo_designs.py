"""Compare demo designs on the validation split, never the test split (issue 19).

Each run is the whole `instructkit demo` pipeline with `held_out="val"`: the model is scored
on the validation records beside the same trivial baselines, and one JSON line per run is
appended to the log (design name, plan, per-family exact match, best baseline, wall time,
load average), so the designs compared can be counted afterwards.

    python bench/demo_designs.py NAME [--steps N] [--lr LR] [--seed S] [--log FILE]
        [--layers L --mlp-width W] [--train-records FAMILY=N ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from instructkit import demo
from instructkit.data import builtin
from instructkit.model.decoder_config import DECODER_PRESETS


def train_records(spec: str) -> tuple[str, int]:
    """FAMILY=N, e.g. compare=4800."""
    name, _, count = spec.partition("=")
    if name not in builtin.FAMILY_NAMES or not count.isdigit():
        raise argparse.ArgumentTypeError(
            f"{spec!r}: expected FAMILY=N, FAMILY one of {builtin.FAMILY_NAMES}"
        )
    return name, int(count)


def reshaped_model(model: str, layers: int | None, mlp_width: int | None) -> str:
    """A random:PRESET spec, registered as "design" when its depth or MLP width is changed."""
    if layers is None and mlp_width is None:
        return model
    base = DECODER_PRESETS[model.removeprefix("random:")]
    DECODER_PRESETS["design"] = dataclasses.replace(
        base, n_layers=layers or base.n_layers, hidden_dim=mlp_width or base.hidden_dim
    )
    return "random:design"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--steps", type=int, default=demo.FULL.max_steps)
    parser.add_argument("--lr", type=float, default=demo.FULL.lr)
    parser.add_argument("--model", default=demo.FULL.model)
    parser.add_argument("--batch-size", type=int, default=demo.FULL.batch_size)
    parser.add_argument("--vocab-size", type=int, default=demo.FULL.vocab_size)
    parser.add_argument(
        "--word-pieces", action=argparse.BooleanOptionalAction, default=demo.FULL.word_pieces
    )
    parser.add_argument("--row-length", type=int, default=demo.FULL.row_length)
    parser.add_argument("--warmup-steps", type=int, default=demo.FULL.warmup_steps)
    parser.add_argument("--layers", type=int, help="the preset's depth, changed")
    parser.add_argument("--mlp-width", type=int, help="the preset's MLP width, changed")
    parser.add_argument(
        "--train-records",
        type=train_records,
        action="append",
        default=[],
        metavar="FAMILY=N",
        help="training records of one family (default: Family.train_records)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", type=Path, default=Path("runs/demo_designs.jsonl"))
    args = parser.parse_args()
    counts = dict(args.train_records)
    builtin.FAMILIES = tuple(
        dataclasses.replace(f, train_records=counts.get(f.name, f.train_records))
        for f in builtin.FAMILIES
    )
    plan = dataclasses.replace(
        demo.FULL,
        max_steps=args.steps,
        lr=args.lr,
        model=reshaped_model(args.model, args.layers, args.mlp_width),
        batch_size=args.batch_size,
        vocab_size=args.vocab_size,
        word_pieces=args.word_pieces,
        row_length=args.row_length,
        warmup_steps=args.warmup_steps,
    )
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = demo.run_demo(
        f"runs/design-{args.name}",
        overwrite=True,
        seed=args.seed,
        progress=False,
        plan=plan,
        held_out="val",
    )
    scores = json.loads((result.out_dir / "scores.json").read_text())
    row = {
        "design": args.name,
        "plan": dataclasses.asdict(plan),
        "train_records": {f.name: f.train_records for f in builtin.FAMILIES},
        "seed": args.seed,
        "split": "val",
        "exact_match": result.trained["exact_match"],
        "families": {f: g["exact_match"] for f, g in result.trained["groups"].items()},
        "baselines": {f: b["best"] for f, b in scores["baselines"].items()},
        "wall_s": round(time.perf_counter() - started, 1),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a", encoding="utf-8") as log:
        log.write(json.dumps(row) + "\n")
    print(result.summary)
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
