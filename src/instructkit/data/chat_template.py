"""The model's own chat template as a prompt style, rendered the way transformers renders it.

Chat models ship a Jinja template (`chat_template` in `tokenizer_config.json`) that turns
a list of `{"role", "content"}` messages into the text the model was trained on. Training
and prompting with exactly that text is what makes a fine-tune of Llama 3 or Qwen behave
like the original, so we render it with the environment `apply_chat_template` uses
(sandboxed, `trim_blocks`, `lstrip_blocks`, `loopcontrols`, `raise_exception`,
`strftime_now`, a `tojson` that keeps non-ASCII text) and the same variables (`messages`,
`add_generation_prompt`, `tools`, `documents`, and the named special tokens). The template
travels with a run inside the saved tokenizer's `tokenizer_config.json`; the run records
the style name `chat_template`.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from instructkit.data.conversations import shared_prefix, to_messages
from instructkit.data.prompts import CHAT_TEMPLATE, PromptStyle, get_style
from instructkit.errors import UserError

STYLE_NAME = CHAT_TEMPLATE


def _generation_tag():
    """`{% generation %}...{% endgeneration %}` (TRL-style assistant markers) renders its body."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        tags = frozenset({"generation"})

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return GenerationTag


@lru_cache(maxsize=8)
def compile_template(template: str):
    """A compiled template; cached because every record is rendered a few times."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; transformers' does not.
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(format):
        return datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_generation_tag(), loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise UserError(f"chat template: line {error.lineno}: {error.message}") from None


def render_chat_template(
    template: str,
    messages: list[dict],
    add_generation_prompt: bool = False,
    special_tokens: dict[str, str] | None = None,
) -> str:
    """`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`."""
    import jinja2

    try:
        return compile_template(template).render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **(special_tokens or {}),
        )
    except jinja2.TemplateError as error:
        raise UserError(f"chat template: {error}") from None


class ChatTemplateStyle(PromptStyle):
    """A prompt style that is a model's Jinja chat template.

    An instruction record becomes one user turn (instruction, a blank line, input) and,
    when it has an output, one assistant turn; a conversation record keeps its turns.
    `prompt` renders everything before the last assistant turn with the generation
    prompt; `response` is the rest of the full rendering (answer and end-of-turn).
    """

    name = STYLE_NAME
    supports_conversations = True

    def __init__(
        self,
        template: str,
        special_tokens: dict[str, str] | None = None,
        stop_strings: tuple[str, ...] = (),
    ):
        compile_template(template)  # fail early on a broken template
        self.template = template
        self.special_tokens = dict(special_tokens or {})
        self.stop_strings = tuple(stop_strings)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ChatTemplateStyle:
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise UserError(
                f"prompt style {STYLE_NAME!r}: tokenizer {getattr(tokenizer, 'name', '')!r} has "
                "no chat_template in its tokenizer_config.json; choose another --style"
            )
        stops = tuple(dict.fromkeys(tokenizer.decode([i]) for i in tokenizer.end_ids))
        return cls(template, tokenizer.special_tokens, stops)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return render_chat_template(
            self.template, messages, add_generation_prompt, self.special_tokens
        )

    def prompt(self, record: dict) -> str:
        messages = to_messages(record)
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return self.render(messages, add_generation_prompt=True)

    def response(self, record: dict) -> str:
        full = self.render(to_messages(record))
        return full[shared_prefix(full, self.prompt(record)) :]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.template)} characters)"


def default_style_for(tokenizer) -> str:
    """The style to use when none is given: the model's chat template if it has one, else alpaca."""
    return STYLE_NAME if getattr(tokenizer, "chat_template", None) else "alpaca"


def resolve_style(name: str | PromptStyle | None, tokenizer=None) -> PromptStyle:
    """A style by name (None: `default_style_for(tokenizer)`); `chat_template` needs the tokenizer."""
    if name is None:
        name = default_style_for(tokenizer)
    if name == STYLE_NAME:
        if tokenizer is None:
            raise UserError(f"prompt style {STYLE_NAME!r} needs the model's tokenizer")
        return ChatTemplateStyle.from_tokenizer(tokenizer)
    return get_style(name)
