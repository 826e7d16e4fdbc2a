"""FSDP2 and DDP under torchrun on the CPU (gloo): 2 ranks of batch 4 train the weights 1
process of batch 8 trains; sharded checkpoints resume at another world size; the final
model/ is one consolidated directory transformers loads; a killed rank fails the job."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instructkit.data import format_input
from instructkit.tokenizer import train_tokenizer

RUNNER = """
import json, os, signal, sys, threading, time
from pathlib import Path
from instructkit.config import config_from_dict
from instructkit.train import finetune

values = json.loads(sys.argv[1])
if os.environ.get("KILL_RANK", "-") == os.environ.get("RANK"):  # die by SIGKILL after 2 steps
    def kill_later():
        metrics = Path(values["out"]) / "metrics.jsonl"
        while not metrics.exists() or len(metrics.read_text().splitlines()) < 3:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=kill_later, daemon=True).start()
finetune(config_from_dict(values), resume=bool(os.environ.get("RESUME")), progress=False)
"""
TOLERANCE = 5e-4  # float rounding amplified by AdamW over 6 steps; another data order: ~1e-2
TIMEOUT = 300


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdp")
    rng = random.Random(0)
    records = []
    for _ in range(48):  # the book split leaves 40 for training: 5 global batches of 8
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        records.append(
            {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)}
        )
    (root / "records.json").write_text(json.dumps(records))
    train_tokenizer([format_input(r) + r["output"] for r in records], 300).save(root / "tok")
    (root / "runner.py").write_text(RUNNER)
    return root


def config(root: Path, out: str, **overrides) -> dict:
    return {
        "data": str(root / "records.json"),
        "tokenizer": str(root / "tok"),
        "model": "random:tiny",
        "out": str(root / out),
        "lr": 1e-3,
        "max_steps": 6,  # crosses into the second epoch at step 5
        "eval_every": 3,
        "eval_batches": 1,
        "save_every": 3,
        "device": "cpu",
        "batch_size": 8,
        "strategy": "fsdp",
        **overrides,
    }


def launch(root: Path, values: dict, ranks: int, **env) -> subprocess.CompletedProcess:
    command = [sys.executable, str(root / "runner.py"), json.dumps(values)]
    if ranks > 1:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*torchrun, "--nproc_per_node", str(ranks), *command[1:]]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        command, env=environ, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def run_ok(root: Path, values: dict, ranks: int, **env) -> Path:
    done = launch(root, values, ranks, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(values["out"])


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = weights(a), weights(b)
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=0, atol=TOLERANCE, msg=name)


@pytest.fixture(scope="module")
def single(setup_dir) -> Path:
    """The reference: 1 process, batch 8, 6 uninterrupted steps (step-3 checkpoint kept)."""
    return run_ok(setup_dir, config(setup_dir, "single"), ranks=1)


@pytest.fixture(scope="module")
def fsdp_two(setup_dir) -> Path:
    return run_ok(setup_dir, config(setup_dir, "fsdp2", batch_size=4), ranks=2)


def test_fsdp_two_ranks_train_the_weights_of_one_process(single, fsdp_two):
    assert_same_weights(single, fsdp_two)
    state = fsdp_two / "checkpoints" / "step-6" / "state"
    assert len(list(state.glob("*.distcp"))) == 2  # each rank wrote its shard
    rows = [json.loads(line) for line in (fsdp_two / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens_seen"] for r in rows] == [r["tokens_seen"] for r in reference]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1  # it trained


def test_model_dir_is_consolidated_and_loads_in_transformers(fsdp_two):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(fsdp_two / "model")
    saved = weights(fsdp_two)
    torch.testing.assert_close(model.transformer.wte.weight, saved["transformer.wte.weight"])
    assert not list((fsdp_two / "model").glob("*.distcp"))  # one file, not shards


def test_ddp_two_ranks_train_the_weights_of_one_process(setup_dir, single):
    # a single process trains the same with either strategy (only checkpoints differ)
    values = config(setup_dir, "ddp2", batch_size=4, strategy="ddp", save_every=0)
    assert_same_weights(single, run_ok(setup_dir, values, ranks=2))


def truncated_copy(run: Path, to: Path) -> Path:
    """`run` as it was after its step-3 checkpoint (as if killed there)."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "checkpoints" / "step-6")
    shutil.rmtree(to / "model")
    return to


def test_written_by_two_ranks_resumed_by_one_process_via_the_cli(setup_dir, single, fsdp_two):
    run = truncated_copy(fsdp_two, setup_dir / "two_then_one")
    command = [sys.executable, "-m", "instructkit", "finetune", "--out", str(run), "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    refused = subprocess.run(
        [*command, "--quiet"], env=env, capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2 and "batch_size" in refused.stderr  # global batch 4 != 8
    done = subprocess.run(
        [*command, "--batch-size", "8", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming from" in done.stdout and "step 3" in done.stdout
    assert_same_weights(single, run)


def test_written_by_one_process_resumed_by_two_ranks(setup_dir, single):
    run = truncated_copy(single, setup_dir / "one_then_two")
    values = config(setup_dir, "one_then_two", batch_size=4)
    run_ok(setup_dir, values, ranks=2, RESUME="1")
    assert_same_weights(single, run)


def test_a_killed_rank_fails_the_job_without_hanging(setup_dir):
    values = config(setup_dir, "killed", batch_size=4, max_steps=50, save_every=0)
    done = launch(setup_dir, values, ranks=2, KILL_RANK="1", INSTRUCTKIT_TEST_STEP_DELAY="0.2")
    assert done.returncode != 0
    assert "rank" in done.stderr and ("SIGKILL" in done.stderr or "-9" in done.stderr)
    assert not (Path(values["out"]) / "model").exists()


def test_activation_checkpointing_gives_the_same_gradients():
    from instructkit.model import GPTConfig, GPTModel
    from instructkit.train.fsdp import checkpoint_activations

    config = GPTConfig(vocab_size=50, context_length=16, emb_dim=16, n_heads=2, n_layers=2)
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = GPTModel(config)
        if recompute:
            checkpoint_activations(model)
        calls: list[int] = []
        model.h[0].attn.register_forward_pre_hook(lambda *args, calls=calls: calls.append(1))
        model.loss(ids[:, :-1], ids[:, 1:]).backward()
        assert len(calls) == (2 if recompute else 1)  # recomputed in backward
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()  # parameter names unchanged
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
