"""The training loop: schedule, exact loss over accumulated micro-batches, a real run,
bitwise resume after SIGKILL, NaN stop, run-dir protection."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from shared_data import SHARED_DATA

from instructkit import loading
from instructkit.config import FinetuneConfig
from instructkit.data import (
    InstructionCollator,
    InstructionDataset,
    PackedBatchSampler,
    format_input,
    split_book,
)
from instructkit.errors import UserError
from instructkit.model import GPTConfig, GPTModel
from instructkit.tokenizer import train_tokenizer
from instructkit.train import DivergedError, finetune, loop
from instructkit.train.distributed import Dist
from instructkit.train.metrics import read_metrics
from instructkit.train.schedule import lr_factor
from instructkit.train.steps import LossModule, accumulate_gradients, evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def addition_records(n: int = 48, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        records.append(
            {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)}
        )
    return records


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return addition_records()


@pytest.fixture(scope="module")
def tokenizer(records):
    return train_tokenizer([format_input(r) + r["output"] for r in records], vocab_size=300)


@pytest.fixture(scope="module")
def data_files(records, tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    """The records as a JSON file and the tokenizer as a directory, for subprocess runs."""
    directory = tmp_path_factory.mktemp("data")
    (directory / "records.json").write_text(json.dumps(records))
    tokenizer.save(directory / "tokenizer")
    return directory / "records.json", directory / "tokenizer"


def tiny_config(out: Path, **overrides) -> FinetuneConfig:
    values = {
        "data": "memory",
        "out": str(out),
        "model": "random:tiny",
        "batch_size": 4,
        "lr": 3e-3,
        "max_steps": 6,
        "eval_every": 3,
        "eval_batches": 2,
        "save_every": 3,
    }
    values.update(overrides)
    return FinetuneConfig(**values)


# ---- schedule ---------------------------------------------------------------------------


def test_schedule_warmup_then_cosine():
    assert [lr_factor(s, 10) for s in range(10)] == [1.0] * 10  # the book: constant
    warm = [
        lr_factor(s, 10, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1) for s in range(11)
    ]
    assert warm[:4] == [0.25, 0.5, 0.75, 1.0]
    assert warm[4] == 1.0 and warm[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(warm[4:]))  # decays monotonically
    assert warm[7] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


# ---- the loss of an accumulated step ----------------------------------------------------


@pytest.mark.parametrize("mask_prompt,pack", [(False, False), (True, False), (True, True)])
def test_accumulated_micro_batches_equal_one_big_batch(records, tokenizer, mask_prompt, pack):
    examples = InstructionDataset(records[:8], tokenizer).examples
    collator = InstructionCollator(
        tokenizer.eos_id, allowed_max_length=128, mask_prompt=mask_prompt, pack=pack
    )
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(tokenizer.vocab_size, 128, 32, 2, 2))
    module = LossModule(model)

    def gradients(micro):
        model.zero_grad()
        loss, tokens, _ = accumulate_gradients(
            module, micro, Dist(), torch.device("cpu"), nullcontext()
        )
        return loss / tokens, [p.grad.clone() for p in model.parameters()]

    one_loss, one = gradients([collator(examples)])
    four_loss, four = gradients([collator(examples[i : i + 2]) for i in range(0, 8, 2)])
    assert four_loss == pytest.approx(one_loss, rel=1e-6)
    for a, b in zip(one, four, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

    # The book's way (mean per micro-batch, averaged) gives a different gradient whenever
    # micro-batches hold different numbers of target tokens: the test can tell them apart.
    model.zero_grad()
    for i in range(0, 8, 2):
        batch = collator(examples[i : i + 2])
        (
            model.loss(batch.input_ids, batch.targets, batch.position_ids, batch.segment_ids) / 4
        ).backward()
    book = [p.grad.clone() for p in model.parameters()]
    assert not all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(one, book))


# ---- a run through the library entry ----------------------------------------------------


def test_initial_losses_read_as_many_training_batches_as_the_validation_split_has(
    records, tokenizer, tmp_path, monkeypatch
):
    """An `eval_batches` beyond the validation split (the demo asks for all of it) must not
    turn the step-0 training loss into a long pass over the much larger training split."""
    drawn: list[int] = []

    def counting_evaluate(objective, loader, num_batches, *args, **kwargs):
        def counted():
            for batch in loader:
                drawn[-1] += 1
                yield batch

        drawn.append(0)
        return evaluate(objective, counted(), num_batches, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", counting_evaluate)
    config = tiny_config(tmp_path / "run", max_steps=1, eval_every=0, eval_batches=1000)
    finetune(config, records=records, tokenizer=tokenizer, progress=False)
    train_batches, val_batches = drawn[:2]
    assert 1 <= val_batches < 10  # the whole (small) validation split
    assert train_batches == val_batches


def test_finetune_learns_and_logs(records, tokenizer, tmp_path, capsys):
    config = tiny_config(
        tmp_path / "run", max_steps=12, eval_every=4, save_every=5, keep_checkpoints=2
    )
    result = finetune(config, records=records, tokenizer=tokenizer, progress=False)
    printed = capsys.readouterr().out
    assert "Training loss:" in printed and "Validation loss:" in printed

    assert result.steps == 12 and result.model_dir == tmp_path / "run" / "model"
    assert result.train_loss < result.initial_train_loss - 0.5  # it learns
    assert result.val_loss < result.initial_val_loss
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(13))
    assert set(rows[1]) == {
        "step",
        "epoch",
        "tokens_seen",
        "records_seen",
        "train_loss",
        "val_loss",
        "lr",
        "tokens_per_s",
    }
    assert [row["step"] for row in rows if row["val_loss"] is not None] == [0, 4, 8, 12]
    # 40 training records / batch 4 = 10 batches per epoch: step 12 is 1.2 epochs
    assert rows[-1]["epoch"] == pytest.approx(1.2)
    assert rows[-1]["tokens_seen"] == result.tokens_seen > 0
    assert rows[-1]["records_seen"] == 12 * 4  # 12 steps of batch 4
    assert all(row["tokens_per_s"] > 0 for row in rows[1:])
    assert rows[1]["lr"] == 3e-3
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-10", "step-12"]  # every 5, the end, keep the last 2


def test_packed_epochs_with_fewer_batches_than_the_first_still_train_every_step(
    tokenizer, tmp_path
):
    # Packing reshuffled examples gives epochs 1 and 3 of this data one batch fewer than
    # epoch 0; the loop once ran out of batches there and took empty steps to the end.
    rng = random.Random(38)
    records = [
        {"instruction": "Repeat.", "input": "", "output": "ab " * rng.randint(1, 25)}
        for _ in range(48)
    ]
    train, _test, _val = split_book(records)
    lengths = [len(e) for e in InstructionDataset(train, tokenizer, style="phi3").examples]
    sampler = PackedBatchSampler(lengths, capacity=128, rows_per_batch=2, seed=123, drop_last=True)
    per_epoch = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        per_epoch.append(len(sampler))
    assert per_epoch == [10, 9, 10, 9]  # the case this test is about

    config = tiny_config(
        tmp_path / "run",
        style="phi3",
        pack=True,
        batch_size=2,
        allowed_max_length=128,
        max_steps=None,
        epochs=4,
        eval_every=0,
        save_every=0,
        seed=123,
    )
    finetune(config, records=records, tokenizer=tokenizer, progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 1 + 4 * 10
    assert all(b["tokens_seen"] > a["tokens_seen"] for a, b in itertools.pairwise(rows))
    assert rows[-1]["records_seen"] > 3 * len(train)  # epochs 0-2 whole, then into epoch 3


def test_bf16_autocast_on_the_cpu_trains_close_to_fp32(tmp_path):
    """`--precision auto` picks bf16 on CPUs that have it: its loss curve on the book's data
    stays within 2% of fp32's over 200 steps (windows of 20 steps, a small model)."""
    book_file = SHARED_DATA / "instruction-data.json"
    if not book_file.exists():
        pytest.skip(f"{book_file} not found (the book's instruction data)")
    records = json.loads(book_file.read_text(encoding="utf-8"))
    tokenizer = train_tokenizer([format_input(r) + r["output"] for r in records], vocab_size=400)
    curves = {}
    for precision in ("fp32", "bf16"):
        config = tiny_config(
            tmp_path / precision,
            precision=precision,
            device="cpu",
            max_steps=200,
            lr=1e-3,
            eval_every=0,
            save_every=0,
            log_every=20,
            allowed_max_length=128,
        )
        finetune(config, records=records, tokenizer=tokenizer, progress=False)
        curves[precision] = [
            row["train_loss"]
            for row in read_metrics(tmp_path / precision / "metrics.jsonl")
            if row["step"] > 0
        ]
    assert len(curves["fp32"]) == 10
    assert curves["fp32"][-1] < curves["fp32"][0] - 1.0  # it learns
    for fp32, bf16 in zip(curves["fp32"], curves["bf16"], strict=True):
        assert bf16 == pytest.approx(fp32, rel=0.02)


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_follows_the_cpus_bf16(
    records, tokenizer, tmp_path, capsys, monkeypatch, native
):
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: native)
    seen = []
    monkeypatch.setattr(torch, "autocast", lambda *a, **kw: seen.append(kw) or nullcontext())
    config = tiny_config(tmp_path / "run", device="cpu", max_steps=1, eval_every=0, save_every=0)
    finetune(config, records=records, tokenizer=tokenizer, progress=False)
    assert seen[0]["enabled"] is native
    expected = (
        "bf16 autocast (this CPU multiplies bf16 natively"
        if native
        else "fp32 (this CPU has no native bf16"
    )
    assert f"Precision: {expected}" in capsys.readouterr().out


