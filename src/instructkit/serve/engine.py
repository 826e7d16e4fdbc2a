"""The model side of the server: a loaded model, its tokenizer and prompt style, its decode loop.

`Engine` turns chat messages into the model's prompt, checks that a request fits the
context, and streams generated text. The HTTP protocol code (`serve.app`) only talks to
this class, so tests can serve a tiny random model (or any object with the same
methods). Only the decode loop (`serve.batching.Batcher`) calls the model: concurrent
requests decode together, one batched step for all, and a slow or vanished streaming
client never blocks the others (its tokens wait in its queue; a vanished one is cancelled).

How chat messages become a prompt: a style that lays out conversations (the model's own
chat template, or chatml) renders the whole message list with the assistant header after
it, so the model sees every earlier turn, as it was trained to. For single-turn styles
(the book's alpaca, phi3) the last user message is the `instruction`; the text of any
system messages is the `input` (the book's optional context block, so a client can send
an (instruction, input) pair as system + user); earlier user and assistant turns are
dropped, since the model was tuned on single-turn records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

from instructkit.config import GenerationConfig
from instructkit.constants import DEFAULT_MAX_BATCH
from instructkit.errors import UserError
from instructkit.serve.batching import Batcher, Job


class RequestError(Exception):
    """A request the engine cannot serve as asked; the protocol layer answers 400 with `message`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass
class SamplingParams:
    """One request's settings: `config` (None: the server's), and what only a request has.

    `max_tokens` caps the reply (None: config.max_new_tokens); either way the reply is cut
    where the context ends. `stop` strings end the reply and are not part of it.
    """

    config: GenerationConfig | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)


