"""Weights in and out: Hugging Face GPT-2 directories, the hub, the book's state dicts.

`load_pretrained(spec)` turns any supported model spec into a `GPTModel` (and the tokenizer
saved beside it); `save_pretrained` writes the Hugging Face GPT-2 layout, so
`transformers.AutoModelForCausalLM.from_pretrained(dir)` loads a fine-tuned model. GPTModel's
layer names are GPT-2's, so conversion is a rename plus a transpose of the matrices that
GPT-2 stores as `Conv1D` (input-major); every problem names the tensor and the file.
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
from instructkit.model.config import PRESETS, GPTConfig
from instructkit.model.gpt import GPTModel

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
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    *TOKENIZER_FILES,
]
METADATA_FILE = "instructkit.json"
LAYOUT = (
    "a directory holding config.json (GPT-2 fields), model.safetensors (or "
    "pytorch_model.bin) and tokenizer files (vocab.json + merges.txt, or tokenizer.json)"
)
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
) -> tuple[GPTModel, Any]:
    """Load a model from `spec` and return `(model, tokenizer or None)`, model in eval mode.

    spec: a hub id or GPT-2 size (`gpt2`, `gpt2-medium`, `openai-community/gpt2-large`), a
    Hugging Face GPT-2 directory, a run directory (its `model/`), `random:PRESET` (seeded
    GPT-2 initialisation), or a `.pth` state dict of the book's GPTModel. `tokenizer` (a
    spec for `load_tokenizer` or a tokenizer) overrides the one stored with the model.
    `n_heads` is needed only for a book state dict whose size matches no preset.
    """
    spec = str(spec)
    given = resolve_tokenizer(tokenizer)
    if spec.startswith("random:"):
        model = random_model(spec.removeprefix("random:"), given, seed)
        return model, given
    path = Path(spec).expanduser()
    if path.is_dir():
        directory = model_directory(path)
        model = load_hf_directory(directory)
        found = given if given is not None else directory_tokenizer(directory)
    elif path.is_file():
        model, found = load_book_state_dict(path, n_heads), given
    elif spec in HUB_ALIASES or HUB_REPO_ID.match(spec):
        directory = download(HUB_ALIASES.get(spec, spec))
        model = load_hf_directory(directory)
        found = given if given is not None else directory_tokenizer(directory)
    else:
        raise ModelError(
            f"model {spec!r} is not a file, a directory, random:PRESET (presets: "
            f"{', '.join(PRESETS)}) or a hub id (e.g. {', '.join(HUB_ALIASES)})"
        )
    check_vocab(model, found, spec)
    return model.eval(), found


def save_pretrained(
    model: GPTModel,
    tokenizer: Any,
    directory: str | os.PathLike,
    metadata: dict | None = None,
) -> Path:
    """Write `model` in the Hugging Face GPT-2 layout (plus `instructkit.json` metadata).

    The directory is built beside its destination and renamed into place, so a crash never
    leaves a half-written model where a complete one was.
    """
    from safetensors.torch import save_file

    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    config: GPTConfig = model.config
    tensors = to_hf_state_dict(model)
    eos_id = getattr(tokenizer, "eos_id", None)
    if eos_id is None and config.vocab_size == 50257:
        eos_id = 50256
    dtype = next(model.parameters()).dtype
    hf_config = {
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
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ModelError(f"{target}: exists and is not a directory")
    with staging_directory(target) as staging:
        with atomic_path(staging / "model.safetensors") as weights:
            save_file(tensors, str(weights), metadata={"format": "pt"})
        write_json(staging / "config.json", hf_config, sort_keys=True)
        write_json(staging / METADATA_FILE, dict(metadata or {}), sort_keys=True)
        if tokenizer is not None:
            tokenizer.save(staging)
    return target


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


def check_vocab(model: GPTModel, tokenizer: Any, spec: str) -> None:
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ModelError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but model {spec!r} only "
            f"{model.config.vocab_size} embeddings; use the tokenizer the model was trained with"
        )


def random_model(preset: str, tokenizer: Any, seed: int) -> GPTModel:
    """A preset's shape with GPT-2's initialisation, reproducible from `seed`."""
    overrides = {"vocab_size": tokenizer.vocab_size} if tokenizer is not None else {}
    config = GPTConfig.preset(preset, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPTModel(config).eval()


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


def read_hf_config(directory: Path) -> GPTConfig:
    """GPTConfig from a GPT-2 `config.json`, refusing variants GPTModel does not compute."""
    path = directory / "config.json"
    if not path.exists():
        raise ModelError(f"{directory}: no config.json; expected {LAYOUT}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: cannot read: {error}") from error
    problems = []
    if raw.get("model_type", "gpt2") != "gpt2":
        problems.append(f"{path}: model_type is {raw['model_type']!r}; only gpt2 is supported")
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


def read_hf_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of a GPT-2 directory (single or sharded safetensors, or a .bin)."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    legacy = directory / "pytorch_model.bin"
    if single.exists():
        return read_safetensors(single), single
    if index.exists():
        try:
            shards = sorted(
                set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError) as error:
            raise ModelError(f"{index}: cannot read the shard index: {error}") from error
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(directory / shard))
        return tensors, index
    if legacy.exists():
        return read_torch_file(legacy), legacy
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


def load_hf_directory(directory: Path) -> GPTModel:
    config = read_hf_config(directory)
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


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = GPTModel(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_embeddings:
        del shapes["lm_head.weight"]
    return shapes


def build_model(
    config: GPTConfig,
    native: dict[str, torch.Tensor],
    source: Path,
    names: dict[str, str],
    transposed: tuple[str, ...] = (),
) -> GPTModel:
    """GPTModel holding `native` (GPTModel names); every bad tensor is reported under its
    name in the file (`names`), with shapes as stored there (`transposed` suffixes)."""
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
    with torch.device("meta"):
        model = GPTModel(config)
    model = model.to_empty(device="cpu")
    if config.tie_embeddings:
        model.lm_head.weight = model.wte.weight
        native = {**native, "lm_head.weight": native["wte.weight"]}
    model.load_state_dict(native)
    return model


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


BOOK_LAYER = re.compile(r"^trf_blocks\.(\d+)\.")


def load_book_state_dict(path: Path, n_heads: int | None) -> GPTModel:
    """A state dict saved by the book's GPTModel (`torch.save(model.state_dict(), ...)`).

    Sizes come from the tensors; the head count does not show in any shape, so it comes from
    the preset with the same width and depth, or from `n_heads`.
    """
    book = read_torch_file(path)
    problems = [
        f"{path}: missing tensor {name!r}"
        for name in ("tok_emb.weight", "pos_emb.weight")
        if name not in book
    ]
    if problems:
        raise ModelError(problems + [f"{path}: not a state dict of the book's GPTModel"])
    vocab_size, emb_dim = book["tok_emb.weight"].shape
    context_length = book["pos_emb.weight"].shape[0]
    layers = {int(m.group(1)) for name in book if (m := BOOK_LAYER.match(name))}
    n_layers = max(layers) + 1 if layers else 0
    if n_heads is None:
        matches = [
            c.n_heads for c in PRESETS.values() if (c.emb_dim, c.n_layers) == (emb_dim, n_layers)
        ]
        if not matches:
            raise ModelError(
                f"{path}: cannot tell the number of attention heads of a model with emb_dim "
                f"{emb_dim} and {n_layers} layers (no preset matches); pass n_heads"
            )
        n_heads = matches[0]
    out_head = book.get("out_head.weight")
    tied = out_head is not None and torch.equal(out_head, book["tok_emb.weight"])
    config = GPTConfig(
        vocab_size=vocab_size,
        context_length=context_length,
        emb_dim=emb_dim,
        n_heads=n_heads,
        n_layers=n_layers,
        qkv_bias="trf_blocks.0.att.W_query.bias" in book,
        tie_embeddings=tied,
    )
    native, names = book_to_native(book, n_layers, tied, path)
    return build_model(config, native, path, names)


def book_to_native(
    book: dict[str, torch.Tensor], n_layers: int, tied: bool, path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The book's tensors under GPTModel names (its separate W_query/W_key/W_value fused
    into c_attn), and each GPTModel name's name in the book."""
    renames = {
        "tok_emb.weight": "wte.weight",
        "pos_emb.weight": "wpe.weight",
        "final_norm.scale": "ln_f.weight",
        "final_norm.shift": "ln_f.bias",
    }
    if not tied:
        renames["out_head.weight"] = "lm_head.weight"
    block = {
        "att.out_proj.weight": "attn.c_proj.weight",
        "att.out_proj.bias": "attn.c_proj.bias",
        "ff.layers.0.weight": "mlp.c_fc.weight",
        "ff.layers.0.bias": "mlp.c_fc.bias",
        "ff.layers.2.weight": "mlp.c_proj.weight",
        "ff.layers.2.bias": "mlp.c_proj.bias",
        "norm1.scale": "ln_1.weight",
        "norm1.shift": "ln_1.bias",
        "norm2.scale": "ln_2.weight",
        "norm2.shift": "ln_2.bias",
    }
    for i in range(n_layers):
        renames.update({f"trf_blocks.{i}.{k}": f"h.{i}.{v}" for k, v in block.items()})
    names = {new: old for old, new in renames.items()}
    native, used = {}, set()
    for old, new in renames.items():
        if old in book:
            native[new] = book[old]
            used.add(old)
    problems = []
    for i in range(n_layers):
        for kind in ("weight", "bias"):
            qkv = [f"trf_blocks.{i}.att.W_{part}.{kind}" for part in ("query", "key", "value")]
            present = [name for name in qkv if name in book]
            if kind == "bias" and not present:
                continue  # qkv_bias=False
            fused = f"h.{i}.attn.c_attn.{kind}"
            names[fused] = f"trf_blocks.{i}.att.W_query/W_key/W_value.{kind} (stacked)"
            problems += [f"{path}: missing tensor {name!r}" for name in qkv if name not in book]
            if len(present) < 3:
                continue
            parts = [book[name] for name in qkv]
            if len({tuple(part.shape) for part in parts}) != 1:
                shapes = ", ".join(f"{n} {list(p.shape)}" for n, p in zip(qkv, parts))
                problems.append(f"{path}: query/key/value tensors differ in shape: {shapes}")
            else:
                native[fused] = torch.cat(parts, dim=0)  # (3C, C) or (3C,)
            used.update(qkv)
    if problems:
        raise ModelError(problems)
    if tied:
        used.add("out_head.weight")
    for name, tensor in book.items():
        if name in used or name.endswith(".att.mask"):  # the book's causal-mask buffer
            continue
        native[name] = tensor  # reported as unexpected by build_model
    return native, names
