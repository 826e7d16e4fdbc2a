"""`instructkit finetune` end to end: every artifact of the run dir, config file + flags,
errors as one line and exit 2, --resume from the run dir alone, Ctrl-C saves and exits 130."""

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

from instructkit.cli import main
from instructkit.data import format_input
from instructkit.model import load_pretrained, read_metadata
from instructkit.tokenizer import train_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


FLAGS = [
    "--data",
    "--model",
    "--out",
    "--epochs",
    "--max-steps",
    "--batch-size",
    "--lr",
    "--weight-decay",
    "--allowed-max-length",
    "--style",
    "--tokenizer",
    "--mask-prompt",
    "--pack",
    "--group-by-length",
    "--grad-accum",
    "--warmup-steps",
    "--eval-every",
    "--save-every",
    "--seed",
    "--resume",
    "--lora-rank",
    "--lora-alpha",
    "--config",
    "--overwrite",
    "--grad-clip",
    "--lr-schedule",
    "--compile",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    rng = random.Random(0)
    records = []
    for _ in range(48):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        records.append(
            {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)}
        )
    directory = tmp_path_factory.mktemp("data")
    (directory / "records.json").write_text(json.dumps(records))
    train_tokenizer([format_input(r) + r["output"] for r in records], 300).save(directory / "tok")
    return directory / "records.json", directory / "tok"


def base_args(files, out) -> list[str]:
    data, tok = files
    return [
        "finetune", "--data", str(data), "--model", "random:tiny", "--tokenizer", str(tok),
        "--out", str(out), "--batch-size", "4", "--eval-batches", "2", "--quiet",
    ]  # fmt: skip


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text, flag
    assert "(default: 5e-05)" in text and "(default: 0.1)" in text and "(default: 8)" in text


def test_end_to_end_run_dir(files, tmp_path, capsys):
    out = tmp_path / "runs" / "lora"
    config = tmp_path / "settings.yaml"
    config.write_text("lr: 0.003\nmax_steps: 99\nmask_prompt: true\nlora_rank: 4\n")
    args = [*base_args(files, out), "--config", str(config), "--max-steps", "6"]
    code = main([*args, "--eval-every", "3", "--save-every", "2", "--lora-alpha", "8", "--pack"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Training loss:" in printed and "Validation loss:" in printed
    assert "Trainable parameters: 8,192 of" in printed  # LoRA: adapters only
    assert f"Run directory: {out}" in printed

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["max_steps"] == 6 and saved["lr"] == 0.003  # flag beats file beats default
    assert saved["mask_prompt"] and saved["pack"] and saved["lora_rank"] == 4
    assert saved["weight_decay"] == 0.1 and saved["data"] == str(files[0])

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(7))
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [0, 3, 6]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]
    assert json.loads((out / "checkpoints" / "step-6" / "position.json").read_text())["step"] == 6
    assert (out / "adapter.safetensors").stat().st_size < 100_000

    model, tokenizer = load_pretrained(out)  # the run dir resolves to its model/
    assert tokenizer is not None and tokenizer.vocab_size == 300
    assert read_metadata(out / "model") == {"style": "alpaca", "base_model": "random:tiny"}
    assert "lora" not in " ".join(name for name, _ in model.named_parameters())  # merged
    from instructkit.model.lora import load_adapter

    base, _ = load_pretrained("random:tiny", tokenizer=tokenizer, seed=123)
    ids = torch.tensor([tokenizer.encode(format_input({"instruction": "Add.", "input": "1 + 2"}))])
    adapted = load_adapter(base, out / "adapter.safetensors")
    torch.testing.assert_close(adapted(ids), model(ids), rtol=1e-4, atol=1e-5)


