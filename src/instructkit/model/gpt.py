"""The GPT model: GPT-2's architecture in one readable file.

Learned position embeddings, pre-LayerNorm blocks, a tanh-GELU MLP and an output head
tied to the token embedding. Layer names follow Hugging Face GPT-2 (`wte`, `h.0.attn.c_attn`,
...) so loading its weights is a copy; every projection is an `nn.Linear` so LoRA can wrap
it. Attention runs through `scaled_dot_product_attention`: the plain causal case uses its
fused `is_causal` path; packed rows (`segment_ids`) and cached decoding build a boolean mask.
The model knows nothing of files or the hub (that is `checkpoints.py`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from instructkit.errors import ModelError
from instructkit.model.config import GPTConfig
from instructkit.model.head_loss import head_cross_entropy

if TYPE_CHECKING:
    from instructkit.model.decoder_config import DecoderConfig


class KVCache:
    """Keys and values of positions already seen, so decoding a token costs one position.

    Preallocated per layer to `max_length` positions for a whole batch (key/value heads
    only: with grouped-query attention fewer than the query heads); `length` is how many
    are filled (the same for every row: batched prompts of different lengths are left-padded
    and their padding marked with segment id 0, which the cache keeps beside the keys so
    later tokens never attend to it). One batch tensor beats per-row caches because every
    decoding step stays a single batched matmul.
    """

    def __init__(
        self,
        config: GPTConfig | DecoderConfig,
        batch_size: int,
        max_length: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        shape = (config.n_layers, batch_size, config.n_kv_heads, max_length, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nkv, S, hs)
        self.values = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nkv, S, hs)
        self.segment_ids: torch.Tensor | None = None  # (B, S), only once a mask is needed
        self.max_length = max_length
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def update(
        self, layer: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values of one layer; return all of that layer's so far."""
        end = self.length + key.shape[2]
        self.keys[layer, :, :, self.length : end] = key
        self.values[layer, :, :, self.length : end] = value
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]  # (B, nh, end, hs)

    def add_segments(self, segment_ids: torch.Tensor | None, steps: int) -> torch.Tensor | None:
        """Record the segments of `steps` new positions; return all key segments, or None
        when no position so far needed masking beyond causality."""
        end = self.length + steps
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions, {end} requested")
        if segment_ids is None and self.segment_ids is None:
            return None
        if self.segment_ids is None:
            self.segment_ids = torch.ones(
                self.batch_size, self.max_length, dtype=torch.long, device=self.keys.device
            )
        if segment_ids is not None:
            self.segment_ids[:, self.length : end] = segment_ids
        else:
            self.segment_ids[:, self.length : end] = 1
        return self.segment_ids[:, :end]  # (B, end)

    def advance(self, steps: int) -> None:
        self.length += steps

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (finished rows of a batched generation drop out)."""
        self.keys = self.keys.index_select(1, rows)
        self.values = self.values.index_select(1, rows)
        if self.segment_ids is not None:
            self.segment_ids = self.segment_ids.index_select(0, rows)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.drop_rate = config.drop_rate
        self.c_attn = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.emb_dim, config.emb_dim)
        self.resid_drop = nn.Dropout(config.drop_rate)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        kv_cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        """Without a mask, `T > 1` queries over the same `T` keys are plain causal."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, nh, S, hs), S = past + T
            k, v = k.to(q.dtype), v.to(q.dtype)  # the cache keeps the weights' dtype under autocast
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.drop_rate if self.training else 0.0,
            is_causal=mask is None and T > 1,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.emb_dim, 4 * config.emb_dim)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.emb_dim, config.emb_dim)
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.emb_dim, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.emb_dim, eps=1e-5)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, kv_cache: KVCache | None, layer: int
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, kv_cache, layer)
        return x + self.mlp(self.ln_2(x))


