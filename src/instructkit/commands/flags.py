"""Command-line flags generated from a config dataclass: each setting is declared once.

Every field becomes `--field-name`, typed from its annotation (`int | None` also takes
"none"), with the field's docstring as help. A command that shares settings with another
(`data inspect` with `finetune`; `generate`, `chat` and `serve` with each other, from
`GenerationConfig`) takes them from the same dataclass, so their help and defaults cannot
drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from instructkit.config import GenerationConfig, field_help

# The GenerationConfig fields every text-generating command offers (batch_size only where
# many prompts run at once; eos and stop ids come from the tokenizer).
SAMPLING_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    names: Iterable[str] | None = None,
    *,
    layered: bool = False,
    defaults: Mapping[str, Any] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
    metavars: Mapping[str, str] | None = None,
) -> None:
    """Add a flag for each field of `cls` in `names` (all fields when None).

    `layered`: flags default to absent (argparse.SUPPRESS), so a flag overrides a config
    file only when given; the help still names the dataclass default. Otherwise a flag
    defaults to the field's default, or to `defaults[name]` where a command has a reason
    to differ (the reason belongs in a comment at the call).
    """
    helps = field_help(cls)
    by_name = {field.name: field for field in dataclasses.fields(cls)}
    for name in by_name if names is None else names:
        field = by_name[name]
        default = (defaults or {}).get(name, field.default)
        text = helps[name]
        if layered and default == "":
            text += " (required)"
        elif layered and default is not None:  # None means unset: the help says what that does
            text += f" (default: {default})"
        options: dict[str, Any] = {
            "default": argparse.SUPPRESS if layered else default,
            "help": text.replace("%", "%%"),
        }
        annotation = str(field.type)
        if annotation == "bool":
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = value_parser(annotation)
            options["choices"] = (choices or {}).get(name)
            options["metavar"] = (metavars or {}).get(name, name.split("_")[-1].upper())
        parser.add_argument("--" + name.replace("_", "-"), **options)


def value_parser(annotation: str):
    """argparse type for a field annotated like 'int | None' ('none' gives None)."""
    kinds = [part.strip() for part in annotation.split("|")]
    base = {"int": int, "float": float, "str": str}[kinds[0]]

    def parse(text: str):
        if "None" in kinds and text.lower() == "none":
            return None
        return base(text)

    parse.__name__ = kinds[0]  # argparse names the type in "invalid int value" messages
    return parse


def add_generation_flags(
    parser: argparse.ArgumentParser, names: Sequence[str] = SAMPLING_FLAGS
) -> None:
    """`GenerationConfig` fields as flags; unset ones take the dataclass default."""
    add_config_flags(parser, GenerationConfig, names, layered=True)


def generation_config(args: argparse.Namespace) -> GenerationConfig:
    """The GenerationConfig of the flags given, validated (UserError for bad values)."""
    fields = dataclasses.fields(GenerationConfig)
    return GenerationConfig(**{f.name: getattr(args, f.name) for f in fields if f.name in args})
