"""Text generation: the book's `generate`, made fast with a KV cache, batched and streaming.

`generate(model, idx, max_new_tokens, context_size, temperature, top_k, eos_id)` keeps the
book's meaning (greedy at temperature 0, returns prompt + new tokens, stops at `eos_id`) and
adds top-p and a seed. Every entry point also takes `config=GenerationConfig(...)`; keywords
given beside it override its fields. Each new token costs one position instead of re-reading
the whole context: keys and values of earlier positions stay in a `KVCache`. Prompts of
different lengths run as one batch, left-padded (padding is segment 0, so no real token
attends to it, with position ids that start at each row's first real token); rows that end
(`eos_id` or one of `stop_ids`) leave the batch; with `vocab_size`, ids past the tokenizer's
are never sampled. Beyond the context window the book crops to
the last `context_size` tokens, which shifts every position, so cached keys no longer apply:
from then on each step recomputes the window, exactly as the book's loop does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch

from instructkit.config import GenerationConfig
from instructkit.errors import UserError
from instructkit.model.gpt import GPTModel

PAD_ID = 0  # any id works: padding is masked out of attention


def generate(
    model: GPTModel,
    idx: torch.Tensor,
    max_new_tokens: int | None = None,
    context_size: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    *,
    config: GenerationConfig | None = None,
) -> torch.Tensor:
    """Prompt `idx` (B, T) followed by the new tokens, as the book's `generate` returns.

    A row that produced an end token stops (not included, as in the book) and is filled with
    `eos_id` while other rows continue; the result ends with the longest row.
    """
    if max_new_tokens == 0:
        return idx  # the book's loop runs zero times
    config = resolve_config(config, max_new_tokens, temperature, top_k, top_p, eos_id, seed)
    new: list[list[int]] = [[] for _ in range(idx.shape[0])]
    for rows, tokens in decode(model, idx, config, context_size):
        for row, token in zip(rows.tolist(), tokens.tolist()):
            if token not in config.end_ids:
                new[row].append(token)
    width = max((len(tokens) for tokens in new), default=0)
    fill = PAD_ID if config.eos_id is None else config.eos_id
    out = torch.full((idx.shape[0], width), fill)  # (B, N)
    for row, tokens in enumerate(new):
        out[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return torch.cat([idx, out.to(idx.device, idx.dtype)], dim=1)  # (B, T + N)


def generate_batch(
    model: GPTModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | None = None,
    context_size: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    *,
    config: GenerationConfig | None = None,
) -> list[list[int]]:
    """New tokens (end tokens stripped) for each prompt, in order.

    Prompts run `batch_size` at a time, grouped by length so that little is padding; the
    cache of a batch holds batch_size x (longest prompt + max_new_tokens) positions.
    """
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    config = resolve_config(
        config, max_new_tokens, temperature, top_k, top_p, eos_id, seed, batch_size=batch_size
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), config.batch_size):
        chunk = order[start : start + config.batch_size]
        seed = None if config.seed is None else config.seed + start
        seeded = dataclasses.replace(config, seed=seed)
        for rows, tokens in decode(model, [prompts[i] for i in chunk], seeded, context_size):
            for row, token in zip(rows.tolist(), tokens.tolist()):
                if token not in seeded.end_ids:
                    results[chunk[row]].append(token)
    return results


def stream(
    model: GPTModel,
    prompt_ids: Sequence[int],
    max_new_tokens: int | None = None,
    context_size: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    *,
    config: GenerationConfig | None = None,
) -> Iterator[int]:
    """Each new token as soon as it exists; ends before an end token or after max_new_tokens."""
    if max_new_tokens == 0:
        return
    config = resolve_config(config, max_new_tokens, temperature, top_k, top_p, eos_id, seed)
    for _, tokens in decode(model, [prompt_ids], config, context_size):
        token = int(tokens[0])
        if token in config.end_ids:
            return
        yield token


def resolve_config(
    config: GenerationConfig | None,
    max_new_tokens: int | None,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    eos_id: int | Sequence[int] | None,
    seed: int | None,
    **more: int | tuple[int, ...] | None,
) -> GenerationConfig:
    """`config` (else the defaults) with the book's keywords that were given (not None).

    `eos_id` may list several end ids (Llama 3 ends a turn with <|eot_id|> and a text with
    <|end_of_text|>): the first is the eos, the rest become `stop_ids`.
    """
    if isinstance(eos_id, Sequence):
        eos_id, more["stop_ids"] = (eos_id[0], tuple(eos_id[1:])) if eos_id else (None, ())
    given = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "eos_id": eos_id,
        "seed": seed,
        **more,
    }
    given = {name: value for name, value in given.items() if value is not None}
    return dataclasses.replace(config or GenerationConfig(), **given)


@torch.no_grad()  # as a decorator it applies per step, not to the caller between steps
def decode(
    model: GPTModel,
    prompts: torch.Tensor | Sequence[Sequence[int]],
    config: GenerationConfig,
    context_size: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The decoding loop all entry points share (`config.batch_size` is the caller's job).

    Yields once per step `(rows, tokens)`: the index (into `prompts`) of every row still
    running and the token it just produced. A row whose token ends it (`config.end_ids`) is
    yielded with it, then leaves the batch. The model runs in eval mode and without autograd.
    """
    if len(prompts) == 0:
        return
    max_new_tokens = config.max_new_tokens
    context_length = model.config.context_length
    window = min(context_size or context_length, context_length)
    device = model.lm_head.weight.device
    tokens, valid = left_pad(prompts, window, device)  # (B, W), (B, W)
    width = tokens.shape[1]
    padded = not bool(valid.all())
    # Room for every position fed through the model, up to one context window.
    tokens = torch.cat([tokens, tokens.new_full((len(tokens), max_new_tokens), PAD_ID)], dim=1)
    valid = torch.cat([valid, valid.new_ones((len(valid), max_new_tokens))], dim=1)
    lengths = valid[:, :width].sum(dim=1)  # (B,) real tokens per row
    rows = torch.arange(len(tokens), device=device)  # (B,) index into prompts
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    end_ids = torch.tensor(config.end_ids, dtype=torch.long, device=device)  # (E,)
    was_training = model.training
    model.eval()
    try:
        cache = model.new_kv_cache(len(tokens), min(width + max_new_tokens, window))
        end = width  # tokens[:, :end] are filled
        for _ in range(max_new_tokens):
            if cache is not None and end <= cache.max_length:
                hidden = cached_step(model, tokens, valid, lengths, end, cache, padded)
            else:
                cache = None  # the window slides: every position shifts
                hidden = window_step(
                    model, tokens[:, end - window : end], valid[:, end - window : end]
                )
            logits = model.lm_head(hidden).float()  # (B, V)
            if config.vocab_size is not None and config.vocab_size < logits.shape[-1]:
                logits[:, config.vocab_size :] = float("-inf")  # rows no token decodes to
            next_tokens = sample(
                logits, config.temperature, config.top_k, config.top_p, generator
            )  # (B,)
            yield rows, next_tokens
            tokens[:, end] = next_tokens
            lengths += 1
            end += 1
            if len(end_ids):
                running = (~torch.isin(next_tokens, end_ids)).nonzero().squeeze(1)  # (B',)
                if len(running) == 0:
                    return
                if len(running) < len(rows):
                    rows, tokens, valid, lengths = (
                        rows[running],
                        tokens[running],
                        valid[running],
                        lengths[running],
                    )
                    if cache is not None:
                        cache.select_rows(running)
    finally:
        model.train(was_training)


