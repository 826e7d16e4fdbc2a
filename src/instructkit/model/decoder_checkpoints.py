"""Llama / Qwen2 / Qwen3 checkpoints: their `config.json`, tensor names and end ids.

`checkpoints.py` reads and writes the files (safetensors shards, staging directories);
this module knows what the Hugging Face layout of the three families means: which
`config.json` fields become which `DecoderConfig` field (spelt as the hub spells them,
including transformers-5's `rope_parameters` and the older `rope_theta` + `rope_scaling`),
the `model.` prefix of tensor names, and the end-of-turn ids of `generation_config.json`
(Llama 3 ends a turn with `<|eot_id|>` and a text with `<|end_of_text|>`: either stops).
Variants the decoder does not compute (sliding windows, other rope types, other
activations) are refused with the field that says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from instructkit.errors import ModelError
from instructkit.model.decoder_config import FAMILIES, DecoderConfig, RopeScaling

ARCHITECTURE_FAMILY = {architecture: family for family, (architecture, _) in FAMILIES.items()}
MODEL_TYPE_FAMILY = {model_type: family for family, (_, model_type) in FAMILIES.items()}
GENERATION_CONFIG = "generation_config.json"


def decoder_family(raw: dict) -> str | None:
    """The family a `config.json` describes, or None when it is not one of ours."""
    for architecture in raw.get("architectures") or []:
        if architecture in ARCHITECTURE_FAMILY:
            return ARCHITECTURE_FAMILY[architecture]
    return MODEL_TYPE_FAMILY.get(raw.get("model_type"))


def config_from_hf(raw: dict, path: Path) -> DecoderConfig:
    """DecoderConfig from a family's `config.json` (`path` names it in error messages)."""
    family = decoder_family(raw)
    assert family is not None, "decoder_family(raw) is checked first"
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
    missing = [key for key in (*required, "num_attention_heads") if key not in raw]
    if missing:
        raise ModelError(f"{path}: missing fields {', '.join(missing)}")
    problems = []
    if raw.get("hidden_act", "silu") != "silu":
        problems.append(f"{path}: hidden_act {raw['hidden_act']!r} is not supported (silu only)")
    if raw.get("use_sliding_window"):
        problems.append(f"{path}: use_sliding_window is not supported")
    theta, scaling, rope_problems = rope_from_hf(raw, path)
    problems += rope_problems
    if problems:
        raise ModelError(problems)
    attention_bias = bool(raw.get("attention_bias", False))
    heads = raw["num_attention_heads"]
    return DecoderConfig(
        family=family,
        vocab_size=raw["vocab_size"],
        context_length=raw.get("max_position_embeddings", 2048),
        emb_dim=raw["hidden_size"],
        hidden_dim=raw["intermediate_size"],
        n_heads=heads,
        n_kv_heads=raw.get("num_key_value_heads") or heads,
        n_layers=raw["num_hidden_layers"],
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=raw.get("rms_norm_eps", 1e-6),
        qkv_bias=True if family == "qwen2" else attention_bias,  # Qwen2 always has it
        out_bias=False if family == "qwen2" else attention_bias,
        mlp_bias=bool(raw.get("mlp_bias", False)) if family == "llama" else False,
        qk_norm=family == "qwen3",
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        drop_rate=0.0,  # dropout is a training choice; see set_dropout
    )


def rope_from_hf(raw: dict, path: Path) -> tuple[float, RopeScaling | None, list[str]]:
    """(rope_theta, llama3 scaling or None, problems) from either spelling of the fields."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) != 1.0:
        return theta, None, [f"{path}: partial_rotary_factor is not supported"]
    if kind == "default":
        return theta, None, []
    if kind != "llama3":
        return theta, None, [f"{path}: rope type {kind!r} is not supported (default, llama3)"]
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [key for key in keys if key not in params]
    if missing:
        return theta, None, [f"{path}: llama3 rope scaling lacks {', '.join(missing)}"]
    scaling = RopeScaling(
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_context_length=int(params["original_max_position_embeddings"]),
    )
    return theta, scaling, []


def config_to_hf(config: DecoderConfig, dtype: torch.dtype, eos_ids: list[int]) -> dict:
    """The `config.json` transformers builds the same model from (4.x and 5.x both read
    `rope_theta` + `rope_scaling`)."""
    architecture, model_type = FAMILIES[config.family]
    if config.family == "qwen2" and (not config.qkv_bias or config.out_bias or config.mlp_bias):
        raise ModelError("a qwen2 model has q/k/v bias and no other bias; cannot save this one")
    if config.family != "llama" and config.mlp_bias:
        raise ModelError(f"a {config.family} model has no MLP bias; cannot save this one")
    if config.family != "qwen2" and config.qkv_bias != config.out_bias:
        raise ModelError(f"a {config.family} model's attention_bias covers q/k/v and output")
    if config.qk_norm != (config.family == "qwen3"):
        raise ModelError(f"q/k norm is Qwen3's alone; cannot save it as {config.family}")
    scaling = config.rope_scaling
    hf = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.context_length,
        "hidden_size": config.emb_dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None
        if scaling is None
        else {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_context_length,
        },
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_embeddings,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None),
    }
    if config.family == "llama":
        hf.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    elif config.family == "qwen3":
        hf.update(attention_bias=config.qkv_bias, use_sliding_window=False)
    else:
        hf.update(use_sliding_window=False)
    return hf


def read_eos_ids(directory: Path, raw: dict) -> list[int]:
    """End ids: `generation_config.json`'s (what generation stops at), else config.json's."""
    path = directory / GENERATION_CONFIG
    found = raw.get("eos_token_id")
    if path.exists():
        try:
            found = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id", found)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
            raise ModelError(f"{path}: cannot read: {error}") from error
    ids = found if isinstance(found, list) else [found]
    return [int(i) for i in ids if isinstance(i, int) and not isinstance(i, bool)]


def generation_config(eos_ids: list[int]) -> dict:
    return {"eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids}


def native_names(tensors: dict[str, torch.Tensor], config: DecoderConfig) -> dict[str, str]:
    """Each file tensor name -> DecoderModel name (drop `model.`; a tied head's copy goes)."""
    names = {}
    for name in tensors:
        if name == "lm_head.weight" and config.tie_embeddings:
            continue  # the same matrix as embed_tokens.weight
        if name.endswith(".rotary_emb.inv_freq"):
            continue  # a cached buffer some older checkpoints carry
        names[name] = name.removeprefix("model.")
    return names


def hf_name(name: str) -> str:
    """The file's name for a DecoderModel tensor name."""
    return name if name == "lm_head.weight" else "model." + name
