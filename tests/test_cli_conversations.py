"""`instructkit finetune` on conversation data with a chat model's tokenizer, end to end:
the template travels with the run, and the loss sees exactly the assistant tokens
(counted independently by transformers' `{% generation %}` masks) or, with
`--train-on all`, every token."""

from __future__ import annotations

import json

import pytest
import yaml
from chat_fixtures import TEMPLATES, reference_tokenizer, write_chat_tokenizer

from instructkit.cli import main
from instructkit.model import read_metadata

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
    {"conversations": [{"from": "system", "value": "Answer briefly."},
                       {"from": "human", "value": "Rewrite: the cat sat."},
                       {"from": "gpt", "value": "The cat was sitting."},
                       {"from": "human", "value": "Thank you!"},
                       {"from": "gpt", "value": "You are welcome."}]},
    {"instruction": "Rewrite the sentence.", "input": "the cat sat on the mat", "output": "Done."},
    {"messages": [{"role": "user", "content": "café 日本?"},
                  {"role": "assistant", "content": "Today Date: 26 Jul 2024."}]},
]  # fmt: skip
OTHER = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."}]}


def as_messages(record: dict) -> list[dict]:
    if "messages" in record:
        return record["messages"]
    if "conversations" in record:
        roles = {"system": "system", "human": "user", "gpt": "assistant"}
        return [{"role": roles[t["from"]], "content": t["value"]} for t in record["conversations"]]
    user = f"{record['instruction']}\n\n{record['input']}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


@pytest.mark.parametrize("train_on", ["assistant", "all"])
def test_finetune_on_conversations_trains_the_chosen_tokens(tmp_path, train_on, capsys):
    tokenizer_dir = write_chat_tokenizer(tmp_path / "tok", "qwen2.5")
    records = [{**r, "split": "train"} for r in TRAIN]
    records += [{**OTHER, "split": "val"}, {**OTHER, "split": "test"}]
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    out = tmp_path / "run"
    args = ["finetune", "--data", str(data), "--model", "random:tiny", "--tokenizer",
            str(tokenizer_dir), "--out", str(out), "--batch-size", "2", "--max-steps", "2",
            "--eval-every", "0", "--train-on", train_on, "--quiet"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()

    reference = reference_tokenizer(tokenizer_dir)
    expected = 0
    for record in TRAIN:  # two batches of two: exactly one epoch
        encoded = reference.apply_chat_template(
            as_messages(record), return_dict=True, return_assistant_tokens_mask=True
        )
        if train_on == "all":
            expected += len(encoded["input_ids"]) - 1  # every token but the first is a target
        else:
            expected += sum(encoded["assistant_masks"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["tokens_seen"] == expected

    assert yaml.safe_load((out / "config.yaml").read_text())["train_on"] == train_on
    assert read_metadata(out / "model")["style"] == "chat_template"
    saved = reference_tokenizer(out / "model")
    assert saved.chat_template == TEMPLATES["qwen2.5"]
    chat = [{"role": "user", "content": "Hi"}]
    assert saved.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        reference.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )

    # generate and its test split go through the template saved with the run
    from instructkit.loading import load_for_generation

    _, _, style = load_for_generation(str(out))
    assert style.prompt({"instruction": "Hi", "input": ""}) == reference.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    assert style.prompt(records[-1]) == reference.apply_chat_template(
        OTHER["messages"][:1], tokenize=False, add_generation_prompt=True
    )
    assert main(["generate", "--model", str(out), "--prompt", "Hi", "--max-new-tokens", "2"]) == 0


def test_bad_conversations_exit_2_naming_each_problem(tmp_path, capsys):
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{"messages": [{"role": "bot", "content": "x"}]}]))
    args = ["finetune", "--data", str(data), "--model", "random:tiny", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        (
            f"error: {data}: record index 0, field 'messages[0].role': unknown role 'bot'; "
            "expected system, user, assistant"
        )
    ]