def test_resume_from_the_run_dir_alone(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*base_args(files, out), "--max-steps", "3", "--save-every", "2"]) == 0
    capsys.readouterr()
    assert main(["finetune", "--out", str(out), "--resume", "--max-steps", "5", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Resuming from" in printed and "step 3" in printed
    assert "Training loss:" not in printed
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 5


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--data", ""], "error: data: no instruction file given (use --data FILE)"),
        (["--model", "random:tiny", "--tokenizer", "none"], "comes without a tokenizer"),
        (["--batch-size", "0", "--epochs", "0"], "error: epochs: must be at least 1"),
        (["--config", "{cfg}"], "settings.yaml: unknown setting 'learning_rate'"),
        (["--data", "{missing}"], "missing.json"),
    ],
)
def test_errors_exit_2_with_one_line_each(files, tmp_path, capsys, extra, message):
    (tmp_path / "settings.yaml").write_text("learning_rate: 1\n")
    extra = [
        e.replace("{cfg}", str(tmp_path / "settings.yaml")).replace(
            "{missing}", str(tmp_path / "missing.json")
        )
        for e in extra
    ]
    assert main([*base_args(files, tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert all(line.startswith("error: ") for line in err.strip().splitlines())
    assert not (tmp_path / "run").exists()  # a failed setup leaves no run dir to refuse later


def test_refuses_a_used_run_dir(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*base_args(files, out), "--max-steps", "1"]) == 0
    assert main([*base_args(files, out), "--max-steps", "1"]) == 2
    assert "not empty; pass --resume" in capsys.readouterr().err
    assert main([*base_args(files, out), "--max-steps", "1", "--overwrite"]) == 0


def test_ctrl_c_saves_a_checkpoint_and_exits_130(files, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "INSTRUCTKIT_TEST_STEP_DELAY": "0.3", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "instructkit", *base_args(files, out), "--max-steps", "40"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 3:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()
    assert b"continue with --resume" in stdout
    (checkpoint,) = (out / "checkpoints").iterdir()  # save_every 100: only the Ctrl-C one
    step = json.loads((checkpoint / "position.json").read_text())["step"]
    assert 2 <= step < 40 and checkpoint.name == f"step-{step}"
    assert not (out / "model").exists()


# ---- signals: the checkpoint is saved whoever stops the run, and however ---------------


def start_slow_run(files, out, *extra, stdout=subprocess.PIPE, env_extra=None):
    env = {
        **os.environ,
        "INSTRUCTKIT_TEST_STEP_DELAY": "0.3",
        "OMP_NUM_THREADS": "1",
        **(env_extra or {}),
    }
    command = [sys.executable, "-m", "instructkit", *base_args(files, out), "--max-steps", "40"]
    return subprocess.Popen(
        [*command, *extra], env=env, stdout=stdout, stderr=subprocess.STDOUT, text=True
    )


def wait_for_rows(process, out, rows: int = 3) -> None:
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 120
    while not metrics.exists() or len(metrics.read_text().splitlines()) < rows:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)


def saved_step(out) -> int:
    (checkpoint,) = (out / "checkpoints").iterdir()  # save_every 100: only the stop's one
    step = json.loads((checkpoint / "position.json").read_text())["step"]
    assert 2 <= step < 40 and checkpoint.name == f"step-{step}"
    return step


def test_sigterm_saves_a_checkpoint_and_exits_143(files, tmp_path):
    out = tmp_path / "run"
    process = start_slow_run(files, out)
    wait_for_rows(process, out)
    process.send_signal(signal.SIGTERM)  # what `timeout`, `kill` and schedulers send
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 143, output
    assert "continue with --resume" in output and "Traceback" not in output
    saved_step(out)
    assert not (out / "model").exists()


def test_ctrl_c_when_the_pipe_reader_died_too_still_saves_and_exits_130(files, tmp_path):
    # `finetune ... 2>&1 | tee log`, then Ctrl-C: tee dies of the same signal, so every
    # write after it (the stop message, the progress bar) meets a broken pipe.
    out = tmp_path / "run"
    args = [a for a in base_args(files, out) if a != "--quiet"]  # the progress bar writes too
    env = {**os.environ, "INSTRUCTKIT_TEST_STEP_DELAY": "0.3", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "instructkit", *args, "--max-steps", "40"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for_rows(process, out)
    process.stdout.close()  # the reader dies ...
    process.send_signal(signal.SIGINT)  # ... with the same Ctrl-C
    assert process.wait(timeout=60) == 130
    saved_step(out)


def test_a_second_ctrl_c_during_the_save_exits_130_and_leaves_no_partial_checkpoint(
    files, tmp_path
):
    out = tmp_path / "run"
    process = start_slow_run(files, out, env_extra={"INSTRUCTKIT_TEST_SAVE_DELAY": "30"})
    wait_for_rows(process, out)
    process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while not list((out / "checkpoints").glob(".tmp-step-*")):  # the save has begun
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # impatient: abort the save
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "Traceback" not in output and output.rstrip().endswith("interrupted")
    assert list((out / "checkpoints").iterdir()) == []


# ---- one process per run dir, the same data on resume, a clean dir after divergence -----


def test_two_processes_racing_for_one_run_dir_one_wins_the_other_exits_2(files, tmp_path):
    out = tmp_path / "run"
    racers = [start_slow_run(files, out, "--overwrite") for _ in range(2)]
    outputs = [racer.communicate(timeout=180)[0] for racer in racers]
    by_code = {racer.returncode: (racer, output) for racer, output in zip(racers, outputs)}
    assert sorted(by_code) == [0, 2], outputs
    winner, loser_output = by_code[0][0], by_code[2][1]
    expected = (
        f"error: {out}: in use by instructkit process {winner.pid}; wait for it to finish "
        "or stop it (one process per run directory)"
    )
    assert loser_output.strip().splitlines() == [expected]
    rows = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(len(rows))) and len(rows) > 10  # one run's, not two interleaved
    assert not (out / ".lock").exists()  # released and removed at the end


def test_resume_on_changed_data_is_refused_with_the_reason(files, tmp_path, capsys):
    data, tok = files
    changed = tmp_path / "records.json"
    changed.write_text(data.read_text())
    out = tmp_path / "run"
    args = [*base_args((changed, tok), out), "--save-every", "1"]
    assert main([*args, "--max-steps", "2"]) == 0
    records = json.loads(changed.read_text())
    changed.write_text(json.dumps(records[:40]))  # edited in place: 48 -> 40 records
    capsys.readouterr()
    assert main(["finetune", "--out", str(out), "--resume", "--max-steps", "4", "--quiet"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {changed}: the data changed since {out} started")
    assert "48 records then, 40 now" in line
    changed.write_text(json.dumps(records))  # restored: resuming works again
    assert main(["finetune", "--out", str(out), "--resume", "--max-steps", "4", "--quiet"]) == 0


def test_divergence_before_any_checkpoint_leaves_nothing_a_retry_must_overwrite(
    files, tmp_path, capsys
):
    out = tmp_path / "run"
    assert main([*base_args(files, out), "--max-steps", "3", "--lr", "inf"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "loss became nan at step 2" in line and "none (no checkpoint yet)" in line
    assert not out.exists()  # as it found it
    assert main([*base_args(files, out), "--max-steps", "1"]) == 0  # no --overwrite needed

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main([*base_args(files, mine), "--max-steps", "3", "--lr", "inf", "--overwrite"]) == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_resuming_a_finished_run_reports_its_losses_and_a_fractional_epoch(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*base_args(files, out), "--max-steps", "3"]) == 0
    capsys.readouterr()
    assert main(["finetune", "--out", str(out), "--resume", "--quiet"]) == 0
    printed = capsys.readouterr().out
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 3 and 0 < last["epoch"] < 1
    assert f"(step 3, epoch {last['epoch']:.2f})" in printed
    assert f"final train loss {last['train_loss']:.3f}, val loss {last['val_loss']:.3f}" in printed
