"""End-to-end tests for `instructkit demo`: the quick demo through the CLI, every artifact
it writes, the trained model beating the untrained one, reruns (same numbers, new dir)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
import yaml

from instructkit import cli, demo, loading
from instructkit.data import load_instructions, split_records
from instructkit.data.builtin import FAMILY_NAMES, answer_key, underlying_item
from instructkit.demo import (
    DEMO_ARTIFACTS,
    QUICK,
    REAL_GPT2_COMMAND,
    claim_run_dir,
    pick_per_family,
)
from instructkit.errors import UserError


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Two quick demos to the same --out: the first lands in `demo`, the second in `demo-2`.

    They run as `python -m instructkit`, as a user runs them: torch starts in a fresh
    process, so the command's OpenMP settings take effect.
    """
    root = tmp_path_factory.mktemp("runs")
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "instructkit", "demo", "--quick", "--out", str(root / "demo")],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    return root / "demo", root / "demo-2", outputs


@pytest.fixture(scope="module")
def run_dir(quick_runs):
    return quick_runs[0]


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_quick_demo_writes_the_run_directory(run_dir):
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "loss.png",
        "responses.json",
        "scores.json",
        "report.md",
        *DEMO_ARTIFACTS,
    ):
        assert (run_dir / name).exists(), name
    assert (run_dir / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [f"step-{QUICK.max_steps}"]
    assert (run_dir / "model" / "model.safetensors").is_file()

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["mask_prompt"] and config["pack"]
    assert config["model"] == QUICK.model and config["data"] == str(run_dir / "data.json")
    assert config["tokenizer"] == str(run_dir / "tokenizer")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == QUICK.max_steps


def test_scores_cover_every_family_for_both_models(run_dir):
    scores = read_json(run_dir / "scores.json")
    responses = read_json(run_dir / "responses.json")
    untrained = read_json(run_dir / "untrained_responses.json")
    n = QUICK.test_per_family * len(FAMILY_NAMES)
    assert len(responses) == len(untrained) == len(scores["records"]) == n
    for metrics in (scores["metrics"], scores["untrained"]["metrics"]):
        assert metrics["n"] == n
        assert set(metrics["groups"]) == set(FAMILY_NAMES)
        for group in metrics["groups"].values():
            assert group["n"] == QUICK.test_per_family
            assert 0.0 <= group["exact_match"] <= 1.0 and 0.0 <= group["rouge_l"] <= 1.0
    assert all(isinstance(record["model_response"], str) for record in responses + untrained)
    assert [r["instruction"] for r in responses] == [r["instruction"] for r in untrained]


def test_scored_records_are_held_out_from_training(run_dir):
    train, _test, _val = split_records(load_instructions(run_dir / "data.json"))  # as trained
    trained_items = {underlying_item(record) for record in train}
    scored = read_json(run_dir / "responses.json")
    assert not trained_items & {underlying_item(record) for record in scored}
    trained_keys = {(r["family"], answer_key(r)) for r in train}
    assert not trained_keys & {(r["family"], answer_key(r)) for r in scored}
    trained_inputs = {(r["instruction"], r["input"]) for r in train}
    assert not trained_inputs & {(r["instruction"], r["input"]) for r in scored}


def test_report_has_config_plot_table_and_examples(run_dir):
    report = (run_dir / "report.md").read_text()
    scores = read_json(run_dir / "scores.json")
    assert "from scratch" in report and REAL_GPT2_COMMAND in report
    assert "![loss](loss.png)" in report
    assert "| family | n | exact match | untrained | ROUGE-L | untrained |" in report
    for family in FAMILY_NAMES:
        group = scores["metrics"]["groups"][family]
        assert f"| {family} | {group['n']} | {group['exact_match']:.2f} |" in report
    overall = scores["metrics"]
    assert f"| **overall** | {overall['n']} | {overall['exact_match']:.2f} |" in report
    assert QUICK.model in report and f"{QUICK.max_steps} steps" in report
    assert "| family | instruction | expected | fine-tuned | untrained |" in report
    assert "| family | model | majority | copy | nearest | rule | best baseline | gain |" in report
    for family in FAMILY_NAMES:
        best = scores["baselines"][family]["best"]
        assert re.search(rf"\| {family} \| [0-9.]+ \| .* \| {best:.2f} \| [+-][0-9.]+ \|", report)
    # the untrained model's byte tokens decode to control characters: shown escaped
    assert all(c.isprintable() or c == "\n" for c in report)


def test_report_cells_escape_control_characters():
    from instructkit.demo_report import _cell

    assert _cell("ok\x00\x02 | x") == "ok\\x00\\x02 \\| x"
    assert _cell("a\tb\nc") == "a b c"
    assert _cell("") == "(empty)"


def test_baselines_are_scored_on_the_same_records(run_dir):
    """scores.json's baselines: every family, exact match in [0, 1], the best of the four,
    and the add -s rule recomputed from the scored plural records."""
    scores = read_json(run_dir / "scores.json")
    responses = read_json(run_dir / "responses.json")
    baselines = scores["baselines"]
    assert set(baselines) == set(FAMILY_NAMES) | {"overall"}
    for family in FAMILY_NAMES:
        row = baselines[family]
        assert row["n"] == QUICK.test_per_family
        assert row["best"] == max(row[name] for name in ("majority", "copy", "nearest", "rule"))
    plural = [r for r in responses if r["family"] == "plural"]
    plus_s = [
        (r["input"] or r["instruction"].rsplit(": ", 1)[1]) + "s" == r["output"] for r in plural
    ]
    assert baselines["plural"]["rule"] == pytest.approx(sum(plus_s) / len(plural))


def test_saved_model_loads_and_gave_the_scored_responses(run_dir):
    from instructkit.loading import resolve_style
    from instructkit.model import load_pretrained
    from instructkit.responses import generate_responses

    model, tokenizer = load_pretrained(run_dir / "model")
    assert tokenizer is not None and model.config.vocab_size == tokenizer.vocab_size
    responses = read_json(run_dir / "responses.json")[:4]
    # the demo's limit, as its report states it: a response that runs on is cut there
    report = (run_dir / "report.md").read_text()
    max_new_tokens = int(re.search(r"at most (\d+) new tokens", report).group(1))
    again = generate_responses(
        model,
        tokenizer,
        resolve_style(str(run_dir)),
        [{k: v for k, v in r.items() if k != "model_response"} for r in responses],
        max_new_tokens=max_new_tokens,
        progress=False,
    )
    assert [r["model_response"] for r in again] == [r["model_response"] for r in responses]


def words(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def test_trained_model_beats_the_untrained_one(run_dir):
    """The quick run is short, but it learns: held-out ROUGE-L and validation loss improve."""
    scores = read_json(run_dir / "scores.json")
    assert scores["untrained"]["metrics"]["exact_match"] == 0.0
    # exact match recomputed from the responses: the same words, case and punctuation aside
    responses = read_json(run_dir / "responses.json")
    matched = [words(r["model_response"]) == words(r["output"]) for r in responses]
    assert sum(matched) >= 1  # the trained model gets some answers exactly right
    assert scores["metrics"]["exact_match"] == pytest.approx(sum(matched) / len(matched))
    assert scores["metrics"]["rouge_l"] >= scores["untrained"]["metrics"]["rouge_l"] + 0.05
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] < 0.5 * rows[0]["val_loss"]


def test_summary_names_the_run_and_the_real_gpt2_command(quick_runs):
    first, _, (out, _) = quick_runs
    assert "trained from scratch" in out and REAL_GPT2_COMMAND in out
    assert f"Run directory: {first}" in out
    for family in FAMILY_NAMES:
        assert f"  {family} " in out
    assert "overall" in out


def test_second_run_goes_to_a_new_directory_with_the_same_numbers(quick_runs):
    first, second, outputs = quick_runs
    assert f"Run directory: {second}" in outputs[1]
    assert second.name == "demo-2" and (second / "report.md").is_file()
    assert (
        read_json(first / "scores.json")["metrics"] == read_json(second / "scores.json")["metrics"]
    )
    assert read_json(first / "responses.json") == read_json(second / "responses.json")
    losses = [
        [
            json.loads(line)["train_loss"]
            for line in (run / "metrics.jsonl").read_text().splitlines()
        ]
        for run in (first, second)
    ]
    assert losses[0] == losses[1]


def test_summary_is_printed(tmp_path, capsys, monkeypatch):

    seen = {}

    def fake_run_demo(out, **kwargs):
        seen.update(kwargs, out=out)
        return demo.DemoResult(out, {}, {}, 0.0, summary="SUMMARY")

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert cli.main(["demo", "--out", str(tmp_path / "x"), "--seed", "3", "--overwrite"]) == 0
    assert capsys.readouterr().out.strip() == "SUMMARY"
    assert seen == {
        "out": tmp_path / "x",
        "quick": False,
        "overwrite": True,
        "seed": 3,
        "progress": True,
        "precision": "fp32",
    }


@pytest.mark.parametrize("native_bf16", [True, False])
def test_one_measured_plan_on_every_cpu(monkeypatch, native_bf16):
    """The CPU never changes what the demo trains: the default is the fp32 plan whose scores
    were measured, and bf16 only changes the arithmetic of the same steps."""
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: native_bf16)
    assert demo.FULL.precision == "fp32" and demo.QUICK.precision == "fp32"
    assert demo.choose_plan(False, "fp32") == demo.FULL
    assert demo.choose_plan(True, "fp32") == demo.QUICK
    bf16 = demo.choose_plan(False, "bf16")
    assert bf16.precision == "bf16" and bf16.max_steps == demo.FULL.max_steps
    assert dataclasses.replace(bf16, precision="fp32") == demo.FULL
    assert demo.choose_plan(True, "bf16").precision == "bf16"
    for unknown in ("auto", "fp16"):
        with pytest.raises(UserError, match="precision"):
            demo.choose_plan(False, unknown)


