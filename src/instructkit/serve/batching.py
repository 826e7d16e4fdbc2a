"""Continuous batching: one decode loop owns the model and advances every active request at once.

Requests used to take turns, a decoding step each under a lock, so 16 clients cost 16
forward passes per token. Here one background thread keeps a batch of active requests (at
most `max_batch`; later ones wait in arrival order). Each step it prefills the requests
that arrived, one at a time as a lone request would be (so a reply's first token is the
same either way), then runs one batched forward over the latest token of every active
request. A request leaves the batch when it ends (an end id, its max tokens, or its client
going away), and its row goes to the next one waiting.

Rows are right-aligned in one `KVCache`: every row's latest key sits in the last filled
column, shorter rows are left-padded, the padding is segment 0 so no query attends to it,
and each row's position ids count only its own tokens. A row thus computes what it would
alone, up to the float rounding of batched matmuls (greedy replies are equal in the tests
and the bench). Each request samples with its own settings and its own `torch.Generator`,
so a seeded reply does not depend on who else is in the batch.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

import torch

from instructkit.config import GenerationConfig
from instructkit.constants import DEFAULT_MAX_BATCH
from instructkit.errors import UserError
from instructkit.generate import sample
from instructkit.model.gpt import KVCache

logger = logging.getLogger("instructkit.serve")

# What a job's `events` carry: a token id (int), then a finish reason (str: "stop" for an
# end id, "length" for max tokens, "cancelled"), or the exception that ended it.
Event = int | str | BaseException


@dataclass(eq=False)
class Job:
    """One request in the decode loop: its prompt and settings in, its tokens out.

    `config.max_new_tokens` is the request's budget and `config.end_ids` its end tokens.
    The fields below `events` belong to the loop thread.
    """

    prompt_ids: list[int]
    config: GenerationConfig
    events: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    generator: torch.Generator | None = None
    length: int = 0  # tokens of this row in the cache
    produced: int = 0  # tokens sampled so far
    last: int = 0  # the latest token, fed at the next step

    def cancel(self) -> None:
        """Stop generating (the client went away or has what it wants); the loop frees the row."""
        self.cancelled = True


class Batcher:
    """The decode loop over `model`: `submit` a job, read its `events`; thread-safe."""

    def __init__(self, model, max_batch: int = DEFAULT_MAX_BATCH):
        if max_batch < 1:
            raise UserError(f"--max-batch must be at least 1, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self.active: list[Job] = []  # the rows of `cache`, in order; the loop's own
        self.cache: KVCache | None = None
        self.steps = 0  # batched decoding steps run so far
        self._waiting: deque[Job] = deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def new_job(self, prompt_ids: list[int], config: GenerationConfig) -> Job:
        """A job with its own generator when seeded (what `stream` would seed alone)."""
        job = Job(list(prompt_ids), config)
        if config.seed is not None:
            device = self.model.lm_head.weight.device
            job.generator = torch.Generator(device=device).manual_seed(config.seed)
        return job

    def submit(self, prompt_ids: list[int], config: GenerationConfig) -> Job:
        """Queue a job; it joins the batch at the loop's next step when a row is free."""
        job = self.new_job(prompt_ids, config)
        with self._changed:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="decode", daemon=True)
                self._thread.start()
                # A daemon thread still parked in the loop when the interpreter finalizes
                # makes torch abort the process ("terminate called without an active
                # exception"): end it first.
                atexit.register(self.close)
            self._changed.notify()
        return job

    def close(self) -> None:
        """End the loop; jobs still waiting or running get an error."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        self.model.eval()
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self.active or self._closed)
                if self._closed:
                    break
                arrivals = []
                while self._waiting and len(self.active) + len(arrivals) < self.max_batch:
                    arrivals.append(self._waiting.popleft())
            try:
                self.step(arrivals)
            except Exception as error:  # a batched step failed: fail its rows, serve on
                logger.exception("decoding step failed")
                for job in [*self.active, *arrivals]:
                    job.events.put(error)  # ignored by a job that had already ended
                self.active, self.cache = [], None
        stopped = RuntimeError("the server is shutting down")
        for job in [*self.active, *self._waiting]:
            job.events.put(stopped)
        self.active, self.cache = [], None

    @torch.no_grad()
    def step(self, arrivals: list[Job]) -> None:
        """Drop cancelled rows, prefill the arrivals, then one batched step for all rows.

        The loop thread calls it; tests call it by hand (without `submit`) to see a batch
        change step by step. A failed prefill fails only its request; a failed batched
        step fails its rows (in `_loop`).
        """
        cancelled = [i for i, job in enumerate(self.active) if job.cancelled]
        if cancelled:
            for i in cancelled:
                self.active[i].events.put("cancelled")
            self._keep([i for i, job in enumerate(self.active) if not job.cancelled])
        for job in arrivals:
            if job.cancelled:
                job.events.put("cancelled")
                continue
            try:
                self._prefill(job)
            except Exception as error:
                logger.exception("prefill failed")
                job.events.put(error)
        if self.active:
            self._decode()

    def _prefill(self, job: Job) -> None:
        """Run the prompt alone, emit the first token, and join the batch if not done."""
        device = self.model.lm_head.weight.device
        ids = torch.tensor([job.prompt_ids], device=device)  # (1, P)
        room = headroom(len(job.prompt_ids), job.config.max_new_tokens - 1)
        single = self.model.new_kv_cache(1, len(job.prompt_ids) + room)
        hidden = self.model.hidden_states(ids, kv_cache=single)[:, -1]  # (1, C)
        job.length = len(job.prompt_ids)
        (token,) = self._sample(hidden, [job])
        if self._emit(job, token):
            self.cache = joined(self.model, self.cache, self.active, job, single)
            self.active.append(job)

    def _decode(self) -> None:
        """One batched forward over every row's latest token; finished rows leave."""
        jobs, device = self.active, self.model.lm_head.weight.device
        tokens = torch.tensor([[job.last] for job in jobs], device=device)  # (B, 1)
        positions = torch.tensor([[job.length] for job in jobs], device=device)  # (B, 1)
        if self.cache.length == self.cache.max_length:
            remaining = max(job.config.max_new_tokens - job.produced for job in jobs)
            self.cache = widened(self.model, self.cache, headroom(self.cache.length, remaining))
        hidden = self.model.hidden_states(tokens, position_ids=positions, kv_cache=self.cache)
        self.steps += 1
        for job in jobs:
            job.length += 1
        new = self._sample(hidden[:, -1], jobs)
        running = [i for i, (job, token) in enumerate(zip(jobs, new)) if self._emit(job, token)]
        if len(running) < len(jobs):
            self._keep(running)

    def _sample(self, hidden: torch.Tensor, jobs: list[Job]) -> list[int]:
        """Each row's next token with its own settings and generator (greedy rows at once)."""
        logits = self.model.lm_head(hidden).float()  # (B, V)
        for row, job in enumerate(jobs):
            limit = job.config.vocab_size
            if limit is not None and limit < logits.shape[-1]:
                logits[row, limit:] = float("-inf")  # ids no text decodes to
        tokens = logits.argmax(dim=-1).tolist()  # one transfer for every greedy row
        for row, job in enumerate(jobs):
            config = job.config
            if config.temperature:
                row_logits = logits[row : row + 1]  # (1, V)
                picked = sample(
                    row_logits, config.temperature, config.top_k, config.top_p, job.generator
                )
                tokens[row] = int(picked[0])
        return tokens

    @staticmethod
    def _emit(job: Job, token: int) -> bool:
        """Hand `token` to the job's reader; whether the job goes on."""
        job.produced += 1
        if token in job.config.end_ids:
            job.events.put("stop")
            return False
        job.events.put(token)
        if job.produced >= job.config.max_new_tokens:
            job.events.put("length")
            return False
        job.last = token
        return True

    def _keep(self, rows: list[int]) -> None:
        """Only `rows` stay in the batch; columns that are padding in every row go."""
        self.active = [self.active[i] for i in rows]
        if not rows or self.cache is None:
            self.cache = None
            return
        cache = self.cache
        cache.select_rows(torch.tensor(rows, device=cache.keys.device))
        start = cache.length - max(job.length for job in self.active)
        if start > 0:
            cache.keys, cache.values = cache.keys[:, :, :, start:], cache.values[:, :, :, start:]
            cache.length -= start
            cache.max_length -= start
        mark_padding(cache, [job.length for job in self.active])


