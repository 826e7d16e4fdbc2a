"""Checkpoints: round trip of model/optimizer/scheduler/RNG/position, atomic saves, pruning."""

from __future__ import annotations

import random

import pytest
import torch

from instructkit.errors import UserError
from instructkit.train import state
from instructkit.train.schedule import build_scheduler
from instructkit.train.state import (
    Position,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=3, schedule="cosine")
    return model, optimizer, scheduler


def train_step(model, optimizer, scheduler):
    loss = model(torch.randn(3, 4)).pow(2).sum()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_round_trip_continues_bitwise(tmp_path):
    model, optimizer, scheduler = make()
    for _ in range(2):
        train_step(model, optimizer, scheduler)
    path = save_checkpoint(
        tmp_path, Position(step=2, epoch=0, batch_index=2), model, optimizer, scheduler
    )
    assert path.name == "step-2"
    for _ in range(3):
        train_step(model, optimizer, scheduler)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, optimizer2, scheduler2 = make(seed=1)  # different init: must be overwritten
    position, rng = load_checkpoint(path, model2, optimizer2, scheduler2)
    set_rng_state(rng)
    assert position == Position(step=2, epoch=0, batch_index=2)
    assert scheduler2.last_epoch == 2
    for _ in range(3):
        train_step(model2, optimizer2, scheduler2)
    for a, b in zip(expected, model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()


def test_rng_states_round_trip():
    saved = rng_state()
    first = (random.random(), torch.rand(3))
    set_rng_state(saved)
    second = (random.random(), torch.rand(3))
    assert first[0] == second[0] and torch.equal(first[1], second[1])


def test_keeps_only_the_latest(tmp_path):
    model, optimizer, scheduler = make()
    for step in (1, 2, 3, 10):
        save_checkpoint(tmp_path, Position(step=step), model, optimizer, scheduler, keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-3", "step-10"]  # numeric order
    assert latest_checkpoint(tmp_path).name == "step-10"
    assert latest_checkpoint(tmp_path / "none") is None


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer, scheduler = make()
    save_checkpoint(tmp_path, Position(step=1), model, optimizer, scheduler)
    before = {p.name: p.stat().st_size for p in (tmp_path / "step-1").iterdir()}

    calls = []

    def dying_save(obj, handle):  # the process "dies" while writing the optimizer state
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        torch.save(obj, handle)

    def save_via(path, obj):
        with open(path, "wb") as handle:
            dying_save(obj, handle)

    monkeypatch.setattr(state, "_save", save_via)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, Position(step=2), model, optimizer, scheduler)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "step-1"
    assert {p.name: p.stat().st_size for p in (tmp_path / "step-1").iterdir()} == before
    assert not list(tmp_path.glob(".tmp-*"))  # an interrupted save removes its partial dir
    (tmp_path / ".tmp-step-2-999999999").mkdir()  # what a SIGKILLed process leaves, hidden
    save_checkpoint(tmp_path, Position(step=3), model, optimizer, scheduler)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1", "step-3"]  # cleaned up


def test_resaving_a_step_replaces_it(tmp_path):
    model, optimizer, scheduler = make()
    save_checkpoint(tmp_path, Position(step=4, tokens_seen=1), model, optimizer, scheduler)
    save_checkpoint(tmp_path, Position(step=4, tokens_seen=2), model, optimizer, scheduler)
    position, _ = load_checkpoint(tmp_path / "step-4", *make())
    assert position.tokens_seen == 2
    assert [p.name for p in tmp_path.iterdir()] == ["step-4"]


def test_mismatched_model_is_a_user_error(tmp_path):
    model, optimizer, scheduler = make()
    save_checkpoint(tmp_path, Position(step=1), model, optimizer, scheduler)
    other = torch.nn.Linear(4, 2)
    other_opt = torch.optim.AdamW(other.parameters())
    with pytest.raises(UserError, match="does not match this run's model"):
        load_checkpoint(tmp_path / "step-1", other, other_opt, build_scheduler(other_opt, 5))
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "step-9", model, optimizer, scheduler)
