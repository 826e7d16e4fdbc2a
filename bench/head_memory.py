"""Peak memory and tokens/s of a training step with a 151,936-token vocabulary: ours vs TRL.

With Qwen's and Llama's vocabularies the output head and the cross-entropy dominate a
small model's training memory: a batch of B x T positions has B x T x 151,936 logits
(fp32: 2.4 GB for 4 x 1,024), and a plain loss keeps them, their log-softmax and their
gradient alive at once. instructkit computes the head and the loss a chunk of target
positions at a time (`model/head_loss.py`). This bench gives both contenders the same
work: a Qwen3-shaped model (`--layers` layers, hidden `--hidden`, the real 151,936-row
embedding, untied head, random weights that transformers writes), fp32 on the CPU, the
same batch of `--batch` x `--length` token ids (every next token a target), AdamW.

  ours: `instructkit.model.load_pretrained(DIR)` and the training loop's step
        (`train.steps.LossModule` on a `Batch`: summed loss / target tokens, backward,
        AdamW step).
  trl:  transformers' `Qwen3ForCausalLM.from_pretrained(DIR)` in TRL's `SFTTrainer`
        (pre-tokenized rows, no packing, no gradient checkpointing, fp32, AdamW).

Each contender runs in its own process, so its peak RSS (getrusage ru_maxrss) is its own;
`--steps` timed optimizer steps follow one untimed warm-up step.

    python bench/head_memory.py [--steps 5] [--batch 4] [--length 512] [--threads 2] [--json FILE]
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

VOCAB = 151_936  # Qwen2.5 / Qwen3
LR = 1e-5


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_model(directory: Path, layers: int, hidden: int) -> None:
    """A Qwen3 checkpoint with random weights, written by transformers."""
    import torch
    import transformers

    config = transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=3 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        max_position_embeddings=4096, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)


def batch_ids(batch: int, length: int):
    import torch

    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB - 1000, (batch, length), generator=generator)  # (B, T)


def run_ours(directory: str, ids, steps: int) -> tuple[list[float], float]:
    import torch

    from instructkit.constants import IGNORE_INDEX
    from instructkit.data import Batch
    from instructkit.model import load_pretrained
    from instructkit.train.steps import LossModule

    model, _ = load_pretrained(directory)
    model.train()
    objective = LossModule(model)
    targets = torch.cat([ids[:, 1:], torch.full((len(ids), 1), IGNORE_INDEX)], dim=1)  # (B, T)
    batch = Batch(ids, targets, num_records=len(ids), num_real_tokens=ids.numel())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    loaded = peak_rss_gib()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = objective(batch) / batch.num_target_tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[1:], loaded


def run_trl(directory: str, ids, steps: int) -> tuple[list[float], float]:
    import transformers
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    loaded = peak_rss_gib()
    rows = Dataset.from_list([{"input_ids": row} for row in ids.tolist()])
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out, max_steps=steps + 1, per_device_train_batch_size=len(ids),
            learning_rate=LR, weight_decay=0.0, lr_scheduler_type="constant",
            logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
            max_length=ids.shape[1], packing=False, bf16=False, fp16=False,
            gradient_checkpointing=False, dataset_num_proc=None,
        )  # fmt: skip
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=rows, processing_class=placeholder_tokenizer()
        )
        collate, counts = trainer.data_collator, []

        def counting_collate(examples):
            batch = collate(examples)
            counts.append(int((batch["labels"][:, 1:] != -100).sum()))
            return batch

        trainer.data_collator = counting_collate
        times: list[float] = []

        class StepTimer(transformers.TrainerCallback):
            def on_step_begin(self, *_, **__):
                times.append(time.perf_counter())

            def on_step_end(self, *_, **__):
                times[-1] = time.perf_counter() - times[-1]

        trainer.add_callback(StepTimer())
        trainer.train()
    expected = ids.shape[0] * (ids.shape[1] - 1)
    assert set(counts) == {expected}, f"TRL trained {counts} targets per batch, not {expected}"
    return times[1:], loaded


def placeholder_tokenizer():
    """The rows are token ids already: TRL only needs a tokenizer for its pad and eos ids."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocabulary = {"<pad>": VOCAB - 2, "<eos>": VOCAB - 1}
    backend = Tokenizer(WordLevel(vocabulary, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def contender(name: str, directory: str, batch: int, length: int, steps: int, threads: int):
    import torch

    torch.set_num_threads(threads)
    ids = batch_ids(batch, length)
    times, loaded = (run_ours if name == "ours" else run_trl)(directory, ids, steps)
    seconds = sum(times) / len(times)
    print(json.dumps({
        "contender": name, "steps_timed": len(times), "seconds_per_step": seconds,
        "target_tokens_per_s": batch * (length - 1) / seconds,
        "peak_rss_gib": peak_rss_gib(), "rss_after_load_gib": loaded,
    }))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--contender", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        contender(args.contender, args.model_dir, args.batch, args.length, args.steps, args.threads)
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp), args.layers, args.hidden)
        for name in ("ours", "trl"):
            command = [sys.executable, __file__, "--contender", name, "--model-dir", tmp,
                       "--steps", str(args.steps), "--batch", str(args.batch),
                       "--length", str(args.length), "--threads", str(args.threads)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]))
    ours, trl = results
    print(
        f"peak RSS ours / TRL: {ours['peak_rss_gib'] / trl['peak_rss_gib']:.2f}; "
        f"tokens/s ours / TRL: {ours['target_tokens_per_s'] / trl['target_tokens_per_s']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