def joined(model, cache: KVCache | None, rows: list[Job], job: Job, single: KVCache) -> KVCache:
    """The batch cache with `single` (the job's prefilled prompt) as a new last row.

    Rows stay right-aligned: the wider of the two decides the width, the other is
    left-padded.
    """
    if cache is None:
        return single
    width = max(cache.length, single.length)
    room = headroom(width, max(j.config.max_new_tokens - j.produced for j in [*rows, job]))
    merged = model.new_kv_cache(cache.batch_size + 1, width + room)
    old, new = width - cache.length, width - single.length
    merged.keys[:, :-1, :, old:width] = cache.keys[:, :, :, : cache.length]
    merged.values[:, :-1, :, old:width] = cache.values[:, :, :, : cache.length]
    merged.keys[:, -1:, :, new:width] = single.keys[:, :, :, : single.length]
    merged.values[:, -1:, :, new:width] = single.values[:, :, :, : single.length]
    merged.length = width
    mark_padding(merged, [j.length for j in [*rows, job]])
    return merged


def headroom(length: int, remaining: int) -> int:
    """Columns to add to a cache of `length`: what the rows may still need, but at most
    doubling it (at least 64), so a request allowed the whole context does not reserve it
    for every row up front, and growing still costs O(1) copies per token."""
    return max(1, min(remaining, max(length, 64)))


def widened(model, cache: KVCache, room: int) -> KVCache:
    """A copy of `cache` with `room` more columns."""
    wider = model.new_kv_cache(cache.batch_size, cache.length + room)
    wider.keys[:, :, :, : cache.length] = cache.keys[:, :, :, : cache.length]
    wider.values[:, :, :, : cache.length] = cache.values[:, :, :, : cache.length]
    if cache.segment_ids is not None:
        wider.segment_ids = cache.segment_ids.new_ones(cache.batch_size, wider.max_length)
        wider.segment_ids[:, : cache.length] = cache.segment_ids[:, : cache.length]  # (B, S)
    wider.length = cache.length
    return wider


def mark_padding(cache: KVCache, lengths: list[int]) -> None:
    """Segment 0 on each row's left padding (a row of `length` tokens ends at the last
    filled column); no segments at all when no row is padded, the unmasked path alone
    takes."""
    if all(length == cache.length for length in lengths):
        cache.segment_ids = None
        return
    device = cache.keys.device
    starts = cache.length - torch.tensor(lengths, device=device)  # (B,)
    columns = torch.arange(cache.max_length, device=device)  # (S,)
    cache.segment_ids = (columns[None, :] >= starts[:, None]).long()  # (B, S)
