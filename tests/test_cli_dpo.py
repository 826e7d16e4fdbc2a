"""`instructkit dpo` end to end: the run dir, preference accuracy rising on the training
pairs (measured apart from the run's own metrics), errors as one line and exit 2, and a
SIGKILLed run resumed bitwise identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from test_dpo import fresh_logps

from instructkit.cli import main
from instructkit.data import format_input, split_book
from instructkit.model import load_pretrained, read_metadata
from instructkit.tokenizer import load_tokenizer, train_tokenizer
from instructkit.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POLITE = ["Gladly: {}.", "Of course, it is {}.", "Happy to help: {}."]
RUDE = ["Whatever, {}", "Obviously {}, duh", "{}. Stop asking"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    rng = random.Random(0)
    records = []
    for _ in range(48):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        records.append(
            {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b),
             "chosen": rng.choice(POLITE).format(a + b), "rejected": rng.choice(RUDE).format(a + b)}
        )  # fmt: skip
    directory = tmp_path_factory.mktemp("data")
    (directory / "prefs.json").write_text(json.dumps(records))
    texts = [format_input(r) + r["chosen"] + r["rejected"] for r in records]
    train_tokenizer(texts, 300).save(directory / "tok")
    return directory / "prefs.json", directory / "tok", records


def base_args(files, out) -> list[str]:
    data, tok, _ = files
    return [
        "dpo", "--data", str(data), "--model", "random:tiny", "--tokenizer", str(tok),
        "--out", str(out), "--batch-size", "4", "--eval-batches", "2", "--quiet",
    ]  # fmt: skip


def test_help_lists_the_dpo_and_training_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["dpo", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--beta",
        "--loss",
        "--label-smoothing",
        "--lora-rank",
        "--resume",
        "--grad-accum",
    ):
        assert flag in text, flag
    assert "--pack" not in text and "--mask-prompt" not in text
    assert "(default: 0.1)" in text and "(default: 5e-06)" in text and "(default: sigmoid)" in text


def test_training_pairs_become_preferred(files, tmp_path, capsys):
    out = tmp_path / "run"
    code = main([*base_args(files, out), "--lr", "1e-3", "--epochs", "2", "--eval-every", "5"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"Run directory: {out}" in printed
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["beta"] == 0.1 and saved["loss"] == "sigmoid" and saved["lr"] == 0.001
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[0]["train_loss"] == pytest.approx(0.693147, abs=1e-4)  # policy = reference
    assert rows[-1]["accuracy"] > 0.8 and rows[-1]["val_accuracy"] > 0.8
    assert rows[-1]["margin"] == pytest.approx(
        rows[-1]["rewards/chosen"] - rows[-1]["rewards/rejected"]
    )
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_metadata(out / "model") == {"style": "alpaca", "base_model": "random:tiny"}

    # Measured apart from the run: the trained model's implicit reward prefers the chosen answers.
    _, tok, records = files
    tokenizer = load_tokenizer(tok)
    trained, _ = load_pretrained(out)
    start, _ = load_pretrained("random:tiny", tokenizer=tokenizer, seed=123)
    train_pairs, _, _ = split_book(records)
    correct = 0
    for record in train_pairs:
        chosen = fresh_logps(trained, tokenizer, record, record["chosen"]) - fresh_logps(
            start, tokenizer, record, record["chosen"]
        )
        rejected = fresh_logps(trained, tokenizer, record, record["rejected"]) - fresh_logps(
            start, tokenizer, record, record["rejected"]
        )
        correct += chosen > rejected
    assert correct / len(train_pairs) > 0.8, correct


def test_bad_pairs_exit_2_naming_file_and_record(files, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "chosen": "same", "rejected": "same"}]))
    assert main([*base_args(files, tmp_path / "run"), "--data", str(bad), "--beta", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: beta: must be positive, got 0.0" in err and "Traceback" not in err
    assert main([*base_args(files, tmp_path / "run"), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"error: {bad}: record index 0: chosen and rejected are identical; a pair must prefer one answer"
    )
    assert not (tmp_path / "run").exists()


RUNNER = """
import json, sys
from instructkit.config import DPOConfig, config_from_dict
from instructkit.train.dpo import dpo
config = config_from_dict(json.loads(sys.argv[1]), cls=DPOConfig)
dpo(config, resume=sys.argv[2] == "resume", progress=False)
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


def test_killed_and_resumed_run_is_bitwise_identical(files, tmp_path):
    from safetensors.torch import load_file

    data, tok, _ = files
    # 40 training pairs, 4 per micro-batch, 2 micro-batches a step: 5 steps an epoch; the
    # kill after step 3 is mid-epoch and the resumed run crosses into epoch 2.
    common = {
        "data": str(data), "tokenizer": str(tok), "model": "random:tiny", "batch_size": 4,
        "grad_accum": 2, "epochs": 2, "max_steps": 7, "eval_every": 3, "eval_batches": 1, "save_every": 3,
        "dropout": 0.1, "lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 2,
    }  # fmt: skip
    out = tmp_path / "b"
    straight = start_run({**common, "out": str(tmp_path / "a")}, "fresh")
    killed = start_run({**common, "out": str(out)}, "fresh", delay=0.5)
    deadline = time.monotonic() + 180
    while not (out / "checkpoints" / "step-3").exists():
        assert killed.poll() is None and time.monotonic() < deadline, killed.stdout.read()
        time.sleep(0.05)
    while len(read_metrics(out / "metrics.jsonl")) < 5:  # a step past the checkpoint
        assert killed.poll() is None and time.monotonic() < deadline, killed.stdout.read()
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    reference = (out / "reference_logps.safetensors").stat().st_mtime_ns
    assert straight.wait(timeout=180) == 0, straight.stdout.read()
    resumed = start_run({**common, "out": str(out)}, "resume")
    assert resumed.wait(timeout=180) == 0, resumed.stdout.read()
    assert (out / "reference_logps.safetensors").stat().st_mtime_ns == reference  # not redone

    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(out / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_a = [
        {k: v for k, v in r.items() if k != "tokens_per_s"}
        for r in read_metrics(tmp_path / "a" / "metrics.jsonl")
    ]
    rows_b = [
        {k: v for k, v in r.items() if k != "tokens_per_s"}
        for r in read_metrics(out / "metrics.jsonl")
    ]
    assert rows_a == rows_b and len(rows_a) == 8
    assert "val_margin" in rows_b[3] and "accuracy" in rows_b[7]


def test_resume_on_changed_pairs_is_refused_and_a_diverged_run_leaves_nothing(
    files, tmp_path, capsys
):
    _, tok, records = files
    changed = tmp_path / "prefs.json"
    changed.write_text(json.dumps(records))
    out = tmp_path / "run"
    assert (
        main([*base_args((changed, tok, records), out), "--max-steps", "2", "--save-every", "1"])
        == 0
    )
    changed.write_text(json.dumps(records[:40]))
    capsys.readouterr()
    assert main(["dpo", "--out", str(out), "--resume", "--max-steps", "4", "--quiet"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {changed}: the data changed since {out} started")
    assert "48 records then, 40 now" in line

    diverged = tmp_path / "diverged"
    assert main([*base_args(files, diverged), "--max-steps", "3", "--lr", "inf"]) == 2
    assert "none (no checkpoint yet)" in capsys.readouterr().err
    assert not diverged.exists()  # as it found it: a retry needs no --overwrite
