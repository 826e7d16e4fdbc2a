"""The training loop against references written out here, not against its own helpers.

A step's gradient is compared with autograd of the mean cross-entropy over every target
token of the step, computed record by record from the token ids with a hand-written
log-softmax; `--grad-clip` with `torch.nn.utils.clip_grad_norm_` on a copy of that
reference; bf16 with the autocast state and dtypes seen inside the forward; resume at an
epoch boundary with an uninterrupted run. Gradients are read in a global optimizer
step pre-hook, so the tests do not depend on how the loop is split into functions.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from instructkit.cli import main
from instructkit.config import FinetuneConfig
from instructkit.data import format_input
from instructkit.model import GPTModel
from instructkit.tokenizer import train_tokenizer
from instructkit.train import finetune

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_loss_plot")


@pytest.fixture
def no_loss_plot(monkeypatch):
    """loss.png takes matplotlib seconds per run and is tested in test_plots.py."""

    def skip(rows, path, **kwargs):
        return Path(path)

    monkeypatch.setattr("instructkit.plots.plot_losses", skip)
    monkeypatch.setattr("instructkit.train.loop.plot_losses", skip, raising=False)


RESPONSE_HEADER = "\n\n### Response:\n"  # the book's, section 7.2


def addition_records(n_train: int, n_val: int = 2, seed: int = 0) -> list[dict]:
    """Records whose `split` field fixes the training set: a step over all of them sees
    every training record exactly once, whatever order the loader picks."""
    rng = random.Random(seed)
    records = []
    for i in range(n_train + n_val):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        records.append(
            {
                "instruction": "Add the two numbers." if i % 2 else "What is the sum?",
                "input": f"{a} + {b}",
                "output": f"{a} + {b} = {a + b}" if i % 3 else str(a + b),
                "split": "train" if i < n_train else "val",
            }
        )
    return records


@pytest.fixture(scope="module")
def tokenizer():
    texts = [format_input(r) + RESPONSE_HEADER + r["output"] for r in addition_records(40)]
    return train_tokenizer(texts, vocab_size=300)


def config(out: Path, **overrides) -> FinetuneConfig:
    values = {
        "data": "memory",
        "out": str(out),
        "model": "random:tiny",
        "batch_size": 2,
        "grad_accum": 4,
        "lr": 1e-3,
        "max_steps": 1,
        "eval_every": 0,
        "eval_batches": 1,
        "save_every": 0,
        "device": "cpu",
        "precision": "fp32",
    }
    values.update(overrides)
    return FinetuneConfig(**values)


@contextlib.contextmanager
def first_step_state():
    """Each parameter's value and gradient just before the first optimizer step, by id."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(optimizer, args, kwargs):
        if seen:
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    seen[id(p)] = (p.detach().clone(), p.grad.detach().clone())

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def encode_record(record: dict, tokenizer) -> tuple[list[int], int]:
    """The book's ids (`encode(prompt + response)`) and the prompt's length: the leading
    tokens the prompt alone encodes to."""
    prompt = format_input(record) + RESPONSE_HEADER
    ids = tokenizer.encode(prompt + record["output"])
    alone = tokenizer.encode(prompt)
    shared = 0
    while shared < min(len(ids), len(alone)) and ids[shared] == alone[shared]:
        shared += 1
    return ids, shared


def reference_step(model: GPTModel, records, tokenizer, mask_prompt: bool):
    """Autograd of the mean cross-entropy over all target tokens of the records.

    Each record alone, unpadded: input = its ids, target = ids shifted by one, then the
    end-of-text id; with prompt masking the targets that predict prompt tokens are dropped.
    Returns (loss, number of target tokens); gradients land in `model`'s parameters.
    """
    total = torch.zeros(())
    count = 0
    for record in records:
        ids, prompt_length = encode_record(record, tokenizer)
        targets = ids[1:] + [tokenizer.eos_id]
        first = prompt_length - 1 if mask_prompt else 0
        logits = model(torch.tensor([ids]))[0].float()  # (T, V)
        log_probs = logits - logits.exp().sum(-1, keepdim=True).log()  # log-softmax
        picked = log_probs[torch.arange(len(ids)), torch.tensor(targets)]  # (T,)
        total = total - picked[first:].sum()
        count += len(ids) - first
    loss = total / count
    loss.backward()
    return loss.item(), count


