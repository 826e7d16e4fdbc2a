"""The offline demo: the whole pipeline on built-in data and a small model trained from scratch.

No weights or datasets can be downloaded on an offline machine, so `instructkit demo`
shows the system working end to end on what code can make: it writes the built-in
instruction dataset (`instructkit.data.builtin`) into the run directory, trains a small
byte-level BPE tokenizer on its training split (merging only within letter runs, so a word
is the same tokens in a list and in an answer), builds a Llama-style decoder from the
`demo-llama` preset (rotary positions and six layers: it learns to point and copy far
sooner than the book's GPT with learned positions or four layers, measured in BENCHMARKS.md),
fine-tunes it with the same `finetune` code path as `instructkit finetune` (prompt
masking and packing on), generates responses for the held-out test split with the same
`generate_responses` path as `instructkit generate` (batched, greedy), and scores them
with exact match and ROUGE-L per task family. The untrained model (same seed, the
weights training starts from) is scored the same way, for contrast. Everything lands in
the run directory of DESIGN.md, plus `report.md` (written by `instructkit.demo_report`).

It runs on the CPU with fixed seeds, so running it twice gives the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instructkit.errors import UserError
from instructkit.files import write_json

if TYPE_CHECKING:
    from instructkit.config import FinetuneConfig

# The book's exercise 7.1 prompts: half the tokens of its alpaca prompts for these short
# tasks, so each training step holds twice the examples (measured in BENCHMARKS.md).
STYLE = "phi3"
REAL_GPT2_COMMAND = "instructkit finetune --model gpt2-medium --data your.json --out runs/gpt2m"
# Files the demo writes besides the run artifacts that `finetune` manages.
DEMO_ARTIFACTS = ("data.json", "tokenizer", "untrained_responses.json")
MAX_NEW_TOKENS_MARGIN = 8  # beyond the longest training answer, so a long answer is never cut
DEMO_PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class DemoPlan:
    """What a demo run trains and measures; `FULL` is `instructkit demo`, `QUICK` `--quick`."""

    model: str
    """Model spec for `load_pretrained`, a random:PRESET."""
    vocab_size: int
    """Tokens of the BPE tokenizer trained on the training split."""
    epochs: int
    batch_size: int
    """Packed rows per optimizer step."""
    row_length: int
    """Tokens per packed row (`allowed_max_length`)."""
    lr: float
    warmup_steps: int
    max_steps: int | None = None
    eval_every: int = 50
    test_per_family: int | None = None
    """Test records scored per family; None scores the whole test split."""
    untrained_per_family: int = 20
    """Of those, how many the untrained model answers: it only shows that training changed
    something (the baselines are the contrast that counts), and it answers at full length."""
    precision: str = "fp32"
    """Training precision (`FinetuneConfig.precision`)."""
    word_pieces: bool = False
    """Whether the BPE merges only within letter runs (`train_tokenizer(word_pieces=True)`)."""


# One plan on every CPU, the one whose scores were measured (a bf16 plan chosen by the CPU
# never was: no machine with native bf16 was at hand). Sized on an AMD EPYC Zen 3 (AVX2,
# 2 cores): 1,300 steps (~3.8 epochs of the 20,800 training records), the whole run in
# 6.8-7 minutes on the idle machine (1,700 steps score higher; estimated 8.5-9 minutes).
# Designs compared on the validation split, 3-seed test scores: BENCHMARKS.md ("Demo").
FULL = DemoPlan(
    model="random:demo-llama",
    vocab_size=512,
    epochs=30,
    batch_size=16,
    row_length=128,
    lr=2e-3,
    warmup_steps=20,
    max_steps=1300,
    eval_every=200,
    word_pieces=True,
)
QUICK = DemoPlan(
    model="random:tiny-llama",
    vocab_size=300,
    epochs=2,
    batch_size=8,
    row_length=128,
    lr=5e-3,
    warmup_steps=10,
    max_steps=200,
    eval_every=100,
    test_per_family=4,
    word_pieces=True,
)


@dataclass
class DemoResult:
    """What a demo run produced: where, the scores of the trained and untrained model, timing."""

    out_dir: Path
    trained: dict
    untrained: dict
    elapsed_s: float
    summary: str


@dataclass
class DemoData:
    """The data stage's output: the run dir, the splits, the tokenizer trained on them."""

    out_dir: Path
    data_path: Path
    train: list[dict]
    val: list[dict]
    test: list[dict]
    """The scored held-out records (`DemoPlan.test_per_family` of each family)."""
    tokenizer: Any
    max_new_tokens: int


