"""loss.png is the book's plot: losses over epochs, with a twin x-axis of tokens seen."""

from __future__ import annotations

import matplotlib.figure
import pytest

from instructkit.plots import plot_losses

ROWS = [
    {"step": 0, "epoch": 0.0, "tokens_seen": 0, "train_loss": 4.0, "val_loss": 4.1},
    {"step": 1, "epoch": 0.5, "tokens_seen": 300, "train_loss": 3.0, "val_loss": None},
    {"step": 2, "epoch": 1.0, "tokens_seen": 700, "train_loss": 2.5, "val_loss": 2.9},
    {"step": 3, "epoch": 1.5, "tokens_seen": 1000, "train_loss": 2.0, "val_loss": None},
    {"step": 4, "epoch": 2.0, "tokens_seen": 1300, "train_loss": 1.5, "val_loss": 2.2},
]


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures plot_losses saves, inspected before matplotlib closes them."""
    figures = []
    savefig = matplotlib.figure.Figure.savefig

    def record(figure, *args, **kwargs):
        figures.append(figure)
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return figures


def test_loss_plot_has_epochs_and_a_tokens_seen_twin_axis(tmp_path, saved_figures):
    path = plot_losses(ROWS, tmp_path / "loss.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    (figure,) = saved_figures
    by_label = {axis.get_xlabel(): axis for axis in figure.axes}
    assert set(by_label) == {"Epochs", "Tokens seen"}
    epochs, tokens = by_label["Epochs"], by_label["Tokens seen"]
    assert epochs.get_ylabel() == "Loss"
    # twiny: the tokens axis shares the loss axis' y and sits on the same plot area
    assert tokens.get_shared_y_axes().joined(tokens, epochs)
    assert tokens.get_position().bounds == pytest.approx(epochs.get_position().bounds)

    lines = {line.get_label(): line for line in epochs.get_lines()}
    train, val = lines["Training loss"], lines["Validation loss"]
    assert list(train.get_xdata()) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert list(train.get_ydata()) == [4.0, 3.0, 2.5, 2.0, 1.5]
    assert list(val.get_xdata()) == [0.0, 1.0, 2.0]
    assert list(val.get_ydata()) == [4.1, 2.9, 2.2]
    (hidden,) = tokens.get_lines()  # invisible, there to scale the tokens axis
    assert list(hidden.get_xdata()) == [0, 300, 700, 1000, 1300]
    assert list(hidden.get_ydata()) == [4.0, 3.0, 2.5, 2.0, 1.5]
    low, high = tokens.get_xlim()
    assert low <= 0 and high >= 1300
