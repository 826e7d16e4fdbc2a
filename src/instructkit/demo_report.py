"""report.md and the terminal summary of `instructkit demo`: what was run, on what, with
which numbers, the trained model's scores beside the untrained one's.

`facts` is the demo's record of its run (plan, counts, model config, `RunResult`, timings);
the scores are `compute_metrics` documents.
"""

from __future__ import annotations

from pathlib import Path

from instructkit.demo import REAL_GPT2_COMMAND, STYLE, DemoPlan
from instructkit.files import write_atomic

EXAMPLES_IN_REPORT = 1  # responses shown per family
PRECISION_TEXT = {
    "fp32": "fp32",
    "bf16": "bf16 autocast (`--precision bf16`: the same steps as fp32; the demo's scores in "
    "BENCHMARKS.md were measured in fp32)",
}


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
    baselines = facts["baselines"]
    width = max(len(row[0]) for row in rows)
    lines = [
        "",
        (
            f"Held-out {facts['held_out']} split ({trained['n']} records): exact match of the trained "
            "model, the best trivial baseline, the untrained model; ROUGE-L:"
        ),
        (
            f"  {'family':<{width}}  {'n':>4}  {'exact':>5}  {'baseline':>8}  {'untrained':>9}"
            f"  {'ROUGE-L':>7}"
        ),
    ]
    for family, n, em, em0, rl, _rl0 in rows:
        best = baselines.get(family, {}).get("best", 0.0)
        lines.append(
            f"  {family:<{width}}  {n:>4}  {em:>5.2f}  {best:>8.2f}  {em0:>9.2f}  {rl:>7.2f}"
        )
    lines += [
        "",
        (
            f"This {facts['parameters'] / 1e6:.1f}M-parameter model was trained from scratch, in "
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
    lines = [
        "# instructkit demo",
        "",
        "A small decoder trained **from scratch** on the built-in instruction dataset, with nothing",
        "downloaded: it shows the whole pipeline working (data, tokenizer, fine-tuning with",
        "prompt masking and packing, batched greedy generation, scoring). It is not a general",
        "instruction follower. To fine-tune a real GPT-2 where its weights can be downloaded:",
        "",
        f"    {REAL_GPT2_COMMAND}",
        "",
        "## What was run",
        "",
        *what_was_run(facts, len(trained.get("groups", {}))),
        "",
        "![loss](loss.png)",
        "",
        f"## Scores on the held-out {facts['held_out']} split",
        "",
        "Exact match and ROUGE-L F1 after normalisation (case, punctuation, spaces), for the",
        "fine-tuned model and for the same model before training (which answers the first",
        f"{facts['plan'].untrained_per_family} records of each family only).",
        "",
        *score_table(trained, untrained),
        "",
        "## Against trivial baselines",
        "",
        *baseline_table(trained, facts["baselines"]),
        "",
        "## Some responses",
        "",
        *example_table(trained_records, untrained_records),
        "",
        "## Files",
        "",
        "`data.json` (the records), `tokenizer/`, `config.yaml`, `metrics.jsonl`, `loss.png`,",
        (
            f"`checkpoints/`, `model/` (Hugging Face {layout_name(facts['model_config'])} "
            "layout: `instructkit chat --model RUN`),"
        ),
        "`responses.json` and `untrained_responses.json`, `scores.json` (per-record scores; the",
        "untrained model's under `untrained`).",
        "",
    ]
    write_atomic(path, "\n".join(lines))


def architecture(config) -> str:
    """What kind of decoder `config` builds, in words."""
    if getattr(config, "family", None):
        return f"{config.family}-style decoder (rotary positions, RMSNorm, SwiGLU)"
    return "GPT-2-style decoder (learned positions, LayerNorm, GELU)"


def layout_name(config) -> str:
    """The Hugging Face checkpoint layout `save_pretrained` writes for `config`."""
    from instructkit.model.decoder_config import FAMILIES

    family = getattr(config, "family", None)
    return FAMILIES[family][0].removesuffix("ForCausalLM") if family else "GPT-2"


def what_was_run(facts: dict, num_families: int) -> list[str]:
    """The report's bullet list: command, data, tokenizer, model, training, timings."""
    plan: DemoPlan = facts["plan"]
    run = facts["run"]
    config = facts["model_config"]
    n_train, n_val, n_test = facts["counts"]
    command = (
        "instructkit demo"
        + (" --quick" if facts["quick"] else "")
        + (f" --seed {facts['seed']}" if facts["seed"] else "")
        + (" --precision bf16" if plan.precision == "bf16" else "")
    )
    return [
        (
            f"- Command: `{command}` ({facts['elapsed_s']:.0f} s wall time on the CPU, "
            f"{facts['cpu_s']:.0f} s CPU time in {torch_threads()} threads)"
        ),
        (
            f"- Data: `data.json`, the built-in dataset (seed {facts['seed']}): {n_train} training, "
            f"{n_val} validation and {n_test} scored {facts['held_out']} records over "
            f"{num_families} task families; what determines a held-out answer (the word, its "
            "sorted letters, the set, the number) never occurs in its family's training records"
        ),
        (
            f"- Tokenizer: byte-level BPE with {facts['tokenizer_vocab']} tokens, trained on the "
            "training split"
            + (" and merging only within runs of letters" if plan.word_pieces else "")
            + " (`tokenizer/`)"
        ),
        (
            f"- Model: `{plan.model}`, {architecture(config)}, {facts['parameters']:,} parameters "
            f"({config.n_layers} layers, "
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
    ]


def score_table(trained: dict, untrained: dict) -> list[str]:
    lines = [
        "| family | n | exact match | untrained | ROUGE-L | untrained |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for family, n, em, em0, rl, rl0 in score_rows(trained, untrained):
        name = f"**{family}**" if family == "overall" else family
        lines.append(f"| {name} | {n} | {em:.2f} | {em0:.2f} | {rl:.2f} | {rl0:.2f} |")
    return lines


def baseline_table(trained: dict, baselines: dict) -> list[str]:
    """Exact match of the model beside what needs no learning: the majority training answer,
    the input copied, the nearest training prompt's answer, the family's one-line rule."""
    from instructkit.demo_baselines import RULES

    lines = [
        "Each held-out record is also answered without a model: the majority training answer of",
        "its family, its input copied, the answer of the training record whose item is most alike",
        "(character bigrams), and the family's one-line shortcut rule. Gain: the model's exact",
        "match minus the best of these.",
        "",
        "| family | model | majority | copy | nearest | rule | best baseline | gain |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for family, group in trained.get("groups", {}).items():
        base = baselines[family]
        rule = f"{base['rule']:.2f} ({RULES[family][0]})" if family in RULES else "- (none)"
        cells = [f"{base[name]:.2f}" for name in ("majority", "copy", "nearest")]
        gain = group["exact_match"] - base["best"]
        lines.append(
            f"| {family} | {group['exact_match']:.2f} | {' | '.join(cells)} | {rule} "
            f"| {base['best']:.2f} | {gain:+.2f} |"
        )
    overall = trained["exact_match"] - baselines["overall"]["best"]
    lines.append(
        f"| **overall** | {trained['exact_match']:.2f} | | | | | {baselines['overall']['best']:.2f} "
        f"| {overall:+.2f} |"
    )
    return lines


def example_table(trained_records: list[dict], untrained_records: list[dict]) -> list[str]:
    """The first `EXAMPLES_IN_REPORT` test records of each family, answered before and after."""
    lines = [
        "| family | instruction | expected | fine-tuned | untrained |",
        "|---|---|---|---|---|",
    ]
    shown: dict[str, int] = {}
    before_of = {(r["instruction"], r["input"]): r["model_response"] for r in untrained_records}
    for record in trained_records:
        family = record["family"]
        before = before_of.get((record["instruction"], record["input"]))
        if shown.get(family, 0) >= EXAMPLES_IN_REPORT or before is None:
            continue
        shown[family] = shown.get(family, 0) + 1
        prompt = record["instruction"] + (f" / {record['input']}" if record["input"] else "")
        cells = [
            family,
            prompt,
            record["output"],
            record["model_response"],
            before,
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return lines


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _cell(text: str, limit: int = 60) -> str:
    """Text fit for one Markdown table cell: one line, pipes escaped, long text cut, and
    control characters (an untrained model's byte tokens decode to NULs and the like) shown
    as escapes, so report.md stays text."""
    text = " ".join(text.split())
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
