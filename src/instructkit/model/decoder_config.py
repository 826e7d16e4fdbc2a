"""The shape of a Llama / Qwen2 / Qwen3 decoder as one typed dataclass, and named presets.

The three families are one architecture (RMSNorm, SwiGLU MLP, rotary positions,
grouped-query attention) that differs in a few switches, so one `DecoderConfig` with
per-family flags describes them all (LitGPT's approach): Qwen2 adds a bias to the
query/key/value projections, Qwen3 normalises queries and keys per head and sets its own
`head_dim`, Llama 3.1+ stretches long rotary wavelengths (`RopeScaling`). Field names follow
`GPTConfig` where the meaning is the same, so code that reads `context_length`, `emb_dim`,
`n_heads` or `n_layers` works for either model. `checkpoints` maps these fields to and from
Hugging Face `config.json`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from instructkit.errors import ModelError

FAMILIES = {
    # family: (Hugging Face architecture class, model_type)
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's frequency-dependent rotary scaling (`rope_type: llama3`): wavelengths
    longer than the original context are divided by `factor`, short ones kept, those in
    between interpolated, so a model trained on 8k positions reads 128k."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_context_length: int


@dataclass
class DecoderConfig:
    """Architecture of a Llama-style decoder; `family` names which checkpoint layout it is."""

    family: str
    """"llama", "qwen2" or "qwen3": decides the Hugging Face class written on save."""
    vocab_size: int
    """Rows of the embedding and the output head (may exceed the tokenizer's ids)."""
    context_length: int
    """Most positions the model was trained for (`max_position_embeddings`)."""
    emb_dim: int
    """Width of the residual stream (`hidden_size`)."""
    hidden_dim: int
    """Width of the SwiGLU MLP (`intermediate_size`)."""
    n_heads: int
    """Query heads per layer."""
    n_kv_heads: int
    """Key/value heads per layer; fewer than n_heads is grouped-query attention."""
    n_layers: int
    """Number of transformer blocks."""
    head_dim: int = 0
    """Width of one head; 0 means emb_dim // n_heads (Qwen3 sets its own)."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies."""
    rope_scaling: RopeScaling | None = None
    """Llama 3.1+ long-context scaling of the rotary frequencies, or None."""
    norm_eps: float = 1e-6
    """Epsilon of every RMSNorm (`rms_norm_eps`)."""
    qkv_bias: bool = False
    """Bias on the query/key/value projections (Qwen2; Llama's `attention_bias`)."""
    out_bias: bool = False
    """Bias on the attention output projection (Llama's and Qwen3's `attention_bias`)."""
    mlp_bias: bool = False
    """Bias on the MLP projections (Llama's `mlp_bias`)."""
    qk_norm: bool = False
    """RMSNorm over each query and key head before the rotation (Qwen3)."""
    tie_embeddings: bool = False
    """Share the output head's weight with the token embedding."""
    drop_rate: float = 0.0
    """Dropout on attention weights and residual branches (training only)."""

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if self.head_dim == 0 and self.n_heads and self.emb_dim % self.n_heads == 0:
            self.head_dim = self.emb_dim // self.n_heads
        problems = []
        if self.family not in FAMILIES:
            problems.append(
                f"model config: family must be one of {', '.join(FAMILIES)}, got {self.family!r}"
            )
        for name in (
            "vocab_size",
            "context_length",
            "emb_dim",
            "hidden_dim",
            "n_heads",
            "n_kv_heads",
            "n_layers",
            "head_dim",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"model config: {name} must be a positive integer, got {value!r}")
        if not problems and self.n_heads % self.n_kv_heads:
            problems.append(
                f"model config: n_heads {self.n_heads} is not a multiple of "
                f"n_kv_heads {self.n_kv_heads}"
            )
        if not problems and self.head_dim % 2:
            problems.append(f"model config: head_dim {self.head_dim} must be even for RoPE")
        if not 0.0 <= self.drop_rate < 1.0:
            problems.append(f"model config: drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if problems:
            raise ModelError(problems)

    @classmethod
    def preset(cls, name: str, **overrides: object) -> DecoderConfig:
        """A copy of the preset `name` with any fields replaced by `overrides`."""
        if name not in DECODER_PRESETS:
            raise ModelError(
                f"unknown model preset {name!r}; known presets: {', '.join(DECODER_PRESETS)}"
            )
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ModelError(f"unknown model config fields: {', '.join(unknown)}")
        return dataclasses.replace(DECODER_PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DecoderConfig:
        return cls(**values)


LLAMA3_SCALING = RopeScaling(32.0, 1.0, 4.0, 8192)
QWEN_VOCAB = 151_936


# fmt: off
DECODER_PRESETS: dict[str, DecoderConfig] = {
    # Shapes of the published models (random weights: for benchmarks and memory estimates).
    #                          family   vocab       context  width  mlp  heads kv layers
    "llama-3.2-1b": DecoderConfig("llama", 128_256, 131_072, 2048, 8192, 32, 8, 16, head_dim=64,
                                  rope_theta=500_000.0, rope_scaling=LLAMA3_SCALING,
                                  norm_eps=1e-5, tie_embeddings=True),
    "qwen2.5-0.5b": DecoderConfig("qwen2", QWEN_VOCAB, 32_768, 896, 4864, 14, 2, 24,
                                  rope_theta=1_000_000.0, qkv_bias=True, tie_embeddings=True),
    "qwen3-0.6b": DecoderConfig("qwen3", QWEN_VOCAB, 40_960, 1024, 3072, 16, 8, 28, head_dim=128,
                                rope_theta=1_000_000.0, qk_norm=True, tie_embeddings=True),
    # `instructkit demo`: the "demo" GPT's width and parameters with rotary positions, spent
    # on six layers with a narrow MLP (copying needs attention layers more than MLP width).
    "demo-llama": DecoderConfig("llama", 512, 256, 192, 256, 6, 6, 6, tie_embeddings=True),
    # Unit-test sizes, each exercising its family's switches.
    "tiny-llama": DecoderConfig("llama", 512, 256, 64, 128, 4, 2, 2, rope_theta=500_000.0,
                                rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64), norm_eps=1e-5),
    "tiny-qwen2": DecoderConfig("qwen2", 512, 256, 64, 128, 4, 2, 2, qkv_bias=True,
                                tie_embeddings=True),
    "tiny-qwen3": DecoderConfig("qwen3", 512, 256, 64, 128, 4, 2, 2, head_dim=32, qk_norm=True,
                                tie_embeddings=True),
}
# fmt: on
