"""The book's own state dicts (`torch.save(model.state_dict(), "model.pth")`) as GPTModel.

The book's GPTModel names its layers its own way (`tok_emb`, `trf_blocks.0.att.W_query`,
`ff.layers.0`) and keeps query, key and value apart; this maps them onto GPTModel's GPT-2
names, fusing q/k/v into `c_attn`. `checkpoints.load_pretrained` reads the file and builds
the model.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from instructkit.errors import ModelError
from instructkit.model.config import PRESETS, GPTConfig

BOOK_LAYER = re.compile(r"^trf_blocks\.(\d+)\.")


def book_weights(
    book: dict[str, torch.Tensor], path: Path, n_heads: int | None
) -> tuple[GPTConfig, dict[str, torch.Tensor], dict[str, str]]:
    """The config, the tensors under GPTModel names, and each one's name in the book, of
    a state dict saved by the book's GPTModel (`torch.save(model.state_dict(), ...)`).

    Sizes come from the tensors; the head count does not show in any shape, so it comes from
    the preset with the same width and depth, or from `n_heads`.
    """
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
    return config, native, names


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
