"""LoRA: low-rank adapters on the model's linear layers (the book's appendix E).

`apply_lora` replaces each attention and MLP `nn.Linear` with `LinearWithLoRA`, which
adds `scale * x @ A @ B` to the frozen layer's output (A: in x r, B: r x out, B starts
at zero so the wrapped model starts out identical). The scale is `alpha / rank`, the
original paper's choice; the book's first printing used `alpha` alone, so its
`rank=16, alpha=16` corresponds to `alpha = 256` here. `merge_lora` folds the adapters
back into plain `nn.Linear` weights, so a merged model saves and loads as plain GPT-2.
Adapters alone are saved to and loaded from a safetensors file.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from instructkit.errors import ModelError
from instructkit.files import atomic_path

ADAPTER_FILE = "adapter.safetensors"


class LoRALayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(rank, out_dim))
        self.rank = rank
        self.alpha = alpha

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x @ self.A @ self.B)  # (..., in) -> (..., out)

    def delta_weight(self) -> torch.Tensor:
        """The update in nn.Linear's (out, in) layout."""
        return self.scale * (self.A @ self.B).T  # (out, in)


class LinearWithLoRA(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)
        self.lora.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.lora(x)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing what this layer computes."""
        linear = self.linear
        with torch.no_grad():
            linear.weight += self.lora.delta_weight().to(linear.weight.dtype)
        return linear


def lora_targets(model: nn.Module) -> list[str]:
    """Qualified names of the linear layers to adapt: those inside the transformer blocks
    (GPT-2's c_attn/c_proj/c_fc; Llama's and Qwen's q/k/v/o and gate/up/down projections).

    The output head (and anything mapping onto the vocabulary) stays as it is, so the
    merged model keeps its Hugging Face layout and the tied-embedding convention of any loader.
    """
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.split(".")[-1] not in ("out_head", "lm_head")
        and module.out_features != vocab
    ]


def apply_lora(model: nn.Module, rank: int, alpha: float) -> list[str]:
    """Wrap the target linear layers in place, freeze everything but the adapters.

    Returns the wrapped layer names.
    """
    targets = lora_targets(model)
    for param in model.parameters():
        param.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LinearWithLoRA(getattr(parent, child), rank, alpha))
    return targets


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its linear layer in place; all weights trainable again."""
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LinearWithLoRA)]
    for name in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, getattr(parent, child).merged())
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().contiguous()
        for name, param in model.named_parameters()
        if ".lora." in f".{name}"
    }


def save_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the adapters alone (a few MB) with their rank and alpha, atomically."""
    from safetensors.torch import save_file

    layers = [m for m in model.modules() if isinstance(m, LoRALayer)]
    if not layers:
        raise ValueError("model has no LoRA adapters to save")
    metadata = {"rank": str(layers[0].rank), "alpha": str(layers[0].alpha)}
    with atomic_path(path) as temp:
        save_file({k: v.cpu() for k, v in adapter_state_dict(model).items()}, str(temp), metadata)


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Wrap a plain model with the adapters saved at `path` (in place)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        rank, alpha = int(metadata["rank"]), float(metadata["alpha"])
    except (OSError, KeyError, ValueError, SafetensorError) as error:
        raise ModelError(f"{path}: not an instructkit LoRA adapter file ({error})") from None
    apply_lora(model, rank, alpha)
    missing = set(adapter_state_dict(model)) - set(tensors := load_file(os.fspath(path)))
    if missing:
        raise ModelError(f"{path}: adapter file lacks {', '.join(sorted(missing)[:3])}")
    model.load_state_dict(tensors, strict=False)
    return model
