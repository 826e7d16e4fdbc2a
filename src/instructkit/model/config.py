"""The shape of a GPT model as a typed dataclass, and named presets.

`GPTConfig` is the only description of a model's architecture: `GPTModel` builds from it,
`checkpoints` reads and writes it as Hugging Face GPT-2 `config.json` fields. Presets give
the four GPT-2 sizes with the book's numbers, plus `tiny` (tests) and `demo` (a model that
trains in minutes on two CPU cores for the offline demo).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from instructkit.errors import ModelError

GPT2_VOCAB_SIZE = 50257


@dataclass
class GPTConfig:
    """Architecture of a GPT-2 style decoder."""

    vocab_size: int
    """Number of token ids the embedding and output head cover."""
    context_length: int
    """Most positions the model has position embeddings for."""
    emb_dim: int
    """Width of the residual stream."""
    n_heads: int
    """Attention heads per layer; must divide emb_dim."""
    n_layers: int
    """Number of transformer blocks."""
    drop_rate: float = 0.0
    """Dropout on embeddings, attention weights and residual branches (training only)."""
    qkv_bias: bool = True
    """Bias on the query/key/value projection (GPT-2 weights have one)."""
    tie_embeddings: bool = True
    """Share the output head's weight with the token embedding, as GPT-2 does."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"model config: {name} must be a positive integer, got {value!r}")
        if not problems and self.emb_dim % self.n_heads:
            problems.append(
                f"model config: emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            problems.append(f"model config: drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if problems:
            raise ModelError(problems)

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads (what a KV cache holds): every head, GPT-2 has no grouping."""
        return self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides: object) -> GPTConfig:
        """A copy of the preset `name` with any fields replaced by `overrides`."""
        if name not in PRESETS:
            raise ModelError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ModelError(f"unknown model config fields: {', '.join(unknown)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        return cls(**values)


PRESETS: dict[str, GPTConfig] = {
    "gpt2-small": GPTConfig(GPT2_VOCAB_SIZE, 1024, 768, 12, 12),  # 124M
    "gpt2-medium": GPTConfig(GPT2_VOCAB_SIZE, 1024, 1024, 16, 24),  # 355M
    "gpt2-large": GPTConfig(GPT2_VOCAB_SIZE, 1024, 1280, 20, 36),  # 774M
    "gpt2-xl": GPTConfig(GPT2_VOCAB_SIZE, 1024, 1600, 25, 48),  # 1558M
    "tiny": GPTConfig(GPT2_VOCAB_SIZE, 128, 64, 2, 2),  # unit tests
    # 1.9M parameters with a 300-token BPE, ~0.2 s per 2,048-token step on two CPU cores:
    # `instructkit demo`'s model until it moved to "demo-llama"; bench/serve.py's small model.
    "demo": GPTConfig(GPT2_VOCAB_SIZE, 256, 192, 6, 4),
}