def reference_for(result, seen, records, tokenizer, mask_prompt: bool):
    """A fresh model holding the run's initial weights, with the reference gradients."""
    names = {id(p): name for name, p in result.model.named_parameters()}
    assert set(seen) <= set(names), "the optimizer holds parameters the model does not"
    model = GPTModel(result.model.config)
    with torch.no_grad():
        by_name = {names[key]: value for key, (value, _grad) in seen.items()}
        for name, p in model.named_parameters():
            p.copy_(by_name[name])
    loss, count = reference_step(model, records, tokenizer, mask_prompt)
    grads = {name: p.grad for name, p in model.named_parameters()}
    run_grads = {names[key]: grad for key, (_value, grad) in seen.items()}
    return loss, count, grads, run_grads


def train_split(records):
    return [r for r in records if r["split"] == "train"]


@pytest.mark.parametrize(
    "mask_prompt,grad_accum,batch_size", [(False, 4, 2), (True, 4, 2), (True, 1, 8)]
)
def test_step_gradient_is_autograd_of_the_token_mean(
    tokenizer, tmp_path, mask_prompt, grad_accum, batch_size
):
    records = addition_records(8)
    run_config = config(
        tmp_path / "run", mask_prompt=mask_prompt, grad_accum=grad_accum, batch_size=batch_size
    )
    with first_step_state() as seen:
        result = finetune(run_config, records=records, tokenizer=tokenizer, progress=False)
    loss, count, expected, got = reference_for(
        result, seen, train_split(records), tokenizer, mask_prompt
    )
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=2e-4, atol=1e-7, msg=name)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert rows[1]["tokens_seen"] == count  # target tokens, prompt excluded when masked
    assert rows[1]["train_loss"] == pytest.approx(loss, rel=1e-5)


def test_grad_clip_clips_like_torch(tokenizer, tmp_path):
    records = addition_records(8)
    with first_step_state() as seen:
        result = finetune(
            config(tmp_path / "run", grad_clip=0.05),
            records=records,
            tokenizer=tokenizer,
            progress=False,
        )
    _loss, _count, expected, got = reference_for(
        result, seen, train_split(records), tokenizer, False
    )
    names = sorted(expected)
    copies = [torch.nn.Parameter(torch.zeros_like(expected[name])) for name in names]
    for copy, name in zip(copies, names):
        copy.grad = expected[name].clone()
    total = torch.nn.utils.clip_grad_norm_(copies, 0.05)
    assert total > 0.5  # the clip is active: the unclipped gradient is 10x larger
    for name, copy in zip(names, copies):
        torch.testing.assert_close(got[name], copy.grad, rtol=2e-4, atol=1e-8, msg=name)


# ---- flags through the command line ---------------------------------------------------


def mixed_length_records() -> list[dict]:
    """4 short and 4 long training records: grouped batches hold one kind only."""
    short = [{"instruction": "Say yes.", "input": "", "output": "yes"}] * 4
    long = [{"instruction": "Count.", "input": "", "output": " ".join(map(str, range(12)))}] * 4
    records = [{**r, "split": "train"} for pair in zip(short, long) for r in pair]
    return records + [{**short[0], "split": "val"}]


def linear_calls():
    """(training, autocast on, autocast dtype, output dtype) of every nn.Linear forward."""
    calls = []

    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear):
            calls.append(
                (
                    module.training,
                    torch.is_autocast_enabled("cpu"),
                    torch.get_autocast_dtype("cpu"),
                    output.dtype,
                )
            )

    return calls, torch.nn.modules.module.register_module_forward_hook(hook)


