"""DPO pieces: the loss against the formula written out, preference records and their
tokens, and the stored reference log-probabilities against a fresh computation."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from instructkit.data import format_input
from instructkit.data.preferences import (
    PreferenceCollator,
    PreferenceDataset,
    load_preferences,
)
from instructkit.errors import DataError
from instructkit.tokenizer import train_tokenizer
from instructkit.train.preference import dpo_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RESPONSE_HEADER = "\n\n### Response:\n"

# (policy chosen, policy rejected, reference chosen, reference rejected): summed log-probs
LOGPS = [(-10.0, -12.0, -11.0, -11.5), (-5.0, -4.0, -6.0, -3.0), (-20.0, -30.0, -20.0, -30.0)]


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


@pytest.mark.parametrize("beta,smoothing", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)])
def test_sigmoid_loss_is_the_written_out_formula(beta, smoothing):
    pc, pr, rc, rr = (torch.tensor(column) for column in zip(*LOGPS))
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta, "sigmoid", smoothing)
    for i, (a, b, c, d) in enumerate(LOGPS):
        logits = (a - c) - (b - d)
        expected = (
            -_log_sigmoid(beta * logits) * (1 - smoothing)
            - _log_sigmoid(-beta * logits) * smoothing
        )
        assert losses[i].item() == pytest.approx(expected, rel=1e-6)
        assert chosen[i].item() == pytest.approx(beta * (a - c))
        assert rejected[i].item() == pytest.approx(beta * (b - d))
    assert losses[2].item() == pytest.approx(math.log(2) * 1.0, rel=1e-6)  # policy = reference


def test_ipo_loss_is_the_written_out_formula():
    beta = 0.25
    pc, pr, rc, rr = (torch.tensor(column) for column in zip(*LOGPS))
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta, "ipo")
    for i, (a, b, c, d) in enumerate(LOGPS):
        assert losses[i].item() == pytest.approx(((a - c) - (b - d) - 1 / (2 * beta)) ** 2)


def test_loss_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = torch.tensor([-10.0], requires_grad=True), torch.tensor([-10.0], requires_grad=True)
    losses, _, _ = dpo_loss(pc, pr, torch.tensor([-10.0]), torch.tensor([-10.0]), 0.1)
    losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.05) and pr.grad.item() == pytest.approx(0.05)


# ---- records ----------------------------------------------------------------------------


def test_book_and_prompt_forms_load(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [
        {
            "instruction": "Greet.",
            "input": "",
            "output": "Hi",
            "chosen": "Hello!",
            "rejected": "Go.",
        },
        {"prompt": "Name a color.", "chosen": "Blue, gladly.", "rejected": "Blue. Obviously."},
        {
            "prompt": [{"role": "user", "content": "Say yes."}],
            "chosen": "Yes, of course.",
            "rejected": "Fine, yes.",
        },
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    records = load_preferences(path)
    assert records[0]["instruction"] == "Greet." and records[0]["output"] == "Hi"
    assert records[1]["instruction"] == "Name a color." and records[1]["input"] == ""
    assert records[2]["messages"] == rows[2]["prompt"]
    tokenizer = train_tokenizer(["Hello Go Blue gladly Obviously Yes of course Fine"], 300)
    dataset = PreferenceDataset(records, tokenizer)
    pair = dataset.examples[2]
    prompt = format_input({"instruction": "Say yes.", "input": ""}) + RESPONSE_HEADER
    assert tokenizer.decode(pair.chosen.input_ids) == prompt + "Yes, of course."
    assert tokenizer.decode(pair.rejected.input_ids[: pair.rejected.prompt_length]) == prompt


def test_every_bad_record_is_named(tmp_path):
    path = tmp_path / "prefs.json"
    rows = [
        {"instruction": "A", "chosen": "same", "rejected": "same"},
        {"instruction": "B", "chosen": "yes"},
        {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
        {"instruction": "C", "chosen": "fine", "rejected": "rude"},
    ]
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError) as error:
        load_preferences(path)
    problems = error.value.problems
    assert len(problems) == 3, problems
    assert problems[0] == (
        f"{path}: record index 0: chosen and rejected are identical; a pair must prefer one answer"
    )
    assert problems[1].startswith(f"{path}: record index 1: field 'rejected': missing")
    assert (
        problems[2]
        == f"{path}: record index 2: field 'prompt': the last message must be the user's"
    )


def test_a_batch_holds_chosen_then_rejected_with_prompts_masked():
    tokenizer = train_tokenizer(["abc def ghi"], 300)
    records = [
        {"instruction": "abc", "input": "", "chosen": "def", "rejected": "ghi ghi"},
        {"instruction": "def", "input": "abc", "chosen": "abc", "rejected": "ghi"},
    ]
    dataset = PreferenceDataset(records, tokenizer, offset=7)
    batch = PreferenceCollator(tokenizer.eos_id)(dataset.examples)
    assert batch.indices.tolist() == [7, 8] and batch.num_records == 2
    assert batch.batch.input_ids.shape[0] == 4
    for row, example in enumerate(
        [dataset.examples[0].chosen, dataset.examples[1].chosen]
        + [dataset.examples[0].rejected, dataset.examples[1].rejected]
    ):
        targets = batch.batch.targets[row]
        trained = (targets != -100).nonzero()[:, 0].tolist()
        # targets from the last prompt token up to the end-of-text after the response
        assert trained == list(range(example.prompt_length - 1, len(example.input_ids)))
        assert targets[len(example.input_ids) - 1].item() == tokenizer.eos_id


# ---- the stored reference ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rng = random.Random(1)
    records = []
    for _ in range(40):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        records.append(
            {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b),
             "chosen": f"Gladly: {a + b}.", "rejected": f"Whatever, {a + b}"}
        )  # fmt: skip
    directory = tmp_path_factory.mktemp("prefs")
    (directory / "prefs.json").write_text(json.dumps(records))
    texts = [format_input(r) + r["chosen"] + r["rejected"] for r in records]
    train_tokenizer(texts, 300).save(directory / "tok")
    return directory / "prefs.json", directory / "tok", records


def fresh_logps(model, tokenizer, record: dict, answer: str) -> float:
    """Summed log-prob of the answer tokens and the end-of-text after them, from full logits."""
    prompt = format_input(record) + RESPONSE_HEADER
    ids = tokenizer.encode(prompt + answer)
    prompt_ids = tokenizer.encode(prompt)
    start = next(i for i, (a, b) in enumerate(zip(ids, prompt_ids + [-1])) if a != b)
    sequence = torch.tensor([ids + [tokenizer.eos_id]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(sequence[:, :-1]).double(), dim=-1)[0]
    return sum(logprobs[t - 1, sequence[0, t]].item() for t in range(start, len(ids) + 1))


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_stored_reference_equals_a_fresh_computation(pairs_file, tmp_path, lora_rank):
    from safetensors.torch import load_file

    from instructkit.config import DPOConfig
    from instructkit.data import split_book
    from instructkit.model import load_pretrained
    from instructkit.tokenizer import load_tokenizer
    from instructkit.train.dpo import dpo

    data, tok, records = pairs_file
    out = tmp_path / "run"
    config = DPOConfig(
        data=str(data), out=str(out), model="random:tiny", tokenizer=str(tok), batch_size=4,
        max_steps=1, eval_batches=1, lora_rank=lora_rank,
    )  # fmt: skip
    dpo(config, progress=False)
    stored = load_file(out / "reference_logps.safetensors")
    train, _test, val = split_book(records)
    assert stored["train.chosen"].shape == (len(train),) and stored["val.chosen"].shape == (
        len(val),
    )
    tokenizer = load_tokenizer(tok)
    base, _ = load_pretrained("random:tiny", tokenizer=tokenizer, seed=123)  # adapters off
    base.eval()
    for split, chosen, rejected in (
        (train, stored["train.chosen"], stored["train.rejected"]),
        (val, stored["val.chosen"], stored["val.rejected"]),
    ):
        for i in (0, len(split) - 1):
            expected = fresh_logps(base, tokenizer, split[i], split[i]["chosen"])
            assert chosen[i].item() == pytest.approx(expected, abs=1e-3)
            expected = fresh_logps(base, tokenizer, split[i], split[i]["rejected"])
            assert rejected[i].item() == pytest.approx(expected, abs=1e-3)


def test_a_conversation_prompt_is_rendered_by_a_conversation_style(tmp_path):
    from instructkit.data import get_style

    path = tmp_path / "prefs.json"
    messages = [
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Add 1 and 2."},
    ]
    path.write_text(json.dumps([{"prompt": messages, "chosen": "3, gladly.", "rejected": "3."}]))
    tokenizer = train_tokenizer(["Hi Hello Add gladly <|im_start|> <|im_end|>"], 300)
    pair = PreferenceDataset(load_preferences(path), tokenizer, style="chatml").examples[0]
    chatml = get_style("chatml")
    prompt = chatml.render(messages, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "Hello." in prompt
    assert tokenizer.decode(pair.chosen.input_ids).startswith(prompt + "3, gladly.")
    assert pair.chosen.prompt_length == len(tokenizer.encode(prompt))
    with pytest.raises(Exception, match="multi-message prompt"):
        PreferenceDataset(load_preferences(path), tokenizer, style="alpaca")