def messages_to_record(messages: list[dict]) -> dict:
    """Chat messages -> {"instruction", "input"} (see the module docstring for the rule)."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise RequestError(
            "messages must contain at least one message with role 'user'", "messages"
        )
    system = "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
    return {"instruction": users[-1], "input": system.strip()}


def render_chat(style, messages: list[dict]) -> str:
    """The whole conversation in a conversation style, ending in the assistant header.

    OpenAI's `developer` role is the system prompt; anything else the template cannot lay
    out (a role it refuses) is the request's fault.
    """
    if not any(m["role"] == "user" for m in messages):
        raise RequestError(
            "messages must contain at least one message with role 'user'", "messages"
        )
    turns = [
        {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
        for m in messages
    ]
    try:
        return style.render(turns, add_generation_prompt=True)
    except UserError as error:
        raise RequestError("; ".join(error.problems), "messages") from None


class Generation:
    """An iterator over text pieces of one reply; `finish_reason` and counts are set when it ends.

    With `chat` the text is the style's extracted response (header removed, stripped) and the
    style's stop strings end it; otherwise it is the raw continuation of the prompt. Pieces
    never include text that might still turn out to be part of a stop sequence.
    """

    def __init__(
        self,
        engine: Engine,
        prompt: str,
        prompt_ids: list[int],
        config: GenerationConfig,
        stop: list[str],
        chat: bool,
    ):
        self.engine = engine
        self.prompt = prompt
        self.prompt_ids = prompt_ids
        self.config = config
        self.chat = chat
        self.stops = [s for s in stop if s] + (list(engine.style.stop_strings) if chat else [])
        self.finish_reason: str | None = None
        self._job: Job | None = None
        self.completion_tokens = 0
        self.text = ""

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def _view(self, raw: str) -> str:
        if self.chat:
            return self.engine.style.extract_response(self.prompt + raw, self.prompt)
        return raw

    def __iter__(self) -> Iterator[str]:
        engine = self.engine
        self._job = engine.batcher.submit(self.prompt_ids, self.config)
        ids: list[int] = []
        emitted = ""
        raw = ""
        try:
            while True:
                event = self._job.events.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, str):  # "stop" (an end id) or "length"
                    self.finish_reason = event
                    break
                ids.append(event)
                raw = engine.tokenizer.decode(ids)
                cut = min((raw.find(s) for s in self.stops if s in raw), default=-1)
                if cut >= 0:
                    raw, self.finish_reason = raw[:cut], "stop"
                    break
                if raw.endswith("\ufffd"):
                    continue  # half a UTF-8 character: wait for the rest
                ready = self._view(raw[: len(raw) - _held_back(raw, self.stops)])
                if ready.startswith(emitted) and len(ready) > len(emitted):
                    yield ready[len(emitted) :]
                    emitted = ready
        finally:
            self.cancel()  # frees the row at once after a stop string or a client gone
        self.completion_tokens = len(ids)
        final = self._view(raw)
        if final.startswith(emitted) and len(final) > len(emitted):
            yield final[len(emitted) :]
            emitted = final
        self.text = emitted

    def cancel(self) -> None:
        """Stop generating; the decode loop frees this reply's row at its next step."""
        if self._job is not None:
            self._job.cancel()

    def run(self) -> str:
        """Generate to the end and return the whole text."""
        for _ in self:
            pass
        return self.text


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters might begin a stop sequence."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class Engine:
    """A loaded model ready to answer requests.

    `config` holds the server's defaults for requests that leave a setting out (the greedy
    book defaults unless `serve` was given flags); `settings` override its fields
    (e.g. max_new_tokens=40). Its end ids are always the tokenizer's (`end_ids`: any of them
    ends a reply), and only the tokenizer's ids are generated. At most `max_batch` requests
    decode at once; later ones wait for a free row.
    """

    def __init__(
        self,
        model,
        tokenizer,
        style,
        name: str,
        config: GenerationConfig | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        **settings,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.style = style
        self.name = name
        self.config = dataclasses.replace(config or GenerationConfig(), **settings).for_tokenizer(
            tokenizer
        )
        self.batcher = Batcher(model, max_batch)

    def close(self) -> None:
        """Stop the decode loop (replies still running end with an error)."""
        self.batcher.close()

    @property
    def context_length(self) -> int:
        return int(self.model.config.context_length)

    def details(self) -> dict:
        """What /api/tags and /v1/models say about the model."""
        n = sum(p.numel() for p in self.model.parameters())
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return {
            "parameters": n,
            "size": n * next(self.model.parameters()).element_size(),
            "parameter_size": f"{n / 1e6:.1f}M" if n < 1e9 else f"{n / 1e9:.1f}B",
            "dtype": dtype,
            "context_length": self.context_length,
            "style": self.style.name,
        }

    def chat(self, messages: list[dict], params: SamplingParams) -> Generation:
        """A reply to chat messages: the whole conversation through a chat template (or
        chatml), only the last user message (plus system text) through single-turn styles."""
        if self.style.supports_conversations:
            prompt = render_chat(self.style, messages)
        else:
            prompt = self.style.prompt(messages_to_record(messages))
        return self._generation(prompt, params, chat=True)

    def instruct(self, instruction: str, input_text: str, params: SamplingParams) -> Generation:
        """A reply to one instruction (Ollama's /api/generate without raw)."""
        prompt = self.style.prompt({"instruction": instruction, "input": input_text})
        return self._generation(prompt, params, chat=True)

    def complete(self, text: str, params: SamplingParams) -> Generation:
        """A raw continuation of `text` (OpenAI's /v1/completions, Ollama's raw mode)."""
        return self._generation(text, params, chat=False)

    def _generation(self, prompt: str, params: SamplingParams, chat: bool) -> Generation:
        ids = self.tokenizer.encode(prompt)
        if not ids:
            raise RequestError("the prompt is empty", "prompt")
        if len(ids) >= self.context_length:
            raise RequestError(
                f"the prompt is {len(ids)} tokens; this model's context is {self.context_length} "
                "tokens and the reply needs at least one",
                "messages" if chat else "prompt",
                "context_length_exceeded",
            )
        config = params.config or self.config
        wanted = config.max_new_tokens if params.max_tokens is None else params.max_tokens
        # Replies are cut where the context ends (finish_reason "length").
        budget = min(wanted, self.context_length - len(ids))
        try:
            config = dataclasses.replace(config, max_new_tokens=budget).for_tokenizer(
                self.tokenizer
            )
        except UserError as error:
            raise RequestError("; ".join(error.problems), "max_tokens") from None
        return Generation(self, prompt, ids, config, params.stop, chat)