class Stages:
    """The demo's stages on one progress bar, each one's wall time kept for the report."""

    def __init__(self, progress: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=6, desc="demo", unit="stage", disable=not progress, dynamic_ncols=True
        )
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, name: str):
        self.bar.set_postfix_str(name)
        start = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - start
        self.bar.update(1)


def run_demo(
    out: str | Path = "runs/demo",
    *,
    quick: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
    plan: DemoPlan | None = None,
    precision: str = "fp32",
    held_out: str = "test",
) -> DemoResult:
    """Run the whole pipeline into a fresh run directory (or `out` itself with `overwrite`).

    precision: "fp32" (the measured plan) or "bf16" (the same plan under bf16 autocast:
    faster where the CPU multiplies bf16 natively, its scores not measured).
    held_out: the split scored, "test", or "val" to compare designs without looking at the test split
    (`bench/demo_designs.py`).
    """
    from instructkit.demo_report import summary_text, write_report
    from instructkit.evaluate import compute_metrics
    from instructkit.train import finetune

    plan = plan or choose_plan(quick, precision)
    started, cpu_started = time.perf_counter(), time.process_time()
    stages = Stages(progress)
    with stages.bar:
        with stages.timed("data and tokenizer"):
            data = prepare_data(Path(out), overwrite, seed, plan, held_out)
        with stages.timed("untrained responses"):
            untrained_records = answer_untrained(data, plan, seed, progress)
            untrained = compute_metrics(untrained_records)
        with stages.timed("fine-tuning"):
            # The run dir is ours (claimed above); overwrite lets finetune write beside data.json.
            config = finetune_config(data, plan, seed)
            run = finetune(config, tokenizer=data.tokenizer, overwrite=True, progress=progress)
        with stages.timed("trained responses"):
            model, trained_records = answer_trained(data, progress)
        with stages.timed("scores"):
            scores = score(data, untrained)
        with stages.timed("report"):
            facts = {
                "seed": seed,
                "quick": quick,
                "held_out": held_out,
                "baselines": scores["baselines"],
                "plan": plan,
                "counts": (len(data.train), len(data.val), len(data.test)),
                "tokenizer_vocab": data.tokenizer.vocab_size,
                "model_config": model.config,
                "parameters": sum(p.numel() for p in model.parameters()),
                "run": run,
                "max_new_tokens": data.max_new_tokens,
                "timings": dict(stages.timings),
                "elapsed_s": time.perf_counter() - started,
                "cpu_s": time.process_time() - cpu_started,
            }
            trained = scores["metrics"]
            write_report(
                data.out_dir / "report.md",
                facts,
                trained,
                untrained,
                trained_records,
                untrained_records,
            )
    return DemoResult(
        out_dir=data.out_dir,
        trained=trained,
        untrained=scores["untrained"]["metrics"],
        elapsed_s=time.perf_counter() - started,
        summary=summary_text(data.out_dir, trained, untrained, facts),
    )


# ---- the stages --------------------------------------------------------------------------


def prepare_data(
    out: Path, overwrite: bool, seed: int, plan: DemoPlan, held_out: str = "test"
) -> DemoData:
    """Claim the run dir, write the built-in data, split it, train the tokenizer."""
    from instructkit.data import get_style, load_instructions, split_by_field
    from instructkit.data.builtin import write_builtin
    from instructkit.tokenizer import train_tokenizer

    out_dir = claim_run_dir(out, overwrite)
    data_path = out_dir / "data.json"
    write_builtin(data_path, seed=seed)
    records = load_instructions(data_path)
    train, test, val = split_by_field(records, str(data_path))  # as finetune splits it
    style = get_style(STYLE)
    texts = [style.text(record) for record in train]
    tokenizer = train_tokenizer(texts, plan.vocab_size, word_pieces=plan.word_pieces)
    tokenizer.save(out_dir / "tokenizer")
    longest_answer = max(len(tokenizer.encode(style.response(record))) for record in train)
    return DemoData(
        out_dir=out_dir,
        data_path=data_path,
        train=train,
        val=val,
        test=pick_per_family(test if held_out == "test" else val, plan.test_per_family),
        tokenizer=tokenizer,
        max_new_tokens=MAX_NEW_TOKENS_MARGIN + longest_answer,
    )


def answer_test(
    model, tokenizer, style, data: DemoData, name: str, progress: bool, records: list[dict]
) -> list[dict]:
    """`records` with `model`'s responses, saved as `name` in the run dir."""
    from instructkit.responses import generate_responses

    answered = generate_responses(
        model,
        tokenizer,
        style,
        records,
        batch_size=32,
        max_new_tokens=data.max_new_tokens,
        progress=progress,
    )
    write_json(data.out_dir / name, answered)
    return answered


