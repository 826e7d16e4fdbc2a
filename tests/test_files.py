"""The one file writer: atomic, cleans up after itself, ordinary permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest

from instructkit.files import atomic_path, staging_directory, write_atomic, write_json


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_file_has_the_permissions_of_a_plain_open(tmp_path, umask_022):
    write_atomic(tmp_path / "a.txt", "hello")
    with open(tmp_path / "plain.txt", "w") as handle:
        handle.write("x")
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "plain.txt") == 0o644
    os.umask(0o077)
    write_atomic(tmp_path / "private.txt", b"secret")
    assert mode(tmp_path / "private.txt") == 0o600


def test_failure_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "scores.json"
    write_json(target, {"n": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_text("half a fi")
        raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_json_is_replaced_whole_with_a_final_newline(tmp_path):
    target = tmp_path / "sub" / "r.json"
    write_json(target, [{"a": "é"}])
    write_json(target, {"b": 2, "a": 1}, sort_keys=True)
    assert target.read_text(encoding="utf-8") == '{\n  "a": 1,\n  "b": 2\n}\n'


def test_staging_directory_replaces_a_directory_and_is_readable(tmp_path, umask_022):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    with staging_directory(target) as staging:
        write_atomic(staging / "config.json", "{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert mode(target) == 0o755 and mode(target / "config.json") == 0o644
    with pytest.raises(ValueError), staging_directory(target) as staging:
        write_atomic(staging / "config.json", "new")
        raise ValueError("interrupted")
    assert (target / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_run_artifacts_are_readable_by_others(tmp_path, umask_022, small_tokenizer):
    """A saved model directory (weights, config, tokenizer) and a plot are 0644 / 0755."""
    from instructkit.model import GPTConfig, GPTModel, save_pretrained
    from instructkit.plots import plot_losses

    config = GPTConfig.preset("tiny", vocab_size=small_tokenizer.vocab_size)
    save_pretrained(GPTModel(config), small_tokenizer, tmp_path / "model")
    assert mode(tmp_path / "model") == 0o755
    for path in (tmp_path / "model").iterdir():
        assert mode(path) == 0o644, path.name
    rows = [
        {"step": 0, "epoch": 0.0, "tokens_seen": 0, "train_loss": 2.0, "val_loss": 2.1},
        {"step": 1, "epoch": 0.5, "tokens_seen": 10, "train_loss": 1.0, "val_loss": 1.5},
    ]
    plot_losses(rows, tmp_path / "loss.png")
    assert mode(tmp_path / "loss.png") == 0o644