def embedded_batches(vocab_size: int):
    """The input ids of every training forward, seen at the token embedding."""
    batches = []

    def hook(module, args):
        embedding = isinstance(module, torch.nn.Embedding) and module.num_embeddings == vocab_size
        if embedding and module.training:
            batches.append(args[0].clone())

    return batches, torch.nn.modules.module.register_module_forward_pre_hook(hook)


def run_cli(tmp_path, tokenizer, records, name: str, *flags: str) -> list[dict]:
    data = tmp_path / "records.json"
    data.write_text(json.dumps(records))
    tokenizer_dir = tmp_path / "tokenizer"
    if not tokenizer_dir.exists():
        tokenizer.save(tokenizer_dir)
    out = tmp_path / name
    command = ["finetune", "--data", str(data), "--tokenizer", str(tokenizer_dir),
               "--model", "random:tiny", "--out", str(out), "--batch-size", "2",
               "--grad-accum", "4", "--max-steps", "1", "--eval-every", "0",
               "--eval-batches", "1", "--save-every", "0", "--device", "cpu", "--quiet", *flags]  # fmt: skip
    assert main(command) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


def test_mask_prompt_and_bf16_flags_reach_the_step(tokenizer, tmp_path):
    records = addition_records(8)
    calls, handle = linear_calls()
    try:
        rows = run_cli(tmp_path, tokenizer, records, "bf16", "--mask-prompt", "--precision", "bf16")
    finally:
        handle.remove()
    encoded = [encode_record(r, tokenizer) for r in train_split(records)]
    masked = sum(len(ids) - (prompt - 1) for ids, prompt in encoded)
    assert rows[1]["tokens_seen"] == masked
    training = [call for call in calls if call[0]]
    assert training and all(call[1:] == (True, torch.bfloat16, torch.bfloat16) for call in training)

    calls, handle = linear_calls()
    try:
        rows = run_cli(tmp_path, tokenizer, records, "fp32", "--precision", "fp32")
    finally:
        handle.remove()
    unmasked = sum(len(encode_record(r, tokenizer)[0]) for r in train_split(records))
    assert rows[1]["tokens_seen"] == unmasked > masked
    assert calls and all(call[1] is False and call[3] == torch.float32 for call in calls)


def test_group_by_length_and_its_opposite_reach_the_loader(tokenizer, tmp_path):
    records = mixed_length_records()
    long_length = len(encode_record(records[1], tokenizer)[0])
    kinds = {}
    for name, flags in (("grouped", ()), ("mixed", ("--no-group-by-length",))):
        batches, handle = embedded_batches(tokenizer.vocab_size)
        try:
            run_cli(tmp_path, tokenizer, records, name, *flags)
        finally:
            handle.remove()
        assert len(batches) == 4  # one step of 4 micro-batches of 2
        # a row's length: its tokens before the end-of-text padding (the text has none)
        kinds[name] = [
            {int((row != tokenizer.eos_id).sum()) == long_length for row in batch}
            for batch in batches
        ]
    assert all(len(kind) == 1 for kind in kinds["grouped"])
    assert any(len(kind) == 2 for kind in kinds["mixed"])


# ---- resume at an epoch boundary, log_every --------------------------------------------