def positions_and_mask(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    segment_ids: torch.Tensor | None,
    kv_cache: KVCache | None,
    context_length: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids (continuing after the cache; given ones win, as packing restarts them
    per example) and the attention mask: what every decoder family computes first."""
    T = input_ids.shape[1]
    past = kv_cache.length if kv_cache is not None else 0
    if position_ids is None:
        if past + T > context_length:
            raise ModelError(
                f"input of {past + T} positions exceeds the model's context length "
                f"{context_length}; crop it to the last {context_length} tokens"
            )
        position_ids = torch.arange(past, past + T, device=input_ids.device)[None]  # (1, T)
    if kv_cache is not None:
        key_segments = kv_cache.add_segments(segment_ids, T)  # (B, S) | None
    else:
        key_segments = segment_ids  # (B, T) | None
    return position_ids, attention_mask(key_segments, past, T, input_ids.device)


def attention_mask(
    segment_ids: torch.Tensor | None, past: int, steps: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean (B, 1, T, S) mask, True where a query may attend to a key; None when plain
    causal attention suffices (no past keys) or there is nothing to mask (one query).

    `segment_ids` (B, S) covers the keys (past positions and the `steps` new ones): a query
    attends to earlier keys of its own segment only. Padding is segment 0 and attends to
    earlier padding, so no row is fully masked (which would make softmax NaN).
    """
    if segment_ids is None:
        if past == 0 or steps == 1:
            return None
        queries = torch.arange(past, past + steps, device=device)  # (T,)
        keys = torch.arange(past + steps, device=device)  # (S,)
        return (keys[None, :] <= queries[:, None])[None, None]  # (1, 1, T, S)
    queries = torch.arange(past, past + steps, device=device)  # (T,)
    keys = torch.arange(past + steps, device=device)  # (S,)
    causal = keys[None, :] <= queries[:, None]  # (T, S)
    same = segment_ids[:, past:, None] == segment_ids[:, None, :]  # (B, T, S)
    return (same & causal).unsqueeze(1)  # (B, 1, T, S)


class GPTModel(nn.Module):
    """GPT-2 style decoder returning next-token logits."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.emb_dim)
        self.wpe = nn.Embedding(config.context_length, config.emb_dim)
        self.drop = nn.Dropout(config.drop_rate)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.emb_dim, eps=1e-5)
        self.lm_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 L)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for block in self.h:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=residual_std)

    def set_dropout(self, rate: float) -> None:
        """Change the dropout rate in place: it is a training choice, not part of the weights."""
        self.config = dataclasses.replace(self.config, drop_rate=rate)
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = rate
            elif isinstance(module, CausalSelfAttention):
                module.drop_rate = rate

    def num_parameters(self) -> int:
        """Parameter count, shared (tied) tensors counted once."""
        return sum(p.numel() for p in self.parameters())

    def new_kv_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        """An empty cache on this model's device and dtype."""
        weight = self.wte.weight
        length = max_length or self.config.context_length
        return KVCache(self.config, batch_size, length, device=weight.device, dtype=weight.dtype)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final LayerNorm output (B, T, C): what the output head reads."""
        position_ids, mask = positions_and_mask(
            input_ids, position_ids, segment_ids, kv_cache, self.config.context_length
        )  # (B|1, T), (B, 1, T, S) | None
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, T, C)
        for layer, block in enumerate(self.h):
            x = block(x, mask, kv_cache, layer)  # (B, T, C)
        if kv_cache is not None:
            kv_cache.advance(input_ids.shape[1])
        return self.ln_f(x)  # (B, T, C)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for every position of `input_ids` (B, T)."""
        return self.lm_head(self.hidden_states(input_ids, position_ids, segment_ids, kv_cache))

    def loss(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Cross entropy over positions whose target is not -100.

        The output head runs only on those positions (with prompt masking most positions
        need no vocab-wide logits), a chunk at a time (`head_cross_entropy`); the result
        equals the full computation. "sum" lets a training loop divide by the target count
        of a whole accumulated step. With no target at all the loss is 0 (still attached to
        the graph, so backward works).
        """
        hidden = self.hidden_states(input_ids, position_ids, segment_ids)  # (B, T, C)
        return head_cross_entropy(hidden, self.lm_head.weight, targets, reduction)
