"""The GPT model, its configuration, and loading/saving its weights.

`GPTConfig`/`PRESETS` describe a model's shape, `GPTModel` is the network (with `KVCache`
for fast decoding), and `load_pretrained`/`save_pretrained` move weights between it and
Hugging Face GPT-2 directories, the hub, the book's state dicts and random initialisation.
"""

from instructkit.model.checkpoints import load_pretrained, read_metadata, save_pretrained
from instructkit.model.config import PRESETS, GPTConfig
from instructkit.model.gpt import GPTModel, KVCache

__all__ = [
    "PRESETS",
    "GPTConfig",
    "GPTModel",
    "KVCache",
    "load_pretrained",
    "read_metadata",
    "save_pretrained",
]