def cached_step(
    model: GPTModel,
    tokens: torch.Tensor,
    valid: torch.Tensor,
    lengths: torch.Tensor,
    end: int,
    cache,
    padded: bool,
) -> torch.Tensor:
    """Hidden state (B, C) of the last position, feeding only positions the cache lacks."""
    start = cache.length
    new = tokens[:, start:end]  # (B, T)
    if start == 0:  # the prompt
        positions = (valid[:, :end].cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        segments = valid[:, :end].long() if padded else None  # (B, T), 0 = padding
    else:
        positions = (lengths - 1)[:, None]  # (B, 1): the position of the latest token
        segments = None
    return model.hidden_states(new, position_ids=positions, segment_ids=segments, kv_cache=cache)[
        :, -1
    ]


def window_step(model: GPTModel, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Hidden state (B, C) of the last position, recomputing the whole window (no cache)."""
    if bool(valid.all()):
        return model.hidden_states(tokens)[:, -1]
    positions = (valid.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
    return model.hidden_states(tokens, position_ids=positions, segment_ids=valid.long())[:, -1]


def left_pad(
    prompts: torch.Tensor | Sequence[Sequence[int]], window: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts cropped to their last `window` tokens, right-aligned: ids and a validity mask."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2 or prompts.shape[1] == 0:
            raise UserError(
                f"generation: idx must be (batch, tokens) with tokens, got {tuple(prompts.shape)}"
            )
        ids = prompts[:, -window:].to(device=device, dtype=torch.long)  # (B, W)
        return ids, torch.ones_like(ids, dtype=torch.bool)
    cropped = [list(prompt)[-window:] for prompt in prompts]
    if any(len(prompt) == 0 for prompt in cropped):
        raise UserError("generation: every prompt needs at least one token")
    width = max(len(prompt) for prompt in cropped)
    ids = torch.full((len(cropped), width), PAD_ID, dtype=torch.long)  # (B, W)
    valid = torch.zeros((len(cropped), width), dtype=torch.bool)  # (B, W)
    for row, prompt in enumerate(cropped):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        valid[row, width - len(prompt) :] = True
    return ids.to(device), valid.to(device)


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Next token per row (B,) from logits (B, V): greedy at temperature 0, as in the book."""
    if not temperature:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)  # (B, V)
        # Drop a token when the ones before it already reach top_p (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p  # (B, V)
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # (B,)
