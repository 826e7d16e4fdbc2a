"""What the fine-tuning and generation benchmarks share: data, tokenizer, peak, contenders.

The data is the book's 1,100 records with the book's split and prompt format, tokenized
with the real GPT-2 BPE (`gpt2.tiktoken` beside the data, or tiktoken's cached `gpt2`).
Every contender trains like for like: dropout 0, no gradient clipping, AdamW at the same
settings, batches of 8 at random or grouped by length, in the same precision.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from book_reference import BookGPT, book_collate, calc_loss_batch
from torch.utils.data import DataLoader

# The book's data beside the checkout; INSTRUCTKIT_BOOK_DATA points elsewhere (a device
# machine gets only the repository, so bench/gpu_check.sh carries a copy, and the ranks).
BOOK_DATA = Path(
    os.environ.get("INSTRUCTKIT_BOOK_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "instruction-data.json"
)
GPT2_RANKS = BOOK_DATA.parent / "gpt2.tiktoken"
BATCH_SIZE = 8
LR, WEIGHT_DECAY = 5e-5, 0.1


@dataclass
class Target:
    """Where and how the contenders train: the CPU fp32 gpt2-small comparison by default;
    `bench/finetune.py --device cuda --preset gpt2-medium --precision bf16` for a GPU."""

    device: str = "cpu"
    preset: str = "gpt2-small"
    precision: str = "fp32"

    @property
    def shape(self) -> dict:
        """The preset in the book's config keys (BookGPT), GPT-2's vocabulary."""
        from instructkit.model import GPTConfig

        config = GPTConfig.preset(self.preset)
        return {
            "vocab_size": config.vocab_size,
            "context_length": config.context_length,
            "emb_dim": config.emb_dim,
            "n_heads": config.n_heads,
            "n_layers": config.n_layers,
            "drop_rate": 0.0,
            "qkv_bias": True,
        }

    def autocast(self):
        return torch.autocast(
            torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

    def synchronize(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()


TARGET = Target()  # bench/finetune.py sets its fields from its flags before a contender runs


def book_format_input(entry: dict) -> str:
    """The book's format_input (alpaca style)."""
    instruction = (
        "Below is an instruction that describes a task. Write a response that "
        f"appropriately completes the request.\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction + input_text


def load_book_split() -> tuple[list[dict], list[dict], list[dict]]:
    data = json.loads(BOOK_DATA.read_text(encoding="utf-8"))
    n_train, n_test = int(len(data) * 0.85), int(len(data) * 0.1)
    return data[:n_train], data[n_train : n_train + n_test], data[n_train + n_test :]


def build_tokenizer():
    """The real GPT-2 BPE: the ranks file beside the data, else tiktoken's cached `gpt2`."""
    from instructkit.errors import UserError
    from instructkit.tokenizer import load_tokenizer

    if GPT2_RANKS.exists():
        return load_tokenizer(str(GPT2_RANKS))
    try:
        return load_tokenizer("gpt2")
    except UserError as error:
        raise SystemExit(f"skipped: {GPT2_RANKS} not found and {error}") from None


def model_params(shape: dict) -> int:
    """Parameters of a GPT-2 shape with a tied head (124M for gpt2-small): what 6N counts."""
    d, layers, vocab, ctx = (
        shape["emb_dim"],
        shape["n_layers"],
        shape["vocab_size"],
        shape["context_length"],
    )
    per_block = 12 * d * d + 13 * d
    return vocab * d + ctx * d + layers * per_block + 2 * d


def measure_matmul_peak(
    n: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> float:
    """FLOP/s of a large square matmul in `dtype`: the machine's practical ceiling."""
    if torch.device(device).type == "cuda":
        n, repeats = 8192, 50  # a GPU needs a bigger problem to reach its peak
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    synchronize = Target(device=device).synchronize
    for _ in range(3):
        a @ b
    synchronize()
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def encode_book(records: list[dict], tokenizer) -> tuple[list[list[int]], list[int]]:
    """Token ids of prompt + response for each record, and each prompt's length."""
    ids, prompt_lengths = [], []
    for record in records:
        prompt = book_format_input(record)
        ids.append(tokenizer.encode(prompt + f"\n\n### Response:\n{record['output']}"))
        prompt_lengths.append(len(tokenizer.encode(prompt)))
    return ids, prompt_lengths


def timed_steps(batches, step: Callable[[object], int], steps: int) -> dict:
    """Runs one warm-up step, then `steps` timed ones; `step` returns its real target count."""
    iterator = iter(batches)
    step(next(iterator))
    tokens = records = 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(iterator)
        tokens += step(batch)
        records += BATCH_SIZE
    wall = time.perf_counter() - start
    return {
        "records_per_s": records / wall,
        "target_tokens_per_s": tokens / wall,
        "wall_s": wall,
        "target_tokens": tokens,
        "records": records,
    }


def shared_batches(ids: list[list[int]], grouped: bool, seed: int):
    """The batches instructkit's finetune draws for this seed (random, or grouped by
    length: each example's tokens plus its end-of-text), so that the book's loop and TRL
    train on exactly the batches ours does, step for step."""
    from instructkit.data.sampling import LengthGroupedSampler, RandomBatchSampler

    if grouped:
        return LengthGroupedSampler([len(i) + 1 for i in ids], BATCH_SIZE, seed, drop_last=True)
    return RandomBatchSampler(len(ids), BATCH_SIZE, seed=seed, drop_last=True)


def book_contender(mask_prompt: bool, grouped: bool = False) -> Callable:
    """The book's loop on instructkit's batches (`shared_batches`); the book itself shuffles
    at random and has no length grouping."""

    def run(train: list[dict], tokenizer, steps: int, seed: int) -> dict:
        model = BookGPT(TARGET.shape).to(TARGET.device)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        ids, prompt_lengths = encode_book(train, tokenizer)
        items = list(zip(ids, prompt_lengths))

        def collate(batch):
            masks = [p for _, p in batch] if mask_prompt else None
            return book_collate(
                [i for i, _ in batch],
                pad_token_id=tokenizer.eos_id,
                allowed_max_length=1024,
                mask_prompt_lengths=masks,
            )

        loader = DataLoader(
            items, batch_sampler=shared_batches(ids, grouped, seed), collate_fn=collate
        )

        def step(batch) -> int:
            inputs, targets = (t.to(TARGET.device) for t in batch)
            optimizer.zero_grad()
            with TARGET.autocast():
                loss = calc_loss_batch(inputs, targets, model)
            loss.backward()
            optimizer.step()
            return int((targets != -100).sum())

        return timed_steps(loader, step, steps)

    return run


def trl_contender(completion_only: bool, batches: str = "random") -> Callable:
    """TRL's SFTTrainer on instructkit's batches (`shared_batches`: "random" or "grouped"), or
    with its own length grouping ("hf-grouped": transformers' LengthGroupedSampler, which
    sorts each window of 50 batches longest first, so a short timed run sees its longest)."""

    def run(train: list[dict], tokenizer, steps: int, seed: int) -> dict:
        import tempfile

        from datasets import Dataset
        from transformers import (
            GPT2Config,
            GPT2LMHeadModel,
            PreTrainedTokenizerFast,
            TrainerCallback,
        )
        from trl import SFTConfig, SFTTrainer

        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save(Path(tmp))
            hf_tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp)
        hf_tokenizer.pad_token = hf_tokenizer.eos_token
        shape = TARGET.shape
        config = GPT2Config(
            vocab_size=shape["vocab_size"],
            n_positions=shape["context_length"],
            n_embd=shape["emb_dim"],
            n_layer=shape["n_layers"],
            n_head=shape["n_heads"],
            bos_token_id=tokenizer.eos_id,
            eos_token_id=tokenizer.eos_id,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )  # as the others
        model = GPT2LMHeadModel(config)
        rows = [
            {"prompt": book_format_input(r) + "\n\n### Response:\n", "completion": r["output"]}
            for r in train
        ]
        if not completion_only:
            rows = [{"text": row["prompt"] + row["completion"]} for row in rows]
        args = SFTConfig(
            output_dir=tempfile.mkdtemp(),
            max_steps=steps + 1,
            per_device_train_batch_size=BATCH_SIZE,
            learning_rate=LR,
            weight_decay=WEIGHT_DECAY,
            lr_scheduler_type="constant",
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            use_cpu=TARGET.device == "cpu",
            dataloader_drop_last=True,
            max_length=1024,
            packing=False,
            seed=seed,
            completion_only_loss=completion_only,
            dataset_num_proc=None,
            max_grad_norm=0.0,  # the Trainer clips at 1.0 by default; no one else does
            train_sampling_strategy="group_by_length" if batches == "hf-grouped" else "random",
            # TRL 1.16 defaults to bf16 autocast and gradient checkpointing, even
            # on CPU; every contender does the same work in the same precision.
            bf16=TARGET.precision == "bf16",
            fp16=False,
            gradient_checkpointing=False,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=hf_tokenizer,
        )
        if batches != "hf-grouped":
            order = shared_batches(encode_book(train, tokenizer)[0], batches == "grouped", seed)
            flat = [index for batch in order for index in batch]
            trainer._get_train_sampler = lambda *_, **__: flat  # batches of 8 in this order
        counts: list[int] = []
        collate = trainer.data_collator

        def counting_collate(examples):
            batch = collate(examples)
            counts.append(int((batch["labels"][:, 1:] != -100).sum()))
            return batch

        trainer.data_collator = counting_collate
        times: list[float] = []

        class StepTimer(TrainerCallback):
            def on_step_begin(self, *_, **__):
                TARGET.synchronize()
                times.append(time.perf_counter())

            def on_step_end(self, *_, **__):
                TARGET.synchronize()
                times[-1] = time.perf_counter() - times[-1]

        trainer.add_callback(StepTimer())
        trainer.train()
        # Step 0 is the warm-up; the collate of step k+1 may run before step k ends, so count
        # the tokens of the batches of the timed steps (1..steps), not of the last collated.
        wall = sum(times[1 : steps + 1])
        tokens = sum(counts[1 : steps + 1])
        records = steps * BATCH_SIZE
        return {
            "records_per_s": records / wall,
            "target_tokens_per_s": tokens / wall,
            "wall_s": wall,
            "target_tokens": tokens,
            "records": records,
        }

    return run


def ours_contender(**options) -> Callable:
    def run(train: list[dict], tokenizer, steps: int, seed: int) -> dict:
        from ours_runner import run_instructkit

        return run_instructkit(train, tokenizer, steps, seed, **options)

    return run


CONTENDERS: dict[str, Callable] = {
    "book": book_contender(mask_prompt=False),
    "book-grouped": book_contender(mask_prompt=False, grouped=True),
    "trl": trl_contender(completion_only=False),
    "trl-grouped": trl_contender(completion_only=False, batches="grouped"),
    "trl-hf-grouped": trl_contender(completion_only=False, batches="hf-grouped"),
    "ours-ungrouped": ours_contender(group_by_length=False),
    "ours": ours_contender(),  # defaults: length-grouped batches
    "ours-packed": ours_contender(pack=True),
    "ours-bf16": ours_contender(precision="bf16"),  # bf16 autocast; MFU against the bf16 peak
    "book-masked": book_contender(mask_prompt=True),
    "trl-masked": trl_contender(completion_only=True),
    "ours-masked": ours_contender(mask_prompt=True),
    "ours-masked-packed": ours_contender(mask_prompt=True, pack=True),
}
# The like-for-like table of issue 15: each loop at random and with length grouping.
LIKE_FOR_LIKE = ("book", "book-grouped", "trl", "trl-grouped", "ours-ungrouped", "ours")
# Whom each contender is compared with: the same batching on both sides.
REFERENCES = {
    "book": ("book", "trl"),
    "book-grouped": ("book-grouped", "trl-grouped"),
    "trl": ("book", "trl"),
    "trl-grouped": ("book-grouped", "trl-grouped"),
    "trl-hf-grouped": ("book-grouped", "trl-grouped"),
    "ours-ungrouped": ("book", "trl"),
    "ours": ("book-grouped", "trl-grouped"),
    "ours-packed": ("book-grouped", "trl-grouped"),
    "ours-bf16": ("book-grouped", "trl-grouped"),
    "book-masked": ("book-masked", "trl-masked"),
    "trl-masked": ("book-masked", "trl-masked"),
    "ours-masked": ("book-masked", "trl-masked"),
    "ours-masked-packed": ("book-masked", "trl-masked"),
}
