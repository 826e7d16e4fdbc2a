"""The models, their configurations, and loading/saving their weights.

`GPTConfig`/`PRESETS` describe a GPT-2 shape and `GPTModel` is that network (with `KVCache`
for fast decoding); `DecoderConfig`/`DECODER_PRESETS` and `DecoderModel` do the same for
Llama, Qwen2 and Qwen3. `load_pretrained`/`save_pretrained` move weights between them and
Hugging Face directories, the hub, the book's state dicts and random initialisation.
"""

from instructkit.model.checkpoints import load_pretrained, read_metadata, save_pretrained
from instructkit.model.config import PRESETS, GPTConfig
from instructkit.model.decoder import DecoderModel
from instructkit.model.decoder_config import DECODER_PRESETS, DecoderConfig
from instructkit.model.gpt import GPTModel, KVCache

__all__ = [
    "DECODER_PRESETS",
    "PRESETS",
    "DecoderConfig",
    "DecoderModel",
    "GPTConfig",
    "GPTModel",
    "KVCache",
    "load_pretrained",
    "read_metadata",
    "save_pretrained",
]
