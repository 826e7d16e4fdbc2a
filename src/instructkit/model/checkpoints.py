"""Weights in and out: Hugging Face directories, the hub, the book's state dicts.

`load_pretrained(spec)` turns any supported model spec into a `GPTModel` or, for Llama /
Qwen2 / Qwen3 directories, a `DecoderModel` (and the tokenizer saved beside it);
`save_pretrained` writes the same Hugging Face layout back, so
`transformers.AutoModelForCausalLM.from_pretrained(dir)` loads a fine-tuned model. Layer
names are Hugging Face's, so conversion is a rename (plus, for GPT-2, a transpose of the
matrices it stores as `Conv1D`, input-major); every problem names the tensor and the file.
What the families' `config.json` fields mean is `decoder_checkpoints`'s business.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from instructkit.errors import ModelError
from instructkit.files import atomic_path, staging_directory, write_json
from instructkit.model import decoder_checkpoints as families
from instructkit.model.book_checkpoint import book_weights
from instructkit.model.config import PRESETS, GPTConfig
from instructkit.model.decoder import DecoderModel
from instructkit.model.decoder_config import DECODER_PRESETS, DecoderConfig
from instructkit.model.gpt import GPTModel

Model = GPTModel | DecoderModel

HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
HUB_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
TOKENIZER_FILES = ["tokenizer.json", "vocab.json", "merges.txt"]
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    *TOKENIZER_FILES,
]
METADATA_FILE = "instructkit.json"
LAYOUT = (
    "a directory holding config.json (GPT-2, Llama, Qwen2 or Qwen3), model.safetensors "
    "(or sharded model-*.safetensors with model.safetensors.index.json, or pytorch_model.bin) "
    "and tokenizer files (tokenizer.json, or vocab.json + merges.txt)"
)
SHARD_BYTES = 5 * 2**30  # transformers' default max_shard_size
# Matrices GPT-2 stores as Conv1D (in_features, out_features): transposed versus nn.Linear.
CONV1D_SUFFIXES = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# Non-persistent buffers that older GPT-2 checkpoints carry (the causal mask).
HF_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
MAX_PROBLEMS = 20


def load_pretrained(
    spec: str | os.PathLike,
    tokenizer: Any = None,
    seed: int = 0,
    *,
    n_heads: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Model, Any]:
    """Load a model from `spec` and return `(model, tokenizer or None)`, model in eval mode.

    spec: a hub id or GPT-2 size (`gpt2`, `gpt2-medium`, `Qwen/Qwen3-0.6B`), a Hugging Face
    directory (GPT-2, Llama, Qwen2, Qwen3), a run directory (its `model/`), `random:PRESET`
    (seeded initialisation), or a `.pth` state dict of the book's GPTModel. `tokenizer` (a
    spec for `load_tokenizer` or a tokenizer) overrides the one stored with the model.
    `n_heads` is needed only for a book state dict whose size matches no preset. Llama and
    Qwen weights (often bf16 on disk) are loaded as `dtype`: fp32 master weights for
    training by default. Their end ids (`generation_config.json`) are `model.eos_ids`.
    """
    spec = str(spec)
    given = resolve_tokenizer(tokenizer)
    if spec.startswith("random:"):
        model = random_model(spec.removeprefix("random:"), given, seed)
        return model, given
    path = Path(spec).expanduser()
    if path.is_dir():
        directory = model_directory(path)
        model = load_hf_directory(directory, dtype)
        found = given if given is not None else directory_tokenizer(directory)
    elif path.is_file():
        config, native, names = book_weights(read_torch_file(path), path, n_heads)
        model, found = build_model(config, native, path, names), given
    elif spec in HUB_ALIASES or HUB_REPO_ID.match(spec):
        directory = download(HUB_ALIASES.get(spec, spec))
        model = load_hf_directory(directory, dtype)
        found = given if given is not None else directory_tokenizer(directory)
    else:
        raise ModelError(
            f"model {spec!r} is not a file, a directory, random:PRESET (presets: "
            f"{', '.join([*PRESETS, *DECODER_PRESETS])}) or a hub id "
            f"(e.g. {', '.join(HUB_ALIASES)}, Qwen/Qwen3-0.6B)"
        )
    check_vocab(model, found, spec)
    return model.eval(), found


def save_pretrained(
    model: Model,
    tokenizer: Any,
    directory: str | os.PathLike,
    metadata: dict | None = None,
) -> Path:
    """Write `model` in its Hugging Face layout (plus `instructkit.json` metadata): GPT-2's,
    or for a DecoderModel its family's class, config fields and end ids.

    `generation_config.json` lists every end id (the model's and the tokenizer's `end_ids`),
    and the tokenizer's files carry its chat template, so generation from the saved
    directory renders and stops as the original model does.

    The directory is built beside its destination and renamed into place, so a crash never
    leaves a half-written model where a complete one was.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    dtype = next(model.parameters()).dtype
    tokenizer_ends = list(getattr(tokenizer, "end_ids", ()))
    if isinstance(model, DecoderModel):
        tensors = decoder_state_dict(model)
        eos_ids = list(dict.fromkeys([*model.eos_ids, *tokenizer_ends]))
        configs = {"config.json": families.config_to_hf(model.config, dtype, eos_ids)}
        if eos_ids:
            configs[families.GENERATION_CONFIG] = families.generation_config(eos_ids)
    else:
        tensors = to_hf_state_dict(model)
        configs = {"config.json": gpt2_config(model.config, tokenizer, dtype)}
        if len(tokenizer_ends) > 1:  # a chat tokenizer's end-of-turn ids travel with the run
            configs[families.GENERATION_CONFIG] = families.generation_config(tokenizer_ends)
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ModelError(f"{target}: exists and is not a directory")
    with staging_directory(target) as staging:
        write_safetensors(staging, tensors)
        for name, content in configs.items():
            write_json(staging / name, content, sort_keys=True)
        write_json(staging / METADATA_FILE, dict(metadata or {}), sort_keys=True)
        if tokenizer is not None:
            tokenizer.save(staging)
    return target


