"""Run configuration as typed dataclasses; YAML only serialises them.

`FinetuneConfig` holds everything needed to rerun a fine-tune: the data, the model,
the batching and the optimisation. Its defaults are the book's chapter 7 choices
(AdamW lr 5e-5, weight decay 0.1, batch 8, 2 epochs, alpaca prompts, the book's
85/10/5 split, no warmup, constant learning rate, no gradient clipping). Every value
is checked in `__post_init__`, so a bad YAML file or flag fails before any work starts,
with all its problems listed at once. The resolved config is saved as
`runs/NAME/config.yaml`. `GenerationConfig` does the same for generating responses
(`generate`, `chat`, `serve` and `instructkit.generate`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from instructkit.errors import UserError
from instructkit.files import write_atomic

# How records split (see `instructkit.data.split_records`), and the parts they split into,
# in the order the book returns them.
SPLIT_METHODS = ("auto", "book", "shuffled", "field")
SPLIT_NAMES = ("train", "test", "val")
LR_SCHEDULES = ("constant", "cosine")
DPO_LOSSES = ("sigmoid", "ipo")
PRECISIONS = ("auto", "fp32", "bf16")
TRAIN_ON = ("assistant", "all")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Field docstrings double as `instructkit finetune --help` text."""

    data: str = ""
    """Instruction file (JSON list, JSONL or CSV) with instruction/input/output records."""
    out: str = ""
    """Run directory; gets config.yaml, metrics.jsonl, loss.png, checkpoints/ and model/."""
    model: str = "gpt2-medium"
    """Model to start from: preset/hub id, local HF dir, run dir, book .pth, or random:PRESET."""
    tokenizer: str | None = None
    """Tokenizer spec overriding the model's own (required for random:PRESET)."""
    style: str | None = None
    """Prompt style: alpaca, phi3, chatml, or chat_template (the model's own Jinja template); unset: chat_template when the model's tokenizer_config.json has one, else alpaca."""
    train_on: str = "assistant"
    """What conversations (and records under a chat template) train on: 'assistant' (every answer and its end-of-turn token) or 'all' tokens."""
    split: str = "auto"
    """How to split the records: 'book' (first 85% train, 10% test, 5% val), 'shuffled' (seeded), 'field' (each record's `split`: train/test/val) or 'auto' (field when every record has one, else book)."""

    epochs: int = 2
    """Passes over the training split."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs when smaller)."""
    batch_size: int = 8
    """Records per micro-batch, per process (under torchrun the global batch is batch_size x processes; --resume may change it only if that product stays the same)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; the loss is the mean over all their target tokens."""
    lr: float = 5e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warmup steps from 0 to lr."""
    lr_schedule: str = "constant"
    """After warmup: 'constant' or 'cosine' decay to min_lr_ratio * lr."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine schedule, as a fraction of lr."""
    grad_clip: float | None = None
    """Clip the gradient norm to this value (the book's appendix D uses 1.0); off when unset."""
    dropout: float | None = None
    """Dropout rate while training; unset keeps the model's own (0.0 for GPT-2, as in the book)."""

    allowed_max_length: int | None = 1024
    """Truncate examples to this many tokens (capped at the model's context length)."""
    mask_prompt: bool = False
    """Train only on response tokens (prompt targets become -100)."""
    pack: bool = False
    """Pack several examples into each row, attention kept inside each example."""
    group_by_length: bool = True
    """Batch examples of similar length together to cut padding (1.2x the tokens/s of random batches in bench/finetune.py); --no-group-by-length batches at random, as the book does."""
    check_leakage: bool = True
    """Warn when test or validation records nearly copy a training record (`data inspect` lists them; ~5 s per 18,000 records)."""

    eval_every: int = 5
    """Evaluate the validation loss every N optimizer steps (0: only at the end)."""
    eval_batches: int = 5
    """Validation batches per evaluation (the book's eval_iter)."""
    log_every: int = 1
    """Write a metrics.jsonl line every N optimizer steps."""
    save_every: int = 100
    """Write a resumable checkpoint every N optimizer steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many of the latest checkpoints to keep."""
    seed: int = 123
    """Seed for model init (random:PRESET), data order and dropout."""

    lora_rank: int = 0
    """LoRA rank; 0 trains all weights."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""

    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    precision: str = "auto"
    """'auto' (bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere), 'fp32',
    or 'bf16' (autocast on CUDA or any CPU)."""
    compile: bool = False
    """Compile the model with torch.compile."""
    strategy: str = "ddp"
    """Under torchrun: 'ddp' (a full copy of the model per process) or 'fsdp' (weights, gradients and optimizer state sharded across processes; sharded checkpoints). One process: no effect but the checkpoint format."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward: less memory, about a third more compute."""
    num_workers: int = 0
    """DataLoader worker processes."""

    def __post_init__(self) -> None:
        problems = []

        def check(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        check(bool(self.data), "data: no instruction file given (use --data FILE)")
        check(bool(self.out), "out: no run directory given (use --out DIR)")
        check(bool(self.model), "model: no model given (use --model SPEC)")
        check(
            self.split in SPLIT_METHODS,
            f"split: {self.split!r} is not one of {', '.join(SPLIT_METHODS)}",
        )
        check(
            self.train_on in TRAIN_ON,
            f"train_on: {self.train_on!r} is not one of {', '.join(TRAIN_ON)}",
        )
        check(self.epochs >= 1, f"epochs: must be at least 1, got {self.epochs}")
        check(
            self.max_steps is None or self.max_steps >= 1,
            f"max_steps: must be at least 1, got {self.max_steps}",
        )
        check(self.batch_size >= 1, f"batch_size: must be at least 1, got {self.batch_size}")
        check(self.grad_accum >= 1, f"grad_accum: must be at least 1, got {self.grad_accum}")
        check(self.lr > 0, f"lr: must be positive, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay: must be >= 0, got {self.weight_decay}")
        check(self.warmup_steps >= 0, f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        check(
            self.lr_schedule in LR_SCHEDULES,
            f"lr_schedule: {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}",
        )
        check(
            0 <= self.min_lr_ratio <= 1,
            f"min_lr_ratio: must be between 0 and 1, got {self.min_lr_ratio}",
        )
        check(
            self.grad_clip is None or self.grad_clip > 0,
            f"grad_clip: must be positive, got {self.grad_clip}",
        )
        check(
            self.dropout is None or 0 <= self.dropout < 1,
            f"dropout: must be in [0, 1), got {self.dropout}",
        )
        check(
            self.allowed_max_length is None or self.allowed_max_length >= 2,
            f"allowed_max_length: must be at least 2, got {self.allowed_max_length}",
        )
        check(self.eval_every >= 0, f"eval_every: must be >= 0, got {self.eval_every}")
        check(self.eval_batches >= 1, f"eval_batches: must be at least 1, got {self.eval_batches}")
        check(self.log_every >= 1, f"log_every: must be at least 1, got {self.log_every}")
        check(self.save_every >= 0, f"save_every: must be >= 0, got {self.save_every}")
        check(
            self.keep_checkpoints >= 1,
            f"keep_checkpoints: must be at least 1, got {self.keep_checkpoints}",
        )
        check(self.lora_rank >= 0, f"lora_rank: must be >= 0, got {self.lora_rank}")
        check(self.lora_alpha > 0, f"lora_alpha: must be positive, got {self.lora_alpha}")
        check(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            f"device: {self.device!r} is not auto, cpu, cuda, cuda:N or mps",
        )
        check(
            self.precision in PRECISIONS,
            f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}",
        )
        check(
            self.strategy in STRATEGIES,
            f"strategy: {self.strategy!r} is not one of {', '.join(STRATEGIES)}",
        )
        check(self.num_workers >= 0, f"num_workers: must be >= 0, got {self.num_workers}")
        if problems:
            raise UserError(problems)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DPOConfig(FinetuneConfig):
    """One preference-tuning run (`instructkit dpo`): a fine-tune whose objective is DPO.

    Defaults that differ from fine-tuning follow the book's DPO notebook (lr 5e-6, weight
    decay 0.01, one epoch, beta 0.1). Prompt masking is implied and packing does not apply.
    """

    data: str = ""
    """Preference file (JSON list or JSONL): the book's instruction/input/chosen/rejected records, or prompt/chosen/rejected."""
    model: str = ""
    """Model to start from (and the reference policy): typically an SFT run dir; anything finetune accepts."""
    epochs: int = 1
    """Passes over the training pairs."""
    batch_size: int = 8
    """Preference pairs per micro-batch, per process."""
    lr: float = 5e-6
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    mask_prompt: bool = True
    """Always on: only response tokens count in the log-probabilities."""
    beta: float = 0.1
    """DPO's beta: how far the policy may move from the reference (higher: less far)."""
    loss: str = "sigmoid"
    """'sigmoid' (DPO, Rafailov et al.) or 'ipo' (Azar et al.), on summed response log-probs."""
    label_smoothing: float = 0.0
    """Probability that a pair's preference label is flipped (conservative DPO; sigmoid only)."""

    def __post_init__(self) -> None:
        problems = []
        try:
            super().__post_init__()
        except UserError as error:
            problems.extend(error.problems)
        problems = [p.replace("no instruction file", "no preference file") for p in problems]
        if self.beta <= 0:
            problems.append(f"beta: must be positive, got {self.beta}")
        if self.loss not in DPO_LOSSES:
            problems.append(f"loss: {self.loss!r} is not one of {', '.join(DPO_LOSSES)}")
        if not 0 <= self.label_smoothing < 0.5:
            problems.append(f"label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss != "sigmoid":
            problems.append("label_smoothing: applies to the sigmoid loss only")
        if self.pack:
            problems.append("pack: preference pairs are not packed")
        if not self.mask_prompt:
            problems.append("mask_prompt: DPO scores response tokens only; it cannot be off")
        if problems:
            raise UserError(problems)


def field_help(cls: type) -> dict[str, str]:
    """The attribute docstrings of a config dataclass and its bases, read from their source
    (for --help); a subclass's own docstring wins where it redeclares a field."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            helps.update(_own_field_help(klass))
    return helps


def _own_field_help(cls: type) -> dict[str, str]:
    import ast
    import inspect
    import itertools
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    helps = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            helps[node.target.id] = following.value.value
    return helps


def check_values(
    values: dict[str, Any], source: str | None = None, cls: type = FinetuneConfig
) -> None:
    """Reject unknown settings and values of the wrong type, naming `source` (a file)."""
    prefix = f"{source}: " if source else ""
    known = {f.name: f for f in fields(cls)}
    problems = [f"{prefix}unknown setting {key!r}" for key in sorted(set(values) - set(known))]
    for key, value in values.items():
        if key in known and not _type_ok(value, str(known[key].type)):
            problems.append(f"{prefix}{key} should be {known[key].type}, got {value!r}")
    if problems:
        raise UserError(problems)


def config_from_dict(
    values: dict[str, Any], source: str | None = None, cls: type = FinetuneConfig
) -> Any:
    """Build a FinetuneConfig (or `cls`, e.g. DPOConfig), naming unknown keys and wrong types
    instead of failing on them."""
    check_values(values, source, cls)
    prefix = f"{source}: " if source else ""
    try:
        return cls(**values)
    except UserError as error:
        raise UserError([f"{prefix}{problem}" for problem in error.problems]) from None


def _type_ok(value: Any, annotation: str) -> bool:
    """Check a YAML value against a field annotation written as a string ('int | None')."""
    allowed = {part.strip() for part in annotation.split("|")}
    if value is None:
        return "None" in allowed
    if isinstance(value, bool):
        return "bool" in allowed
    if isinstance(value, int):
        return bool(allowed & {"int", "float"})
    if isinstance(value, float):
        return "float" in allowed
    if isinstance(value, str):
        return "str" in allowed
    return False


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a plain dict (validated later, once merged with flags)."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(
            f"{path}: expected a mapping of setting: value, got {type(values).__name__}"
        )
    return values


def save_config(config: FinetuneConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    write_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class GenerationConfig:
    """How responses are generated: one config for `generate`, `chat`, `serve` and the library.

    Field docstrings double as the --help of those commands' flags. The defaults are the
    book's greedy decoding (temperature 0, no top-k/top-p), so a seed only matters once
    sampling is switched on; without one, sampled responses differ from run to run, as in
    other servers. Frozen, so a server's defaults can be shared by concurrent requests.
    """

    max_new_tokens: int = 256
    """Most new tokens per response (a server request's max_tokens or num_predict replaces it)."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding, as in the book."""
    top_k: int | None = None
    """Sample only from the k likeliest tokens (none: from all)."""
    top_p: float | None = None
    """Nucleus sampling: only from the likeliest tokens whose probabilities add up to p (none: from all)."""
    seed: int | None = None
    """Seed for sampling, which makes sampled responses repeatable (none: different each run)."""
    batch_size: int = 8
    """Prompts generated at once."""
    eos_id: int | None = None
    """The token that ends a response (the tokenizer's end of text); not part of the response."""
    stop_ids: tuple[int, ...] = ()
    """Further tokens that end a response, e.g. a chat template's end-of-turn token."""
    vocab_size: int | None = None
    """Only ids below this are generated (a model vocabulary padded past the tokenizer's)."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not math.isfinite(self.temperature):
            problems.append(f"temperature must be a finite number, got {self.temperature}")
        elif self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            problems.append(
                f"seed must be from {SEED_RANGE[0]} to {SEED_RANGE[1]}, got {self.seed}"
            )
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        ids = [] if self.eos_id is None else [self.eos_id]
        if any(token < 0 for token in [*ids, *self.stop_ids]):
            problems.append(
                f"token ids must be >= 0, got eos_id {self.eos_id}, stop_ids {self.stop_ids}"
            )
        if self.vocab_size is not None and self.vocab_size < 1:
            problems.append(f"vocab_size must be at least 1, got {self.vocab_size}")
        if problems:
            raise UserError([f"generation: {problem}" for problem in problems])

    def for_tokenizer(self, tokenizer) -> GenerationConfig:
        """This config ending at every end id of `tokenizer` and generating only its ids.

        Chat models end a turn with one token and a text with another (Llama 3: <|eot_id|>,
        <|end_of_text|>; Qwen: <|im_end|>, <|endoftext|>), and their embedding matrices
        have rows past the tokenizer's last id that no text can decode.
        """
        ends = tuple(getattr(tokenizer, "end_ids", (tokenizer.eos_id,)))
        stops = tuple(dict.fromkeys(i for i in (*ends[1:], *self.stop_ids) if i != ends[0]))
        return dataclasses.replace(
            self, eos_id=ends[0], stop_ids=stops, vocab_size=tokenizer.vocab_size
        )

    @property
    def end_ids(self) -> tuple[int, ...]:
        """Every token that ends a response."""
        return (*([] if self.eos_id is None else [self.eos_id]), *self.stop_ids)