def test_help_names_the_plans_steps(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"{demo.FULL.max_steps:,} steps in fp32 on every CPU" in text
    assert "{fp32,bf16}" in text and "(default: fp32)" in text
    assert demo.FULL.model.removeprefix("random:") in text


def test_quick_demo_in_bf16_trains_and_records_it(tmp_path):
    """Runs on any CPU: emulated bf16 takes ~40 s for the quick demo on an AVX2 Zen 3."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "instructkit",
            "demo",
            "--quick",
            "--precision",
            "bf16",
            "--quiet",
            "--out",
            str(tmp_path / "demo"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "precision: bf16" in (tmp_path / "demo" / "config.yaml").read_text()
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "`instructkit demo --quick --precision bf16`" in report  # the command to rerun it
    assert "bf16 autocast" in report
    scores = read_json(tmp_path / "demo" / "scores.json")
    assert scores["metrics"]["rouge_l"] > scores["untrained"]["metrics"]["rouge_l"]


def test_claim_run_dir_never_reuses_a_run(tmp_path):
    out = tmp_path / "demo"
    assert claim_run_dir(out, overwrite=False) == out  # created
    assert claim_run_dir(out, overwrite=False) == out  # still empty: free
    (out / "report.md").write_text("a run")
    assert claim_run_dir(out, overwrite=False) == tmp_path / "demo-2"
    (tmp_path / "demo-2" / "x").write_text("")
    assert claim_run_dir(out, overwrite=False) == tmp_path / "demo-3"


def test_claim_run_dir_overwrite_clears_demo_files_only(tmp_path):
    out = tmp_path / "demo"
    (out / "tokenizer").mkdir(parents=True)
    (out / "data.json").write_text("[]")
    (out / "notes.txt").write_text("mine")
    assert claim_run_dir(out, overwrite=True) == out
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_claim_run_dir_rejects_a_file(tmp_path):
    (tmp_path / "demo").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        claim_run_dir(tmp_path / "demo", overwrite=False)


def test_pick_per_family_keeps_file_order():
    records = [{"family": f, "i": i} for i, f in enumerate("abacbca")]
    assert [r["i"] for r in pick_per_family(records, 2)] == [0, 1, 2, 3, 4, 5]
    assert [r["i"] for r in pick_per_family(records, 1)] == [0, 1, 3]
    assert pick_per_family(records, None) == records