def gpt2_config(config: GPTConfig, tokenizer: Any, dtype: torch.dtype) -> dict:
    """GPT-2's `config.json` for `config`."""
    eos_id = getattr(tokenizer, "eos_id", None)
    if eos_id is None and config.vocab_size == 50257:
        eos_id = 50256
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.emb_dim,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.drop_rate,
        "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def write_safetensors(
    directory: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int = SHARD_BYTES
) -> None:
    """`model.safetensors`, or shards of at most `max_shard_bytes` plus the index
    transformers reads (`model-00001-of-00003.safetensors`, ...)."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    files = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        for number in range(1, len(shards) + 1)
    ]  # fmt: skip
    for file, shard in zip(files, shards):
        with atomic_path(directory / file) as path:
            save_file(shard, str(path), metadata={"format": "pt"})
    if len(shards) > 1:
        weight_map = {name: file for file, shard in zip(files, shards) for name in shard}
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        write_json(
            directory / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": weight_map},
            sort_keys=True,
        )


def read_metadata(directory: str | os.PathLike) -> dict:
    """The `instructkit.json` saved with a model ({} when there is none)."""
    path = model_directory(Path(directory)) / METADATA_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: cannot read model metadata: {error}") from error
    if not isinstance(data, dict):
        raise ModelError(f"{path}: model metadata must be a JSON object")
    return data


def model_directory(path: Path) -> Path:
    """A run directory's `model/`, or `path` itself."""
    if (path / "model" / "config.json").exists():
        return path / "model"
    return path


def resolve_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None:
        return None
    from instructkit import tokenizer as tokenizers

    if isinstance(tokenizer, str | os.PathLike):
        return tokenizers.load_tokenizer(str(tokenizer))
    if not hasattr(tokenizer, "eos_id"):
        return tokenizers.as_tokenizer(tokenizer)
    return tokenizer


def directory_tokenizer(directory: Path) -> Any:
    """The tokenizer saved in a model directory, or None (with a warning) when it has none."""
    has_files = (directory / "tokenizer.json").exists() or (
        (directory / "vocab.json").exists() and (directory / "merges.txt").exists()
    )
    if not has_files:
        warnings.warn(
            f"{directory} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt); "
            "loading the model without a tokenizer",
            stacklevel=3,
        )
        return None
    from instructkit.tokenizer import load_tokenizer

    return load_tokenizer(str(directory))


def check_vocab(model: Model, tokenizer: Any, spec: str) -> None:
    """A model vocabulary larger than the tokenizer's is fine (Llama's and Qwen's are
    padded); a smaller one would embed ids that do not exist."""
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ModelError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but model {spec!r} only "
            f"{model.config.vocab_size} embeddings; use the tokenizer the model was trained with"
        )


def random_model(preset: str, tokenizer: Any, seed: int) -> Model:
    """A preset's shape with its family's initialisation, reproducible from `seed`."""
    overrides = {"vocab_size": tokenizer.vocab_size} if tokenizer is not None else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if preset in DECODER_PRESETS:
            model = DecoderModel(DecoderConfig.preset(preset, **overrides))
            if tokenizer is not None:
                model.eos_ids = list(getattr(tokenizer, "end_ids", (tokenizer.eos_id,)))
            return model.eval()
        return GPTModel(GPTConfig.preset(preset, **overrides)).eval()