def answer_untrained(data: DemoData, plan: DemoPlan, seed: int, progress: bool) -> list[dict]:
    """The responses of the weights fine-tuning starts from (same seed), for contrast."""
    from instructkit.data import get_style
    from instructkit.model import load_pretrained

    model, _ = load_pretrained(plan.model, tokenizer=data.tokenizer, seed=seed)
    style = get_style(STYLE)
    records = pick_per_family(data.test, plan.untrained_per_family)
    return answer_test(
        model, data.tokenizer, style, data, "untrained_responses.json", progress, records
    )


def finetune_config(data: DemoData, plan: DemoPlan, seed: int) -> FinetuneConfig:
    """The `FinetuneConfig` of the plan: prompt masking and packing on, cosine schedule."""
    from instructkit.config import FinetuneConfig

    return FinetuneConfig(
        data=str(data.data_path),
        out=str(data.out_dir),
        model=plan.model,
        tokenizer=str(data.out_dir / "tokenizer"),
        style=STYLE,
        split="field",
        epochs=plan.epochs,
        max_steps=plan.max_steps,
        batch_size=plan.batch_size,
        lr=plan.lr,
        weight_decay=0.1,
        warmup_steps=plan.warmup_steps,
        lr_schedule="cosine",
        min_lr_ratio=0.1,
        grad_clip=1.0,
        allowed_max_length=plan.row_length,
        mask_prompt=True,
        pack=True,
        # the data module holds items out by what determines the answer, a stricter check
        # than text similarity (whose near misses, e.g. reversing "cat" and "cap", it allows)
        check_leakage=False,
        eval_every=plan.eval_every,
        eval_batches=len(data.val),  # the whole validation split (packing makes few batches)
        save_every=0,
        keep_checkpoints=1,
        seed=seed,
        device="cpu",
        precision=plan.precision,
    )


def answer_trained(data: DemoData, progress: bool) -> tuple[Any, list[dict]]:
    """The fine-tuned model and its responses, generated from the saved model/ as
    `instructkit generate --model RUN` would."""
    from instructkit.loading import load_for_generation

    model, tokenizer, style = load_for_generation(str(data.out_dir), device="cpu")
    return model, answer_test(model, tokenizer, style, data, "responses.json", progress, data.test)


def score(data: DemoData, untrained: dict) -> dict:
    """scores.json: the trained model's per-record scores, the untrained model's metrics and
    the trivial baselines' exact match per family (`instructkit.demo_baselines`)."""
    from instructkit.demo_baselines import baseline_scores
    from instructkit.evaluate import evaluate_responses

    out_dir = data.out_dir
    scores = evaluate_responses(out_dir / "responses.json", progress=False)
    scores["baselines"] = baseline_scores(data.train, data.test)
    scores["untrained"] = {
        "responses": str(out_dir / "untrained_responses.json"),
        "metrics": {key: value for key, value in untrained.items() if key != "per_record"},
    }
    write_json(out_dir / "scores.json", scores)
    return scores


def choose_plan(quick: bool, precision: str) -> DemoPlan:
    """The plan for `--quick` and `--precision` (fp32|bf16): the same steps either way."""
    if precision not in DEMO_PRECISIONS:
        raise UserError(f"precision: {precision!r} is not one of {', '.join(DEMO_PRECISIONS)}")
    return dataclasses.replace(QUICK if quick else FULL, precision=precision)


def claim_run_dir(out: Path, overwrite: bool) -> Path:
    """`out` if it is free (or `overwrite`), else the first free `out-2`, `out-3`, ...

    A directory is free when it does not exist or is empty; it is created here, so two
    demos started at once do not pick the same one.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another --out")
    if overwrite:
        out.mkdir(parents=True, exist_ok=True)
        for name in DEMO_ARTIFACTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        return out
    candidates = [out] + [out.with_name(f"{out.name}-{n}") for n in range(2, 10_000)]
    for candidate in candidates:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                return candidate
    raise UserError(f"{out}: no free run directory {out.name}-N left; pass --overwrite")


def pick_per_family(records: list[dict], per_family: int | None) -> list[dict]:
    """The first `per_family` records of each family, in file order (all when None)."""
    if per_family is None:
        return records
    taken: dict[str, int] = {}
    picked = []
    for record in records:
        family = record["family"]
        if taken.get(family, 0) < per_family:
            taken[family] = taken.get(family, 0) + 1
            picked.append(record)
    return picked
