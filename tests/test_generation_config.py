"""GenerationConfig: every problem listed at once, nan/inf refused, and the one source of the
sampling flags of `generate`, `chat` and `serve` (same flags, same defaults, same help)."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from instructkit.cli import build_parser, main
from instructkit.commands.flags import generation_config
from instructkit.config import GenerationConfig
from instructkit.errors import UserError

SAMPLING = ("--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed")


def test_defaults_are_greedy_and_every_problem_is_reported():
    config = GenerationConfig()
    assert (config.max_new_tokens, config.temperature, config.top_k, config.top_p) == (
        256,
        0.0,
        None,
        None,
    )
    assert (config.seed, config.batch_size, config.end_ids) == (None, 8, ())
    with pytest.raises(UserError) as caught:
        GenerationConfig(max_new_tokens=0, temperature=-1.0, top_k=0, top_p=1.5, batch_size=0)
    problems = caught.value.problems
    assert len(problems) == 5
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "batch_size"):
        assert sum(f"generation: {name} must be" in problem for problem in problems) == 1


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_temperature_must_be_finite(value):
    with pytest.raises(UserError, match="temperature must be a finite number"):
        GenerationConfig(temperature=value)
    with pytest.raises(UserError, match="top_p must be in"):
        GenerationConfig(top_p=value)


def test_seed_range_and_end_ids():
    with pytest.raises(UserError, match="seed must be from"):
        GenerationConfig(seed=2**64)
    assert GenerationConfig(eos_id=5, stop_ids=(7, 9)).end_ids == (5, 7, 9)
    with pytest.raises(UserError, match="token ids must be >= 0"):
        GenerationConfig(stop_ids=(-1,))


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_generate_refuses_a_bad_temperature_in_one_line_before_loading(value, capsys):
    # The model does not exist: the settings are checked before anything loads.
    code = main(["generate", "--model", "no/such-model", "--prompt", "Hi", "--temperature", value])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [err.strip()] and err.startswith("error: generation: temperature")


def sampling_flags(command: str) -> dict[str, tuple]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        flag: (action.help, action.default, action.type.__name__, action.metavar)
        for action in commands.choices[command]._actions
        for flag in action.option_strings
        if flag in SAMPLING or flag == "--batch-size"
    }


def test_generate_chat_and_serve_share_the_sampling_flags():
    generate, chat, serve = (sampling_flags(c) for c in ("generate", "chat", "serve"))
    assert set(chat) == set(serve) == set(SAMPLING)
    assert set(generate) == {*SAMPLING, "--batch-size"}
    assert {flag: generate[flag] for flag in SAMPLING} == chat == serve
    defaults = GenerationConfig()
    for flag in (*SAMPLING, "--batch-size"):
        value = getattr(defaults, flag.removeprefix("--").replace("-", "_"))
        text = generate[flag][0]
        # an unset (None) default is explained by the help text itself
        assert text.endswith(f"(default: {value})") if value is not None else "none:" in text


def test_none_and_given_values_parse_into_the_config():
    parser = build_parser()
    args = parser.parse_args(["chat", "--model", "m", "--top-k", "5", "--seed", "none"])
    assert generation_config(args) == dataclasses.replace(GenerationConfig(), top_k=5, seed=None)
    args = parser.parse_args(["generate", "--model", "m", "--prompt", "x", "--seed", "3"])
    assert generation_config(args) == GenerationConfig(seed=3)
