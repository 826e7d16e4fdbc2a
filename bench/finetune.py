"""Fine-tuning throughput: the book's loop, instructkit, and TRL on the same work.

Each contender runs in its own process (so peak RSS is its own) on the same data (the
book's 1,100 records, book split, the real GPT-2 BPE), the same model shape (gpt2-small,
random weights), batch 8, dropout 0, no gradient clipping, AdamW at the same settings,
the same precision, and the same number of optimizer steps; each loop both with random
batches and with length grouping (the book's loop through instructkit's sampler, TRL with
its own `group_by_length`). Every contender runs `--repeats` times, interleaved (all
contenders once, then again), and the table gives the median with the min-max spread.

Reported: real target tokens/s (targets that are not ignored), records/s, peak RSS,
model FLOP utilisation (6 * parameters * real tokens/s over the matmul rate this script
measures in the same run through torch: MKL's fp32 rate, or oneDNN's bf16 one), and each
contender's ratio to the book loop and to TRL with the same batching.

    python bench/finetune.py                       # the like-for-like table, fp32, 3 repeats
    python bench/finetune.py --only ours,trl --steps 4 --repeats 1
    python bench/finetune.py --device cuda --preset gpt2-medium --precision bf16 --only ours,ours-packed,trl

The first optimizer step of every contender is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_common import (
    BOOK_DATA,
    CONTENDERS,
    LIKE_FOR_LIKE,
    REFERENCES,
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=8, help="timed optimizer steps per contender run"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each contender, interleaved"
    )
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument(
        "--only",
        default=",".join(LIKE_FOR_LIKE),
        help=f"comma-separated contenders, of: {', '.join(CONTENDERS)}",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU comparison")
    parser.add_argument("--preset", default="gpt2-small", help="model shape (instructkit preset)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="every contender's precision (bf16: autocast)",
    )
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

    names = args.only.split(",")
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    peaks = matmul_peaks(args.device)
    for dtype, peak in peaks.items():
        shown = f"{peak / 1e9:.1f} GFLOP/s" if peak else "not measured (emulated bf16: hours)"
        print(
            f"{dtype} matmul peak on {args.device}: {shown} ({torch.get_num_threads()} CPU threads)",
            flush=True,
        )
    print(
        f"model {args.preset} ({model_params(TARGET.shape) / 1e6:.1f}M parameters), {args.precision}, "
        f"{args.steps} timed steps x {args.repeats} repeats; load average {os.getloadavg()[0]:.2f}"
    )
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            result = run_in_process(name, args, seed=args.seed + repeat)
            if result is None:
                continue
            peak = peaks["bf16" if args.precision == "bf16" or "bf16" in name else "fp32"]
            result["mfu"] = (
                result["target_tokens_per_s"] * 6 * model_params(TARGET.shape) / peak
                if peak
                else 0.0
            )
            runs[name].append(result)
            print(
                f"[{repeat + 1}/{args.repeats}] {name:>16}: {result['target_tokens_per_s']:.1f} tok/s  "
                f"{result['records_per_s']:.2f} rec/s  MFU {result['mfu']:.2f}  "
                f"RSS {result['peak_rss_mb']:.0f} MB  ({result['target_tokens']} targets)",
                flush=True,
            )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print_table(runs)
    if args.json:
        setup = {
            "device": args.device,
            "preset": args.preset,
            "precision": args.precision,
            "steps": args.steps,
            "repeats": args.repeats,
        }
        args.json.write_text(
            json.dumps({"peak_flops": peaks, "setup": setup, "runs": runs}, indent=2)
        )
    return 0


def matmul_peaks(device: str) -> dict[str, float | None]:
    """fp32 and bf16 matmul rates; bf16 only where it is native (CUDA, AVX-512 BF16, AMX)."""
    from instructkit.loading import cpu_has_native_bf16

    native_bf16 = torch.device(device).type == "cuda" or cpu_has_native_bf16()
    return {
        "fp32": measure_matmul_peak(dtype=torch.float32, device=device),
        "bf16": measure_matmul_peak(dtype=torch.bfloat16, device=device) if native_bf16 else None,
    }


def run_in_process(name: str, args: argparse.Namespace, seed: int) -> dict | None:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--contender",
            name,
            "--steps",
            str(args.steps),
            "--seed",
            str(seed),
            "--device",
            args.device,
            "--preset",
            args.preset,
            "--precision",
            args.precision,
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    if proc.returncode != 0:
        print(f"{name}: failed\n{proc.stderr[-3000:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values: list[float], digits: int = 1) -> str:
    """Median (min-max) of the repeats."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def print_table(runs: dict[str, list[dict]]) -> None:
    """Medians over the repeats; a ratio is of medians, with the spread of the per-repeat
    ratios (repeat k of one contender against repeat k of the other) beside it."""
    print(
        "\n| contender | real target tokens/s | records/s | peak RSS MB | MFU | vs book | vs TRL |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, results in runs.items():
        if not results:
            continue
        tokens = [r["target_tokens_per_s"] for r in results]
        ratios = []
        for reference in REFERENCES.get(name, ()):
            others = runs.get(reference) or []
            if not others:
                ratios.append("-")
                continue
            paired = [
                a["target_tokens_per_s"] / b["target_tokens_per_s"] for a, b in zip(results, others)
            ]
            median = statistics.median(tokens) / statistics.median(
                r["target_tokens_per_s"] for r in others
            )
            ratios.append(
                f"{median:.2f}x"
                + (f" ({min(paired):.2f}-{max(paired):.2f})" if len(paired) > 1 else "")
            )
        ratios += ["-"] * (2 - len(ratios))
        print(
            f"| {name} | {spread(tokens)} | {spread([r['records_per_s'] for r in results], 2)} | "
            f"{max(r['peak_rss_mb'] for r in results):.0f} | {spread([r['mfu'] for r in results], 2)} | "
            f"{ratios[0]} | {ratios[1]} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