def test_finetune_warns_when_test_records_copy_training_records(
    records, tokenizer, tmp_path, capsys
):
    leaky = [dict(r, split="train") for r in records[:40]]
    leaky += [
        dict(records[0], split="test"),
        dict(records[41], split="test"),
        dict(records[42], split="val"),
    ]
    finetune(
        tiny_config(tmp_path / "a", split="field", max_steps=1),
        records=leaky,
        tokenizer=tokenizer,
        progress=False,
    )
    assert (
        "Warning: 1 of 2 test and 0 of 1 validation records nearly copy a training record"
        in capsys.readouterr().out
    )
    config = tiny_config(tmp_path / "b", split="field", max_steps=1, check_leakage=False)
    finetune(config, records=leaky, tokenizer=tokenizer, progress=False)
    assert "nearly copy" not in capsys.readouterr().out


def test_refuses_a_non_empty_run_dir(records, tokenizer, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty; pass --resume .* or --overwrite"):
        finetune(
            tiny_config(out, max_steps=1), records=records, tokenizer=tokenizer, progress=False
        )
    with pytest.raises(UserError, match="nothing to resume"):
        finetune(tiny_config(out, max_steps=1), records=records, tokenizer=tokenizer, resume=True)
    finetune(
        tiny_config(out, max_steps=1),
        records=records,
        tokenizer=tokenizer,
        overwrite=True,
        progress=False,
    )
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces run artifacts only
    with pytest.raises(UserError, match=r"cannot resume with a different setting \(lr:"):
        finetune(
            tiny_config(out, max_steps=2, lr=1.0), records=records, tokenizer=tokenizer, resume=True
        )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(records, tokenizer, tmp_path):
    # lr 1e30 makes the first update explode the weights: step 2's loss is not finite
    config = tiny_config(tmp_path / "run", lr=1e30, save_every=1, eval_every=0)
    with pytest.raises(DivergedError, match=r"at step 2; .* checkpoint is .*step-1"):
        finetune(config, records=records, tokenizer=tokenizer, progress=False)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-1"]


# ---- exact resume -----------------------------------------------------------------------

RUNNER = """
import json, sys
from instructkit.config import config_from_dict
from instructkit.train import finetune
finetune(config_from_dict(json.loads(sys.argv[1])), resume=sys.argv[2] == "resume", progress=False)
"""


def start_run(config: dict, mode: str, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "INSTRUCTKIT_TEST_STEP_DELAY": str(delay), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, json.dumps(config), mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def test_killed_and_resumed_run_is_bitwise_identical(data_files, tmp_path):
    data, tokenizer_dir = data_files
    # 10 micro-batches = 5 steps per epoch: the kill after step 3 is mid-epoch and the
    # resumed run crosses into epoch 2; dropout, grad accumulation and a schedule make the
    # RNG state, the data position and the scheduler matter.
    common = {
        "data": str(data),
        "tokenizer": str(tokenizer_dir),
        "model": "random:tiny",
        "batch_size": 4,
        "grad_accum": 2,
        "max_steps": 8,
        "eval_every": 4,
        "eval_batches": 1,
        "save_every": 3,
        "dropout": 0.1,
        "lr": 3e-3,
        "lr_schedule": "cosine",
        "warmup_steps": 2,
    }
    out = tmp_path / "b"
    straight = start_run({**common, "out": str(tmp_path / "a")}, "fresh")
    killed = start_run({**common, "out": str(out)}, "fresh", delay=0.5)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step-3").exists():
        assert killed.poll() is None and time.monotonic() < deadline, killed.stdout.read()
        time.sleep(0.05)
    while len(read_metrics(out / "metrics.jsonl")) < 5:  # a step past the checkpoint ...
        assert killed.poll() is None and time.monotonic() < deadline, killed.stdout.read()
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)  # ... which the resumed run must discard and redo
    killed.wait()
    assert not (out / "model").exists()
    assert straight.wait(timeout=120) == 0, straight.stdout.read()
    resumed = start_run({**common, "out": str(out)}, "resume")
    assert resumed.wait(timeout=120) == 0, resumed.stdout.read()

    a, b = final_weights(tmp_path / "a"), final_weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    keys = ("step", "epoch", "tokens_seen", "train_loss", "val_loss", "lr")
    rows_a = [{k: row[k] for k in keys} for row in read_metrics(tmp_path / "a" / "metrics.jsonl")]
    rows_b = [{k: row[k] for k in keys} for row in read_metrics(out / "metrics.jsonl")]
    assert rows_a == rows_b and len(rows_a) == 9
