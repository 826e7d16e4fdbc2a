"""A model ready to generate: weights (model/), tokenizer and prompt style (data/) from one
spec, on a device. It sits above both packages, so model/ never imports data/.

`instructkit generate`, `chat`, `serve` and the demo all load a model this way, so a run
directory answers in the prompt style it was trained with: the style comes from `--style`,
else from the model directory's `instructkit.json`, else the model's own chat template
(a tokenizer_config.json with one), else the book's alpaca format. The
tokenizer is the one given, else the one saved with the model, else GPT-2's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from instructkit.data.chat_template import default_style_for
from instructkit.data.chat_template import resolve_style as style_by_name
from instructkit.errors import UserError
from instructkit.model.checkpoints import check_vocab, load_pretrained, read_metadata

DEFAULT_STYLE = "alpaca"


def pick_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' is CUDA when available, else the CPU; 'cuda' is the rank's own GPU under torchrun."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    try:
        return torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device {spec!r} is not auto, cpu, cuda, cuda:N or mps") from None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX; oneDNN's own check).

    Without it torch emulates bf16 matmuls, hundreds of times slower than fp32 (0.3 against
    110 GFLOP/s measured on an AVX2 Zen 3), so bf16 is only a default where this is True.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_device(device: torch.device, spec: str) -> torch.device:
    """`device` if this machine has it, else a one-line UserError naming --device (before any
    model is loaded: `generate`, `chat`, `serve` and `finetune` all check here)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec} asked for, but no CUDA device is available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(
                f"--device {spec} asked for, but this machine has {count} CUDA "
                f"device{'' if count == 1 else 's'} (cuda:0 to cuda:{count - 1})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {spec} asked for, but MPS (Apple GPU) is not available")
    return device


def resolve_style(spec: str, style: str | None = None, tokenizer: Any = None):
    """The prompt style: explicit, else saved with the model, else the model's chat template
    (when `tokenizer` has one), else the book's alpaca."""
    if style is None and Path(spec).is_dir():
        style = read_metadata(spec).get("style")
    if style is None:
        style = default_style_for(tokenizer) if tokenizer is not None else DEFAULT_STYLE
    return style_by_name(style, tokenizer)


def load_for_generation(
    spec: str, style: str | None = None, tokenizer: str | None = None, device: str = "auto"
) -> tuple[Any, Any, Any]:
    """(model in eval mode on `device`, tokenizer, prompt style) for a model spec."""
    from instructkit.tokenizer import load_tokenizer

    target = check_device(pick_device(device), device)
    model, loaded = load_pretrained(
        spec, tokenizer=load_tokenizer(tokenizer) if tokenizer else None
    )
    if loaded is None:  # a book .pth or random:PRESET without --tokenizer
        loaded = load_tokenizer("gpt2")
        check_vocab(model, loaded, spec)
    model.to(target).eval()
    return model, loaded, resolve_style(spec, style, loaded)
