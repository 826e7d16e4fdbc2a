"""Fine-tuning throughput: the book's loop, instructkit, and TRL on the same work.

Each contender runs in its own process (so peak RSS is its own) on the same data
(the book's 1,100 records, book split), the same model shape (gpt2-small, random
weights, fp32), batch 8 and the same number of optimizer steps. Reported: records/s,
real target tokens/s (targets that are not ignored), wall time of the timed steps,
peak RSS, and model FLOP utilisation: 6 * parameters * real tokens/s divided by the
fp32 matmul peak that this script measures in the same run (the bf16 peak for the one
bf16-autocast contender).

    python bench/finetune.py --steps 20 [--only book,ours-packed] [--json out.json]
    python bench/finetune.py --device cuda --preset gpt2-medium --precision bf16 --only ours,ours-packed,trl

The first optimizer step of every contender is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_common import (
    BOOK_DATA,
    CONTENDERS,
    TARGET,
    build_tokenizer,
    load_book_split,
    measure_matmul_peak,
    model_params,
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_contender(name: str, steps: int, seed: int) -> dict:
    """Runs one contender in this process and returns its measurements."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    train, _, _ = load_book_split()
    result = CONTENDERS[name](train, tokenizer, steps, seed)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per contender")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated contenders")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU comparison")
    parser.add_argument("--preset", default="gpt2-small", help="model shape (instructkit preset)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="every contender's precision (bf16: autocast)")
    parser.add_argument("--contender", help=argparse.SUPPRESS)  # internal: run one in-process
    args = parser.parse_args()
    if not BOOK_DATA.exists():
        print(f"skipped: {BOOK_DATA} not found")
        return 0
    # Contenders read TARGET; in their own processes too (the flags are passed on).
    TARGET.device, TARGET.preset, TARGET.precision = args.device, args.preset, args.precision
    if args.contender:
        print(json.dumps(run_contender(args.contender, args.steps, args.seed)))
        return 0

    peaks = {dtype: measure_matmul_peak(dtype=getattr(torch, name), device=args.device)
             for dtype, name in (("fp32", "float32"), ("bf16", "bfloat16"))}
    for dtype, peak in peaks.items():
        print(f"{dtype} matmul peak on {args.device}: {peak / 1e9:.1f} GFLOP/s "
              f"({torch.get_num_threads()} CPU threads)")
    print(f"model {args.preset} ({model_params(TARGET.shape) / 1e6:.1f}M parameters), {args.precision}")
    flop_per_token = 6 * model_params(TARGET.shape)
    rows = []
    for name in args.only.split(","):
        proc = subprocess.run(
            [sys.executable, __file__, "--contender", name, "--steps", str(args.steps),
             "--seed", str(args.seed), "--device", args.device, "--preset", args.preset,
             "--precision", args.precision],
            check=False, capture_output=True, text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-3000:]}")
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["name"] = name
        bf16 = args.precision == "bf16" or "bf16" in name
        result["mfu"] = result["target_tokens_per_s"] * flop_per_token / peaks["bf16" if bf16 else "fp32"]
        rows.append(result)
        print(f"{name:>16}: {result['records_per_s']:.2f} rec/s  {result['target_tokens_per_s']:.1f} tok/s  "
              f"MFU {result['mfu']:.2f}  wall {result['wall_s']:.1f}s  RSS {result['peak_rss_mb']:.0f} MB",
              flush=True)
    print_table(rows)
    if args.json:
        setup = {"device": args.device, "preset": args.preset, "precision": args.precision}
        args.json.write_text(json.dumps({"peak_flops": peaks, "setup": setup, "rows": rows}, indent=2))
    return 0


def print_table(rows: list[dict]) -> None:
    by_name = {row["name"]: row for row in rows}
    print("\n| contender | records/s | real target tokens/s | wall s | peak RSS MB | MFU | vs book | vs TRL |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        masked = "masked" in row["name"]
        book = by_name.get("book-masked" if masked else "book")
        trl = by_name.get("trl-masked" if masked else "trl")
        vs_book = f"{row['records_per_s'] / book['records_per_s']:.2f}x" if book else "-"
        vs_trl = f"{row['target_tokens_per_s'] / trl['target_tokens_per_s']:.2f}x" if trl else "-"
        print(f"| {row['name']} | {row['records_per_s']:.2f} | {row['target_tokens_per_s']:.1f} | "
              f"{row['wall_s']:.1f} | {row['peak_rss_mb']:.0f} | {row['mfu']:.2f} | {vs_book} | {vs_trl} |")


if __name__ == "__main__":
    raise SystemExit(main())