def test_resume_from_an_epoch_boundary_is_bitwise_an_uninterrupted_run(tokenizer, tmp_path):
    # 16 training records in batches of 4: the step-4 checkpoint closes epoch 1, so the
    # resumed run restores the RNG before it opens epoch 2; dropout makes the RNG matter.
    records = addition_records(16)
    common = {"batch_size": 4, "grad_accum": 1, "dropout": 0.1, "eval_every": 4, "lr": 3e-3}
    straight = finetune(
        config(tmp_path / "a", max_steps=8, **common),
        records=records,
        tokenizer=tokenizer,
        progress=False,
    )
    first = config(tmp_path / "b", max_steps=4, log_every=3, **common)
    finetune(first, records=records, tokenizer=tokenizer, progress=False)
    assert (tmp_path / "b" / "checkpoints" / "step-4").is_dir()
    resumed = finetune(
        config(tmp_path / "b", max_steps=8, log_every=3, **common),
        records=records,
        tokenizer=tokenizer,
        resume=True,
        progress=False,
    )
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    # log_every 3: a row every 3 steps, at evaluations and at the end; its train_loss is
    # the token-weighted mean of the steps since the previous row.
    per_step = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").open()]
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert [row["step"] for row in logged] == [0, 3, 4, 6, 8]
    tokens = [s["tokens_seen"] - p["tokens_seen"] for p, s in itertools.pairwise(per_step)]
    for before, row in itertools.pairwise(logged):
        steps = per_step[before["step"] + 1 : row["step"] + 1]
        window = tokens[before["step"] : row["step"]]
        expected = sum(s["train_loss"] * t for s, t in zip(steps, window)) / sum(window)
        assert row["train_loss"] == pytest.approx(expected, rel=1e-9)
        assert row["tokens_seen"] == steps[-1]["tokens_seen"]


def test_compile_flag_compiles_the_module_that_trains(tokenizer, tmp_path, monkeypatch):
    # A real torch.compile of even this tiny model took minutes on the shared 2-core CI box
    # (165 s with the eager backend), so the test checks that --compile hands the training
    # module to torch.compile and that what torch.compile returns runs every micro-batch.
    compiled = []

    class Compiled(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

    def fake_compile(module, *args, **kwargs):
        compiled.append(Compiled(module))
        return compiled[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    run_cli(tmp_path, tokenizer, addition_records(8), "compiled", "--compile")
    assert len(compiled) == 1 and compiled[0].calls == 4  # the step's 4 micro-batches


DDP_RUNNER = """
import json, os, sys, torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from instructkit.config import config_from_dict
from instructkit.data import load_instructions
from instructkit.train import finetune
seen = {}
def hook(optimizer, args, kwargs):
    if not seen:
        for group in optimizer.param_groups:
            for p in group["params"]:
                seen[id(p)] = (p.detach().clone(), p.grad.detach().clone())
register_optimizer_step_pre_hook(hook)
result = finetune(config_from_dict(json.loads(sys.argv[1])), progress=False)
if os.environ["RANK"] == "0":
    names = {id(p): name for name, p in result.model.named_parameters()}
    torch.save({names[k]: v for k, v in seen.items()}, sys.argv[2])
"""


def test_ddp_step_gradient_is_autograd_of_the_token_mean(tokenizer, tmp_path):
    # 2 ranks x 2 micro-batches x 2 records: one step over all 8 training records, with a
    # different number of target tokens on each rank (prompt masking, varied lengths).
    import os
    import subprocess
    import sys

    records = addition_records(8)
    (tmp_path / "records.json").write_text(json.dumps(records))
    tokenizer.save(tmp_path / "tok")
    (tmp_path / "runner.py").write_text(DDP_RUNNER)
    run_config = config(
        tmp_path / "run", data=str(tmp_path / "records.json"), tokenizer=str(tmp_path / "tok"),
        grad_accum=2, mask_prompt=True,
    )  # fmt: skip
    values = {k: v for k, v in vars(run_config).items()}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    done = subprocess.run(
        [*torchrun, "2", str(tmp_path / "runner.py"), json.dumps(values), str(tmp_path / "g.pt")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = torch.load(tmp_path / "g.pt")
    from instructkit.model import load_pretrained

    model, _ = load_pretrained(str(tmp_path / "run"))
    reference = GPTModel(model.config)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(seen[name][0])
    reference_step(reference, train_split(records), tokenizer, mask_prompt=True)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(seen[name][1], p.grad, rtol=2e-4, atol=1e-7, msg=name)
