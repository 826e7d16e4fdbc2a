"""The offline demo: the whole pipeline on built-in data and a small GPT trained from scratch.

No weights or datasets can be downloaded on an offline machine, so `instructkit demo`
shows the system working end to end on what code can make: it writes the built-in
instruction dataset (`instructkit.data.builtin`) into the run directory, trains a small
byte-level BPE tokenizer on its training split, builds a GPT from the `demo` preset,
fine-tunes it with the same `finetune` code path as `instructkit finetune` (prompt
masking and packing on), generates responses for the held-out test split with the same
`generate_responses` path as `instructkit generate` (batched, greedy), and scores them
with exact match and ROUGE-L per task family. The untrained model (same seed, the
weights training starts from) is scored the same way, for contrast. Everything lands in
the run directory of DESIGN.md, plus `report.md`.

It runs on the CPU with fixed seeds, so running it twice gives the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from instructkit.errors import UserError
from instructkit.files import write_atomic, write_json

# The book's exercise 7.1 prompts: half the tokens of its alpaca prompts for these short
# tasks, so each training step holds twice the examples (measured in BENCHMARKS.md).
STYLE = "phi3"
REAL_GPT2_COMMAND = "instructkit finetune --model gpt2-medium --data your.json --out runs/gpt2m"
# Files the demo writes besides the run artifacts that `finetune` manages.
DEMO_ARTIFACTS = ("data.json", "tokenizer", "untrained_responses.json")
EXAMPLES_IN_REPORT = 1  # responses shown per family
PRECISION_TEXT = {
    "fp32": "fp32",
    "bf16": "bf16 autocast (this CPU multiplies bf16 natively; elsewhere the demo runs fp32 "
    "and fewer steps)",
}
MAX_NEW_TOKENS_MARGIN = 8  # beyond the longest training answer, so a long answer is never cut


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
    precision: str = "fp32"
    """Training precision (`FinetuneConfig.precision`)."""


# About 8 minutes on two idle CPU cores without fast bf16, most of it the 2,400 steps (~6.5
# epochs of the 17,600 training records). Alternatives measured in BENCHMARKS.md ("Demo").
FULL = DemoPlan(
    model="random:demo",
    vocab_size=300,
    epochs=30,
    batch_size=8,
    row_length=256,
    lr=2e-3,
    warmup_steps=20,
    max_steps=2400,
    eval_every=200,
)
# Where the CPU multiplies bf16 natively (AVX-512 BF16, AMX), a step takes about 0.58 of
# the fp32 one, so the same minutes train 4,000 steps.
FULL_BF16 = dataclasses.replace(FULL, precision="bf16", max_steps=4000)
QUICK = DemoPlan(
    model="random:tiny",
    vocab_size=300,
    epochs=2,
    batch_size=8,
    row_length=128,
    lr=5e-3,
    warmup_steps=10,
    max_steps=200,
    eval_every=100,
    test_per_family=4,
)


@dataclass
class DemoResult:
    """What a demo run produced: where, the scores of the trained and untrained model, timing."""

    out_dir: Path
    trained: dict
    untrained: dict
    elapsed_s: float
    summary: str


def run_demo(
    out: str | Path = "runs/demo",
    *,
    quick: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
    plan: DemoPlan | None = None,
    precision: str = "auto",
) -> DemoResult:
    """Run the whole pipeline into a fresh run directory (or `out` itself with `overwrite`).

    precision: "auto" (bf16 where the CPU multiplies it natively, else fp32), "fp32" or
    "bf16"; the full demo's steps follow it (FULL or FULL_BF16).
    """
    from tqdm.auto import tqdm

    from instructkit.config import FinetuneConfig
    from instructkit.data import get_style, load_instructions, split_by_field
    from instructkit.data.builtin import write_builtin
    from instructkit.evaluate import compute_metrics, evaluate_responses
    from instructkit.model import load_pretrained
    from instructkit.model.loading import load_for_generation
    from instructkit.responses import generate_responses
    from instructkit.tokenizer import train_tokenizer
    from instructkit.train import finetune

    plan = plan or choose_plan(quick, precision)
    started, cpu_started = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    stages = tqdm(total=6, desc="demo", unit="stage", disable=not progress, dynamic_ncols=True)

    @contextlib.contextmanager
    def timed(name: str):
        """One stage of the demo: shown on the progress bar, its wall time kept for the report."""
        stages.set_postfix_str(name)
        start = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - start
        stages.update(1)

    with stages:
        with timed("data and tokenizer"):
            out_dir = claim_run_dir(Path(out), overwrite)
            data_path = out_dir / "data.json"
            write_builtin(data_path, seed=seed)
            records = load_instructions(data_path)
            train, test, val = split_by_field(records, str(data_path))  # as finetune splits it
            test = pick_per_family(test, plan.test_per_family)
            style = get_style(STYLE)
            tokenizer = train_tokenizer([style.text(record) for record in train], plan.vocab_size)
            tokenizer.save(out_dir / "tokenizer")
            max_new_tokens = MAX_NEW_TOKENS_MARGIN + max(
                len(tokenizer.encode(style.response(record))) for record in train
            )

        def answer_test(model, tokenizer, style, name: str) -> list[dict]:
            """The test records with `model`'s responses, saved as `name` in the run dir."""
            answered = generate_responses(
                model,
                tokenizer,
                style,
                test,
                batch_size=32,
                max_new_tokens=max_new_tokens,
                progress=progress,
            )
            write_json(out_dir / name, answered)
            return answered

        with timed("untrained responses"):
            untrained_model, _ = load_pretrained(plan.model, tokenizer=tokenizer, seed=seed)
            untrained_records = answer_test(
                untrained_model, tokenizer, style, "untrained_responses.json"
            )
            untrained = compute_metrics(untrained_records)
            del untrained_model

        with timed("fine-tuning"):
            config = FinetuneConfig(
                data=str(data_path),
                out=str(out_dir),
                model=plan.model,
                tokenizer=str(out_dir / "tokenizer"),
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
                eval_every=plan.eval_every,
                eval_batches=len(val),  # the whole validation split (packing makes few batches)
                save_every=0,
                keep_checkpoints=1,
                seed=seed,
                device="cpu",
                precision=plan.precision,
            )
            # The run dir is ours (claimed above); overwrite lets finetune write beside data.json.
            run = finetune(config, tokenizer=tokenizer, overwrite=True, progress=progress)

        with timed("trained responses"):
            # Generate from the saved model/, as `instructkit generate --model RUN` would.
            model, saved_tokenizer, saved_style = load_for_generation(str(out_dir), device="cpu")
            trained_records = answer_test(model, saved_tokenizer, saved_style, "responses.json")

        with timed("scores"):
            scores = evaluate_responses(out_dir / "responses.json", progress=False)
            scores["untrained"] = {
                "responses": str(out_dir / "untrained_responses.json"),
                "metrics": {key: value for key, value in untrained.items() if key != "per_record"},
            }
            write_json(out_dir / "scores.json", scores)

        with timed("report"):
            elapsed = time.perf_counter() - started
            facts = {
                "seed": seed,
                "quick": quick,
                "plan": plan,
                "counts": (len(train), len(val), len(test)),
                "tokenizer_vocab": tokenizer.vocab_size,
                "model_config": model.config,
                "parameters": sum(p.numel() for p in model.parameters()),
                "run": run,
                "max_new_tokens": max_new_tokens,
                "timings": dict(timings),
                "elapsed_s": elapsed,
                "cpu_s": time.process_time() - cpu_started,
            }
            write_report(
                out_dir / "report.md",
                facts,
                scores["metrics"],
                untrained,
                trained_records,
                untrained_records,
            )

    elapsed = time.perf_counter() - started
    return DemoResult(
        out_dir=out_dir,
        trained=scores["metrics"],
        untrained=scores["untrained"]["metrics"],
        elapsed_s=elapsed,
        summary=summary_text(out_dir, scores["metrics"], untrained, facts),
    )


