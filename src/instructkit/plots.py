"""Figures instructkit writes: the token-length histogram of a dataset (and loss curves).

Plots use matplotlib's non-interactive Agg backend and are written atomically, so a
half-written PNG never replaces a good one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from instructkit.files import atomic_path


def plot_length_histogram(
    prompt_lengths: Sequence[int],
    response_lengths: Sequence[int],
    path: str | Path,
    max_length: int | None = None,
    title: str = "Token lengths",
) -> Path:
    """Histogram of prompt, response and total lengths; a line marks the length limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = [p + r for p, r in zip(prompt_lengths, response_lengths)]
    figure, axis = plt.subplots(figsize=(7, 4))
    top = max(totals + ([max_length] if max_length else []))
    bins = min(60, max(10, top // 8))
    for values, label in (
        (prompt_lengths, "prompt"),
        (response_lengths, "response"),
        (totals, "prompt + response"),
    ):
        axis.hist(values, bins=bins, range=(0, top), alpha=0.5, label=label)
    if max_length:
        axis.axvline(max_length, color="black", linestyle="--", label=f"limit {max_length}")
    axis.set_xlabel("tokens")
    axis.set_ylabel("records")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    return _save_figure(figure, Path(path))


def _save_figure(figure, path: Path) -> Path:
    """Save next to the target and rename into place; the figure is closed either way."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as temp:
            figure.savefig(temp, dpi=120, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(figure)
    return path


def plot_losses(metrics: Sequence[dict], path: str | Path, title: str = "Fine-tuning loss") -> Path:
    """The book's loss plot from metrics.jsonl rows: train and validation loss over epochs,
    with a twin x-axis of tokens seen (target tokens, as logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = [row for row in metrics if row.get("train_loss") is not None]
    val = [row for row in metrics if row.get("val_loss") is not None]
    margins = any("margin" in row for row in metrics)  # a preference (DPO) run
    if margins:
        figure, (axis, margin_axis) = plt.subplots(1, 2, figsize=(11, 3.5))
        plot_margins(margin_axis, metrics)
    else:
        figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r["epoch"] for r in train], [r["train_loss"] for r in train], label="Training loss")
    axis.plot(
        [r["epoch"] for r in val],
        [r["val_loss"] for r in val],
        linestyle="-.",
        marker="o",
        markersize=3,
        label="Validation loss",
    )
    axis.set_xlabel("Epochs")
    axis.set_ylabel("Loss")
    axis.set_title(title)
    axis.legend(loc="upper right")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    tokens_axis = axis.twiny()  # invisible plot, only to align the tokens-seen ticks
    tokens_axis.plot([r["tokens_seen"] for r in train], [r["train_loss"] for r in train], alpha=0)
    tokens_axis.set_xlabel("Pairs seen" if margins else "Tokens seen")  # the loss's units
    figure.tight_layout()
    return _save_figure(figure, Path(path))


def plot_margins(axis, metrics: Sequence[dict]) -> None:
    """DPO's reward margin (chosen minus rejected), training and validation, over epochs."""
    for key, label, style in (
        ("margin", "Training margin", "-"),
        ("val_margin", "Validation margin", "-."),
    ):
        rows = [row for row in metrics if row.get(key) is not None]
        axis.plot([r["epoch"] for r in rows], [r[key] for r in rows], linestyle=style, label=label)
    axis.axhline(0.0, color="grey", linewidth=0.5)
    axis.set_xlabel("Epochs")
    axis.set_ylabel("Reward margin")
    axis.set_title("Chosen minus rejected reward")
    axis.legend(loc="upper left")