def download(repo_id: str) -> Path:
    """The hub snapshot of `repo_id` (cached by huggingface_hub), only the files we read."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as error:  # offline, unknown repo, auth: all mean "supply it locally"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(
            f"{repo_id!r} is no local file or directory, and cannot be downloaded from the "
            f"Hugging Face Hub ({reason}); offline, fetch it "
            f"where there is internet (`hf download {repo_id} --local-dir DIR`) and pass DIR: "
            f"{LAYOUT}"
        ) from error


def read_config_json(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.exists():
        raise ModelError(f"{directory}: no config.json; expected {LAYOUT}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: cannot read: {error}") from error
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: not a JSON object")
    return raw


def gpt2_config_from_hf(raw: dict, path: Path) -> GPTConfig:
    """GPTConfig from a GPT-2 `config.json`, refusing variants GPTModel does not compute."""
    problems = []
    if raw.get("model_type", "gpt2") != "gpt2":
        problems.append(
            f"{path}: model_type is {raw['model_type']!r}; supported: gpt2, llama, qwen2, qwen3"
        )
    missing = [key for key in ("vocab_size", "n_embd", "n_layer", "n_head") if key not in raw]
    if "n_positions" not in raw and "n_ctx" not in raw:
        missing.append("n_positions")
    if missing:
        problems.append(f"{path}: missing fields {', '.join(missing)}")
    if raw.get("activation_function", "gelu_new") not in TANH_GELUS:
        problems.append(
            f"{path}: activation_function {raw['activation_function']!r} is not supported "
            f"(GPT-2 uses {' or '.join(TANH_GELUS)})"
        )
    if raw.get("n_inner") not in (None, 4 * raw.get("n_embd", 0)):
        problems.append(f"{path}: n_inner {raw['n_inner']} is not 4 * n_embd")
    if abs(raw.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        problems.append(f"{path}: layer_norm_epsilon {raw['layer_norm_epsilon']} is not 1e-5")
    if raw.get("scale_attn_by_inverse_layer_idx") or raw.get("scale_attn_weights") is False:
        problems.append(f"{path}: non-standard attention scaling is not supported")
    if problems:
        raise ModelError(problems)
    return GPTConfig(
        vocab_size=raw["vocab_size"],
        context_length=raw.get("n_positions", raw.get("n_ctx")),
        emb_dim=raw["n_embd"],
        n_heads=raw["n_head"],
        n_layers=raw["n_layer"],
        drop_rate=0.0,  # dropout is a training choice (the book fine-tunes without); see set_dropout
        qkv_bias=True,
        tie_embeddings=raw.get("tie_word_embeddings", True),
    )


def read_hf_weights(
    directory: Path, dtype: torch.dtype | None = None
) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of a model directory (single or sharded safetensors, or a .bin), floating
    ones converted to `dtype` (if given) shard by shard, so only one shard is ever held twice."""

    def convert(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if dtype is None:
            return tensors
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}

    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    legacy = directory / "pytorch_model.bin"
    if single.exists():
        return convert(read_safetensors(single)), single
    if index.exists():
        try:
            shards = sorted(
                set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError) as error:
            raise ModelError(f"{index}: cannot read the shard index: {error}") from error
        tensors = {}
        for shard in shards:
            tensors.update(convert(read_safetensors(directory / shard)))
        return tensors, index
    if legacy.exists():
        return convert(read_torch_file(legacy)), legacy
    raise ModelError(f"{directory}: no model.safetensors or pytorch_model.bin; expected {LAYOUT}")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ModelError(f"{path}: cannot read (corrupt or incomplete file?): {error}") from error


def read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unreadable pickles
        raise ModelError(
            f"{path}: cannot read (corrupt file, or not a state dict?): {error}"
        ) from error
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]  # the book's checkpoint with optimizer state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    return {strip_wrappers(name): tensor for name, tensor in state.items()}


def strip_wrappers(name: str) -> str:
    """Drop prefixes that torch.compile and DDP add to parameter names."""
    for prefix in ("_orig_mod.", "module."):
        name = name.removeprefix(prefix)
    return name