def choose_plan(quick: bool, precision: str) -> DemoPlan:
    """The plan for `--quick` and `--precision` (auto|fp32|bf16)."""
    from instructkit.config import PRECISIONS

    if precision not in PRECISIONS:
        raise UserError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    bf16 = precision == "bf16" or (precision == "auto" and not quick and cpu_has_fast_bf16())
    if quick:
        return dataclasses.replace(QUICK, precision="bf16") if bf16 else QUICK
    return FULL_BF16 if bf16 else FULL


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (oneDNN's own check); False when unknown."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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


# ---- report.md and the terminal summary ------------------------------------------------


def score_rows(trained: dict, untrained: dict) -> list[tuple[str, int, float, float, float, float]]:
    """(family, n, exact trained, exact untrained, ROUGE-L trained, ROUGE-L untrained) rows,
    the families first, the overall row last."""
    rows = []
    for family, group in trained.get("groups", {}).items():
        other = untrained["groups"][family]
        rows.append(
            (
                family,
                group["n"],
                group["exact_match"],
                other["exact_match"],
                group["rouge_l"],
                other["rouge_l"],
            )
        )
    rows.append(
        (
            "overall",
            trained["n"],
            trained["exact_match"],
            untrained["exact_match"],
            trained["rouge_l"],
            untrained["rouge_l"],
        )
    )
    return rows


def summary_text(out_dir: Path, trained: dict, untrained: dict, facts: dict) -> str:
    """The few lines printed at the end of `instructkit demo`."""
    rows = score_rows(trained, untrained)
    width = max(len(row[0]) for row in rows)
    lines = [
        "",
        f"Held-out test split ({trained['n']} records), trained vs untrained model:",
        f"  {'family':<{width}}  {'n':>4}  {'exact match':>19}  {'ROUGE-L':>17}",
    ]
    for family, n, em, em0, rl, rl0 in rows:
        lines.append(
            f"  {family:<{width}}  {n:>4}  {em:>8.2f} (was {em0:.2f})  {rl:>6.2f} (was {rl0:.2f})"
        )
    lines += [
        "",
        (
            f"This {facts['parameters'] / 1e6:.1f}M-parameter GPT was trained from scratch, in "
            f"{facts['elapsed_s'] / 60:.1f} minutes on the CPU, on the built-in toy tasks only:"
        ),
        "it shows the pipeline working, it is not a general instruction follower.",
        "To fine-tune a real GPT-2 where its weights can be downloaded:",
        f"  {REAL_GPT2_COMMAND}",
        "",
        f"Run directory: {out_dir}   (try it: instructkit chat --model {out_dir})",
        (
            "  report.md (read this first), scores.json, responses.json, loss.png, model/, "
            "config.yaml"
        ),
    ]
    return "\n".join(lines)


def write_report(
    path: Path,
    facts: dict,
    trained: dict,
    untrained: dict,
    trained_records: list[dict],
    untrained_records: list[dict],
) -> None:
    """report.md: what was run, on what, with which numbers."""

    plan: DemoPlan = facts["plan"]
    run = facts["run"]
    config = facts["model_config"]
    n_train, n_val, n_test = facts["counts"]
    command = (
        "instructkit demo"
        + (" --quick" if facts["quick"] else "")
        + (f" --seed {facts['seed']}" if facts["seed"] else "")
    )
    lines = [
        "# instructkit demo",
        "",
        "A GPT trained **from scratch** on the built-in instruction dataset, with nothing",
        "downloaded: it shows the whole pipeline working (data, tokenizer, fine-tuning with",
        "prompt masking and packing, batched greedy generation, scoring). It is not a general",
        "instruction follower. To fine-tune a real GPT-2 where its weights can be downloaded:",
        "",
        f"    {REAL_GPT2_COMMAND}",
        "",
        "## What was run",
        "",
        (
            f"- Command: `{command}` ({facts['elapsed_s']:.0f} s wall time on the CPU, "
            f"{facts['cpu_s']:.0f} s CPU time in {torch_threads()} threads)"
        ),
        (
            f"- Data: `data.json`, the built-in dataset (seed {facts['seed']}): {n_train} training, "
            f"{n_val} validation and {n_test} scored test records over "
            f"{len(trained.get('groups', {}))} task families; test items never occur in training"
        ),
        (
            f"- Tokenizer: byte-level BPE with {facts['tokenizer_vocab']} tokens, trained on the "
            "training split (`tokenizer/`)"
        ),
        (
            f"- Model: `{plan.model}`, {facts['parameters']:,} parameters ({config.n_layers} layers, "
            f"{config.n_heads} heads, width {config.emb_dim}, context {config.context_length}), "
            f"{STYLE} prompts"
        ),
        (
            f"- Fine-tuning: {run.steps} steps ({run.epochs:.1f} epochs, {run.tokens_seen:,} "
            f"target tokens) of AdamW, lr {plan.lr:g} with {plan.warmup_steps} warmup steps and "
            f"cosine decay, {plan.batch_size} packed rows of {plan.row_length} tokens per step, "
            f"{PRECISION_TEXT[plan.precision]}, loss on the response tokens only; full settings "
            "in `config.yaml`"
        ),
        (
            f"- Loss: training {_fmt(run.initial_train_loss)} -> {_fmt(run.train_loss)}, "
            f"validation {_fmt(run.initial_val_loss)} -> {_fmt(run.val_loss)}"
        ),
        (
            f"- Generation: greedy, at most {facts['max_new_tokens']} new tokens, from the saved "
            "`model/`"
        ),
        "- Wall time per stage: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in facts["timings"].items()),
        "",
        "![loss](loss.png)",
        "",
        "## Scores on the held-out test split",
        "",
        "Exact match and ROUGE-L F1 after normalisation (case, punctuation, spaces), for the",
        "fine-tuned model and for the same model before training.",
        "",
        "| family | n | exact match | untrained | ROUGE-L | untrained |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for family, n, em, em0, rl, rl0 in score_rows(trained, untrained):
        name = f"**{family}**" if family == "overall" else family
        lines.append(f"| {name} | {n} | {em:.2f} | {em0:.2f} | {rl:.2f} | {rl0:.2f} |")
    lines += [
        "",
        "## Some responses",
        "",
        "| family | instruction | expected | fine-tuned | untrained |",
        "|---|---|---|---|---|",
    ]
    shown: dict[str, int] = {}
    for record, before in zip(trained_records, untrained_records, strict=True):
        family = record["family"]
        if shown.get(family, 0) >= EXAMPLES_IN_REPORT:
            continue
        shown[family] = shown.get(family, 0) + 1
        prompt = record["instruction"] + (f" / {record['input']}" if record["input"] else "")
        cells = [
            family,
            prompt,
            record["output"],
            record["model_response"],
            before["model_response"],
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines += [
        "",
        "## Files",
        "",
        "`data.json` (the records), `tokenizer/`, `config.yaml`, `metrics.jsonl`, `loss.png`,",
        "`checkpoints/`, `model/` (Hugging Face GPT-2 layout: `instructkit chat --model RUN`),",
        "`responses.json` and `untrained_responses.json`, `scores.json` (per-record scores; the",
        "untrained model's under `untrained`).",
        "",
    ]
    write_atomic(path, "\n".join(lines))


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _cell(text: str, limit: int = 60) -> str:
    """Text fit for one Markdown table cell: one line, pipes escaped, long text cut."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
