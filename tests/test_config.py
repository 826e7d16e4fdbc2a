"""FinetuneConfig: book defaults, validation with every problem listed, YAML round trip."""

from __future__ import annotations

import pytest

from instructkit.config import (
    FinetuneConfig,
    config_from_dict,
    field_help,
    load_config,
    save_config,
)
from instructkit.errors import UserError


def test_defaults_are_the_books():
    config = FinetuneConfig(data="d.json", out="runs/x")
    assert (config.lr, config.weight_decay, config.batch_size, config.epochs) == (5e-5, 0.1, 8, 2)
    # "auto" is the book split unless every record names its own split
    assert (config.allowed_max_length, config.style, config.split) == (1024, None, "auto")
    assert config.train_on == "assistant"
    assert (config.warmup_steps, config.lr_schedule, config.grad_clip) == (0, "constant", None)


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as caught:
        FinetuneConfig(data="", out="o", epochs=0, lr=-1.0, split="random", precision="fp8")
    problems = "\n".join(caught.value.problems)
    for field in ("data:", "epochs:", "lr:", "split:", "precision:"):
        assert field in problems
    assert len(caught.value.problems) == 5


def test_yaml_round_trip(tmp_path):
    config = FinetuneConfig(data="d.json", out="runs/x", lora_rank=4, max_steps=10, grad_clip=1.0)
    save_config(config, tmp_path / "config.yaml")
    assert config_from_dict(load_config(tmp_path / "config.yaml")) == config
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_unknown_keys_and_wrong_types_name_the_source(tmp_path):
    with pytest.raises(UserError, match=r"cfg.yaml: unknown setting 'learning_rate'"):
        config_from_dict({"data": "d", "out": "o", "learning_rate": 1}, source="cfg.yaml")
    with pytest.raises(UserError, match=r"cfg.yaml: epochs should be int, got 'two'"):
        config_from_dict({"data": "d", "out": "o", "epochs": "two"}, source="cfg.yaml")
    # ints are fine where floats are expected, bools are not ints
    assert config_from_dict({"data": "d", "out": "o", "lr": 1}).lr == 1
    with pytest.raises(UserError, match="batch_size should be int"):
        config_from_dict({"data": "d", "out": "o", "batch_size": True})


def test_bad_yaml_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_every_field_has_help():
    helps = field_help(FinetuneConfig)
    assert set(helps) == set(FinetuneConfig.__dataclass_fields__)
    assert "AdamW" in helps["lr"]
