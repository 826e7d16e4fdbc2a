"""Runs instructkit's real fine-tuning code path for the benchmark and reads its timings.

The numbers come from the run's own metrics.jsonl (one line per step, each with the
step's real target tokens and seconds, evaluation excluded), so what is timed is
exactly what `instructkit finetune` does per step. Step 1 is the warm-up.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench_common import BATCH_SIZE, BOOK_DATA, LR, TARGET, WEIGHT_DECAY

# About 9 of the book's records per step with GPT-2's BPE, near batch 8.
PACKED_ROWS, PACKED_ROW_LENGTH = 2, 256


def run_instructkit(
    train: list[dict],
    tokenizer,
    steps: int,
    seed: int,
    *,
    pack: bool = False,
    group_by_length: bool = True,
    mask_prompt: bool = False,
    precision: str | None = None,
) -> dict:
    from instructkit.config import FinetuneConfig
    from instructkit.model import GPTConfig, GPTModel, save_pretrained
    from instructkit.train import finetune
    from instructkit.train.metrics import read_metrics

    records = json.loads(BOOK_DATA.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        # GPT-2's 50,257-row embedding and head, as the other contenders have.
        model_dir = save_pretrained(
            GPTModel(GPTConfig.preset(TARGET.preset)), tokenizer, Path(tmp) / "model"
        )
        config = FinetuneConfig(
            data=str(BOOK_DATA),
            out=str(Path(tmp) / "run"),
            model=str(model_dir),
            # packed: 2 rows of 256 tokens per step. Short rows keep attention cheap (it spans
            # the whole row).
            batch_size=PACKED_ROWS if pack else BATCH_SIZE,
            lr=LR,
            weight_decay=WEIGHT_DECAY,
            allowed_max_length=PACKED_ROW_LENGTH if pack else None,
            dropout=0.0,
            grad_clip=None,
            check_leakage=False,
            max_steps=steps + 1,
            eval_every=0,
            eval_batches=1,
            save_every=0,
            log_every=1,
            pack=pack,
            group_by_length=group_by_length,
            mask_prompt=mask_prompt,
            seed=seed,
            precision=precision or TARGET.precision,
            device=TARGET.device,
        )
        finetune(config, records=records, tokenizer=tokenizer, progress=False)
        rows = [
            row for row in read_metrics(Path(tmp) / "run" / "metrics.jsonl") if row["step"] >= 1
        ]
    timed = rows[1:]
    previous = rows[0]
    tokens = records_done = seconds = 0.0
    for row in timed:
        step_tokens = row["tokens_seen"] - previous["tokens_seen"]
        tokens += step_tokens
        records_done += row["records_seen"] - previous["records_seen"]
        seconds += step_tokens / row["tokens_per_s"]
        previous = row
    return {
        "records_per_s": records_done / seconds,
        "target_tokens_per_s": tokens / seconds,
        "wall_s": seconds,
        "target_tokens": int(tokens),
        "records": int(records_done),
    }
