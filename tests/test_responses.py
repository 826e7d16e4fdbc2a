"""Responses: batched generation matches the book's one-at-a-time greedy decoding, the style
comes from the model's metadata, output is in the book's format, and an interrupted run
resumes without redoing finished records."""

import json

import pytest
import torch

import instructkit.generate as generation
from instructkit.cli import main
from instructkit.data import get_style, split_shuffled
from instructkit.errors import DataError, UserError
from instructkit.loading import load_for_generation, resolve_style
from instructkit.model import GPTConfig, GPTModel
from instructkit.model.checkpoints import save_pretrained
from instructkit.responses import RESPONSE_KEY, generate_responses, load_responses
from instructkit.tokenizer import train_tokenizer

RECORDS = [
    {
        "instruction": f"Reverse the word {w}.",
        "input": "" if i % 3 else w,
        "output": w[::-1],
        "family": "reverse",
    }
    for i, w in enumerate(
        ["cat", "tiger", "owl", "rhinoceros", "bee", "ant", "lion", "zebra", "yak", "emu"]
    )
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run dir holding a tiny random model, its trained tokenizer and style metadata."""
    texts = [get_style("alpaca").text(r) for r in RECORDS] + [
        get_style("phi3").text(r) for r in RECORDS
    ]
    tokenizer = train_tokenizer(texts * 5, vocab_size=320)
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=128, emb_dim=32, n_heads=2, n_layers=2
    )
    model = GPTModel(config).eval()
    run = tmp_path_factory.mktemp("run")
    save_pretrained(model, tokenizer, run / "model", metadata={"style": "phi3"})
    return run


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_for_generation(str(run_dir), device="cpu")


def book_response(model, tokenizer, style, record, max_new_tokens):
    """The book's loop: generate() one record at a time, then its extraction."""
    prompt = style.prompt(record)
    idx = torch.tensor([tokenizer.encode(prompt)])
    out = generation.generate(
        model,
        idx,
        max_new_tokens,
        context_size=model.config.context_length,
        eos_id=tokenizer.eos_id,
    )
    text = tokenizer.decode(out[0].tolist())
    return text[len(prompt) :].replace(style.response_header.strip(), "").strip()


def test_style_comes_from_the_model_unless_given(run_dir):
    assert resolve_style(str(run_dir)).name == "phi3"
    assert resolve_style(str(run_dir / "model")).name == "phi3"
    assert resolve_style(str(run_dir), "chatml").name == "chatml"
    assert resolve_style("random:tiny").name == "alpaca"
    with pytest.raises(UserError, match="unknown prompt style"):
        resolve_style(str(run_dir), "nope")


def test_batched_responses_match_the_books_loop(loaded):
    model, tokenizer, style = loaded
    results = generate_responses(
        model, tokenizer, style, RECORDS, batch_size=4, max_new_tokens=12, progress=False
    )
    assert [{k: v for k, v in r.items() if k != RESPONSE_KEY} for r in results] == RECORDS
    expected = [book_response(model, tokenizer, style, r, 12) for r in RECORDS]
    assert [r[RESPONSE_KEY] for r in results] == expected
    assert any(expected)  # a random model still says something


def test_resume_after_interruption_redoes_nothing(loaded, tmp_path, monkeypatch):
    model, tokenizer, style = loaded
    out = tmp_path / "responses.json"
    reference = generate_responses(
        model, tokenizer, style, RECORDS, batch_size=3, max_new_tokens=8, progress=False
    )
    real = generation.generate_batch
    seen: list[int] = []

    def flaky(model, prompts, *args, **kwargs):
        if seen:
            raise KeyboardInterrupt  # the user gives up after the first batch
        seen.append(len(prompts))
        return real(model, prompts, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_responses(
            model,
            tokenizer,
            style,
            RECORDS,
            out_path=out,
            batch_size=3,
            max_new_tokens=8,
            progress=False,
        )
    assert not out.exists()
    progress = json.loads((tmp_path / "responses.json.partial").read_text())
    assert len(progress["responses"]) == 3

    counted: list[int] = []

    def counting(model, prompts, *args, **kwargs):
        counted.append(len(prompts))
        return real(model, prompts, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_batch", counting)
    results = generate_responses(
        model,
        tokenizer,
        style,
        RECORDS,
        out_path=out,
        batch_size=3,
        max_new_tokens=8,
        progress=False,
    )
    assert sum(counted) == len(RECORDS) - 3
    assert results == reference
    assert json.loads(out.read_text()) == reference
    assert not (tmp_path / "responses.json.partial").exists()


def test_progress_from_other_settings_is_not_reused(loaded, tmp_path):
    model, tokenizer, style = loaded
    out = tmp_path / "r.json"
    (tmp_path / "r.json.partial").write_text(
        json.dumps({"settings": {"max_new_tokens": 999}, "responses": {"0": "stale"}})
    )
    results = generate_responses(
        model, tokenizer, style, RECORDS[:2], out_path=out, max_new_tokens=4, progress=False
    )
    assert results[0][RESPONSE_KEY] != "stale"


def test_generate_cli_writes_the_books_format_and_prompt_prints(run_dir, tmp_path, capsys, loaded):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(RECORDS * 2))  # 20 records: book split 17/2/1
    assert (
        main(
            [
                "generate",
                "--model",
                str(run_dir),
                "--data",
                str(data),
                "--max-new-tokens",
                "6",
                "--batch-size",
                "2",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    written = json.loads((run_dir / "responses.json").read_text())
    assert len(written) == 2 and all(isinstance(r[RESPONSE_KEY], str) for r in written)
    assert written[0]["instruction"] == (RECORDS * 2)[17]["instruction"]
    assert load_responses(run_dir / "responses.json") == written

    assert (
        main(
            [
                "generate",
                "--model",
                str(run_dir),
                "--prompt",
                RECORDS[0]["instruction"],
                "--max-new-tokens",
                "6",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    model, tokenizer, style = loaded
    expected = book_response(model, tokenizer, style, {**RECORDS[0], "input": ""}, 6)
    assert capsys.readouterr().out.splitlines()[-1] == expected


def test_generate_answers_the_test_split_the_run_held_out(run_dir, tmp_path):
    """A run trained with --split shuffled (or on records naming their split) is answered on
    its own test split, not the book's."""
    records = [{**r, "instruction": f"{r['instruction']} ({i})"} for i, r in enumerate(RECORDS * 2)]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    base = [
        "generate",
        "--model",
        str(run_dir),
        "--data",
        str(data),
        "--max-new-tokens",
        "2",
        "--quiet",
        "--device",
        "cpu",
    ]

    def answered(*extra: str) -> list[str]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.json"
        assert main([*base, "--out", str(out), *extra]) == 0
        return [r["instruction"] for r in json.loads(out.read_text())]

    (run_dir / "config.yaml").write_text("split: shuffled\nseed: 7\n")
    try:
        assert answered() == [r["instruction"] for r in split_shuffled(records, seed=7)[1]]
        assert answered("--split-by", "book") == [r["instruction"] for r in records[17:19]]
    finally:
        (run_dir / "config.yaml").unlink()
    named = [{**r, "split": "test" if i in (3, 5) else "train"} for i, r in enumerate(records)]
    data.write_text(json.dumps(named))
    assert answered() == [records[3]["instruction"], records[5]["instruction"]]


def test_load_responses_reports_every_record_without_a_response(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps(
            [
                {"instruction": "a", "output": "b"},
                {"instruction": "a", "output": "b", "model_response": 3},
            ]
        )
    )
    with pytest.raises(DataError) as error:
        load_responses(path)
    assert len(error.value.problems) == 2 and "record 1" in error.value.problems[1]
