"""DPO throughput and peak memory: `instructkit.train.dpo` vs TRL's DPOTrainer, same work.

Both train gpt2-small (random weights, fp32, GPT-2's vocabulary when tiktoken has it, else
a BPE trained on the data) on the book's preference pairs (alpaca prompts, the first 85%
as in the book's split), 8 pairs per step, AdamW lr 5e-6, sigmoid loss, beta 0.1, each in
a fresh process so its peak memory is its own. Pairs/s is over the timed steps (the first
is a warm-up). Ours computes the reference log-probabilities once before training (timed
apart, `reference_s`) and holds one model; TRL (default settings) holds a reference
copy and runs it every step. TRL's gradient checkpointing and bf16 are switched off so
both do the same fp32 work.

    python bench/dpo.py [--steps 10] [--pairs 935] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import book_format_input, build_tokenizer

PREF_DATA = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "instruction-data-with-preference.json"
)
BATCH, LR, BETA = 8, 5e-6, 0.1


def train_pairs(limit: int) -> list[dict]:
    data = json.loads(PREF_DATA.read_text(encoding="utf-8"))
    return data[: int(len(data) * 0.85)][:limit]


def peak_memory(device: str) -> dict:
    import torch

    cuda = device == "cuda" and torch.cuda.is_available()
    return {
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def run_ours(steps: int, limit: int, device: str) -> dict:
    import torch

    from instructkit.config import DPOConfig
    from instructkit.model import GPTConfig, GPTModel, save_pretrained
    from instructkit.train.dpo import dpo
    from instructkit.train.metrics import read_metrics

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model_dir = save_pretrained(
            GPTModel(GPTConfig.preset("gpt2-small")), build_tokenizer(), Path(tmp) / "m"
        )
        records = train_pairs(limit)  # the recipe's book split trains on 85% of them
        config = DPOConfig(
            data=str(PREF_DATA), out=str(Path(tmp) / "run"), model=str(model_dir), batch_size=BATCH,
            lr=LR, beta=BETA, max_steps=steps + 1, eval_every=0, eval_batches=1, save_every=0,
            split="book", group_by_length=False, device=device, precision="fp32",
        )  # fmt: skip
        started = time.perf_counter()
        dpo(config, records=records, progress=False)
        total = time.perf_counter() - started
        rows = read_metrics(Path(tmp) / "run" / "metrics.jsonl")[2:]  # step 0 and the warm-up
    seconds = sum(BATCH / row["tokens_per_s"] for row in rows)  # tokens_per_s: pairs/s here
    return {"contender": "instructkit dpo", "pairs_per_s": len(rows) * BATCH / seconds,
            "timed_steps": len(rows), "wall_total_s": total, **peak_memory(device)}  # fmt: skip


def run_trl(steps: int, limit: int, device: str) -> dict:
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tokenizer = build_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp))
        hf_tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp)
    hf_tokenizer.pad_token = hf_tokenizer.eos_token
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        bos_token_id=tokenizer.eos_id,
        eos_token_id=tokenizer.eos_id,
    )
    model = GPT2LMHeadModel(config)
    rows = [{"prompt": book_format_input(r) + "\n\n### Response:\n", "chosen": r["chosen"],
             "rejected": r["rejected"]} for r in train_pairs(limit)]  # fmt: skip
    args = DPOConfig(output_dir=tempfile.mkdtemp(), max_steps=steps + 1, per_device_train_batch_size=BATCH,
                     learning_rate=LR, beta=BETA, loss_type=["sigmoid"], lr_scheduler_type="constant",
                     logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=device == "cpu",
                     bf16=False, fp16=False, gradient_checkpointing=False, max_length=1024,
                     dataloader_drop_last=True, seed=0)  # fmt: skip
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=hf_tokenizer)  # fmt: skip
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            times.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            times[-1] = time.perf_counter() - times[-1]

    trainer.add_callback(StepTimer())
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    timed = times[1 : steps + 1]
    return {"contender": "TRL DPOTrainer", "pairs_per_s": len(timed) * BATCH / sum(timed),
            "timed_steps": len(timed), "wall_total_s": total, **peak_memory(device)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=935, help="training pairs to tokenize (≤ 935)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--contender", help=argparse.SUPPRESS)  # internal: one, in this process
    args = parser.parse_args()
    if not PREF_DATA.exists():
        sys.exit(f"{PREF_DATA} not found: this benchmark needs the book's preference data")
    if args.contender:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        run = run_ours if args.contender == "ours" else run_trl
        print(json.dumps(run(args.steps, args.pairs, args.device)))
        return
    results = []
    for contender in ("ours", "trl"):
        command = [sys.executable, __file__, "--contender", contender, "--steps", str(args.steps),
                   "--pairs", str(args.pairs), "--device", args.device]  # fmt: skip
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'contender':<18}{'pairs/s':>9}{'peak RSS GiB':>14}{'peak CUDA GiB':>15}{'total s':>9}")
    for r in results:
        cuda = "-" if r["peak_cuda_gib"] is None else f"{r['peak_cuda_gib']:.2f}"
        print(
            f"{r['contender']:<18}{r['pairs_per_s']:>9.2f}{r['peak_rss_gib']:>14.2f}{cuda:>15}{r['wall_total_s']:>9.1f}"
        )
    ours, trl = results
    print(f"ours/TRL: {ours['pairs_per_s'] / trl['pairs_per_s']:.2f}x pairs/s, "
          f"{ours['peak_rss_gib'] / trl['peak_rss_gib']:.2f}x peak RSS")  # fmt: skip


if __name__ == "__main__":
    main()