def load_hf_directory(directory: Path, dtype: torch.dtype = torch.float32) -> Model:
    """The model of a Hugging Face directory: Llama / Qwen families in `dtype`, GPT-2 as
    stored."""
    raw = read_config_json(directory)
    if families.decoder_family(raw) is not None:
        config = families.config_from_hf(raw, directory / "config.json")
        tensors, source = read_hf_weights(directory, dtype)
        renames = families.native_names(tensors, config)
        native = {new: tensors[old] for old, new in renames.items()}
        names = {new: old for old, new in renames.items()}
        names.update({n: families.hf_name(n) for n in expected_shapes(config) if n not in names})
        model = build_model(config, native, source, names)
        model.eos_ids = families.read_eos_ids(directory, raw)
        return model
    config = gpt2_config_from_hf(raw, directory / "config.json")
    tensors, source = read_hf_weights(directory)
    native, names = {}, {}
    for original, tensor in tensors.items():
        name = original.removeprefix("transformer.")
        if name.endswith(HF_IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and config.tie_embeddings:
            continue  # the same matrix as wte.weight
        native[name] = tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor
        names[name] = original
    for name in expected_shapes(config):
        names.setdefault(name, name if name == "lm_head.weight" else "transformer." + name)
    return build_model(config, native, source, names, transposed=CONV1D_SUFFIXES)


def empty_model(config: GPTConfig | DecoderConfig) -> Model:
    """The model for `config` on the meta device: shapes without memory."""
    with torch.device("meta"):
        return DecoderModel(config) if isinstance(config, DecoderConfig) else GPTModel(config)


def expected_shapes(config: GPTConfig | DecoderConfig) -> dict[str, tuple[int, ...]]:
    shapes = {name: tuple(t.shape) for name, t in empty_model(config).state_dict().items()}
    if config.tie_embeddings:
        del shapes["lm_head.weight"]
    return shapes


def build_model(
    config: GPTConfig | DecoderConfig,
    native: dict[str, torch.Tensor],
    source: Path,
    names: dict[str, str],
    transposed: tuple[str, ...] = (),
) -> Model:
    """The model holding `native` (its own tensor names); every bad tensor is reported under
    its name in the file (`names`), with shapes as stored there (`transposed` suffixes).
    The tensors become the parameters (no copy: a model is held in memory once)."""
    shapes = expected_shapes(config)

    def stored(name: str, shape: tuple[int, ...]) -> list[int]:
        return list(reversed(shape)) if name.endswith(transposed or ("\0",)) else list(shape)

    problems = []
    for name, shape in shapes.items():
        if name not in native:
            problems.append(f"{source}: missing tensor {names.get(name, name)!r}")
        elif tuple(native[name].shape) != shape:
            problems.append(
                f"{source}: tensor {names.get(name, name)!r} has shape "
                f"{stored(name, tuple(native[name].shape))}, expected {stored(name, shape)} "
                f"for {config}"
            )
    problems += [
        f"{source}: unexpected tensor {names.get(name, name)!r}"
        for name in native
        if name not in shapes
    ]
    if problems:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"{source}: ... and {len(problems) - MAX_PROBLEMS} more tensor problems")
        raise ModelError(shown)
    model = empty_model(config)
    native = {name: tensor.contiguous() for name, tensor in native.items()}
    embedding = "embed_tokens.weight" if isinstance(model, DecoderModel) else "wte.weight"
    if config.tie_embeddings:
        native["lm_head.weight"] = native[embedding]
    model.load_state_dict(native, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.get_parameter(embedding)
    return model


def decoder_state_dict(model: DecoderModel) -> dict[str, torch.Tensor]:
    """Hugging Face names (`model.` prefix), contiguous CPU copies ready for safetensors."""
    expected = expected_shapes(model.config)
    hf = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue
        if name not in expected:
            raise ModelError(
                f"cannot save tensor {name!r}: not part of a {model.config.family} model "
                "(merge LoRA adapters into the model before saving it)"
            )
        hf[families.hf_name(name)] = tensor.detach().cpu().contiguous().clone()
    return hf


def to_hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """GPT-2 names and layouts, contiguous CPU copies ready for safetensors."""
    config = model.config
    expected = expected_shapes(config)
    hf = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        if name not in expected:
            raise ModelError(
                f"cannot save tensor {name!r}: not part of a GPT-2 model (merge LoRA adapters "
                "into the model before saving it)"
            )
        tensor = tensor.detach().cpu()
        tensor = tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor
        hf_name = name if name == "lm_head.weight" else "transformer." + name
        hf[hf_name] = tensor.contiguous().clone()
        if name.endswith("attn.c_attn.weight") and not config.qkv_bias:
            hf[hf_name.replace(".weight", ".bias")] = tensor.new_zeros(3 * config.emb_dim)
    return hf
