"""Real tokens/s and peak memory of `instructkit.train.finetune`: padded vs packed batches.

Fine-tunes gpt2-small (random weights, GPT-2's 50,257-row embedding, fp32 on CPU or
bf16 autocast on CUDA) on the book's 1,100 records (book split, alpaca prompts) for
`--steps` optimizer steps, once with padded batches of 8 records (the book's setup) and
once with packed rows of `--pack-length` tokens, each in a fresh process so its peak
memory is its own. Tokens/s counts real target tokens (not padding, not ignored) over
the timed steps; the first step is a warm-up and not timed.

    python bench/finetune_memory.py [--steps 20] [--pack-rows 1] [--pack-length 1024] [--threads N]

The GPT-2 vocabulary cannot be downloaded offline; a byte-level BPE (8,000 tokens)
trained on the records stands in, so sequences are shorter than with GPT-2's own.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import BOOK_DATA, build_tokenizer


def prepare(workdir: Path) -> Path:
    """A gpt2-small directory with random weights and the real GPT-2 tokenizer."""
    import torch

    from instructkit.model import GPTConfig, GPTModel, save_pretrained

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("gpt2-small"))
    return save_pretrained(model, tokenizer, workdir / "gpt2-small-random")


def run_variant(model_dir: str, out: str, steps: int, pack: bool, rows: int, length: int) -> dict:
    """In this (fresh) process: fine-tune, then report throughput and peak memory."""
    import torch

    from instructkit.config import FinetuneConfig
    from instructkit.train import finetune
    from instructkit.train.metrics import read_metrics

    config = FinetuneConfig(
        data=str(BOOK_DATA), out=out, model=model_dir, max_steps=steps, eval_every=0,
        eval_batches=1, save_every=0, log_every=1, pack=pack,
        batch_size=rows if pack else 8, allowed_max_length=length,
    )  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = finetune(config, progress=False)
    metrics = read_metrics(Path(out) / "metrics.jsonl")  # one row per step, step 0 first
    timed = list(itertools.pairwise(metrics[1:]))  # steps 2..N: step 1 is the warm-up
    tokens = sum(row["tokens_seen"] - prev["tokens_seen"] for prev, row in timed)
    seconds = sum(
        (row["tokens_seen"] - prev["tokens_seen"]) / row["tokens_per_s"] for prev, row in timed
    )
    return {
        "variant": f"packed ({rows} x {length})" if pack else "padded (batch 8)",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "steps_timed": len(timed),
        "target_tokens_per_step": tokens / len(timed),
        "target_tokens_per_s": tokens / seconds,
        "seconds_per_step": seconds / len(timed),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else None,
        "final_train_loss": result.train_loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pack-rows", type=int, default=1, help="packed rows per step")
    parser.add_argument("--pack-length", type=int, default=1024, help="tokens per packed row")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one in this process
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not BOOK_DATA.exists():
        sys.exit(f"{BOOK_DATA} not found: this benchmark needs the book's data")

    if args.variant:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as out:
            result = run_variant(
                args.model_dir, str(Path(out) / "run"), args.steps, args.variant == "packed",
                args.pack_rows, args.pack_length,
            )  # fmt: skip
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as workdir:
        model_dir = prepare(Path(workdir))
        results = []
        for variant in ("padded", "packed"):
            command = [
                sys.executable, __file__, "--variant", variant, "--model-dir", str(model_dir),
                "--steps", str(args.steps), "--pack-rows", str(args.pack_rows),
                "--pack-length", str(args.pack_length),
            ] + (["--threads", str(args.threads)] if args.threads else [])  # fmt: skip
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'variant':<22}{'tok/step':>10}{'s/step':>9}{'tok/s':>9}{'peak RSS GiB':>14}")
    for r in results:
        print(
            f"{r['variant']:<22}{r['target_tokens_per_step']:>10.0f}{r['seconds_per_step']:>9.2f}"
            f"{r['target_tokens_per_s']:>9.0f}{r['peak_rss_gib']:>14.2f}"
            + (f"  peak CUDA {r['peak_cuda_gib']:.2f} GiB" if r["peak_cuda_gib"] else "")
        )
    ratio = results[1]["target_tokens_per_s"] / results[0]["target_tokens_per_s"]
    threads = args.threads or "default"
    print(
        f"packed / padded tokens/s: {ratio:.2f}x "
        f"({results[0]['device']}, {args.steps} steps, threads {threads})"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
