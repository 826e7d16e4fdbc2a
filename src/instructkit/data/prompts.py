"""Prompt styles: how a record becomes the text a model is trained on and prompted with.

A style splits the training text into `prompt(record)` (everything up to and including
the response header) and `response(record)` (the answer), so `prompt + response` is the
training text and the prompt length in tokens is known exactly. `alpaca` is the book's
`format_input` byte for byte; `phi3` is the book's exercise 7.1; `chatml` is the
ChatML layout (also for multi-turn conversations); `chat_template` is a model's own Jinja
template (`data/chat_template.py`). Styles are small classes in a registry, looked up by name and saved
with a run so generation uses the style the model was trained on.
"""

from __future__ import annotations

from instructkit.errors import UserError


def format_input(entry: dict) -> str:
    """The book's Alpaca prompt: instruction block and optional input block, no response."""
    instruction_text = (
        f"Below is an instruction that describes a task. "
        f"Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


class PromptStyle:
    """A named template; subclasses give the prompt (with response header) and the response."""

    name: str = ""
    response_header: str = ""
    stop_strings: tuple[str, ...] = ()
    supports_conversations: bool = False
    """Whether `render` can lay out a multi-turn message list (chatml and chat templates)."""

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The text of a conversation; with `add_generation_prompt`, ending in the assistant header."""
        raise UserError(
            f"prompt style {self.name!r} formats instruction records only; conversations need "
            "--style chatml or a model with a chat template"
        )

    def prompt(self, record: dict) -> str:
        raise NotImplementedError

    def response(self, record: dict) -> str:
        return record["output"]

    def text(self, record: dict) -> str:
        """The full training text (the book's `full_text`)."""
        return self.prompt(record) + self.response(record)

    def extract_response(self, generated_text: str, prompt: str) -> str:
        """The answer in decoded model output: after the prompt, header removed, stripped."""
        if generated_text.startswith(prompt):
            answer = generated_text[len(prompt) :]
        else:
            # Decoding can differ from the prompt text; fall back to the last response header.
            header = self.response_header.strip()
            position = generated_text.rfind(header) if header else -1
            answer = generated_text[position + len(header) :] if position >= 0 else generated_text
        header = self.response_header.strip()
        if header and answer.lstrip().startswith(header):
            answer = answer.lstrip()[len(header) :]
        for stop in self.stop_strings:
            answer = answer.split(stop, 1)[0]
        return answer.strip()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Alpaca(PromptStyle):
    """The book's format (section 7.2): Alpaca instruction/input blocks, `### Response:`."""

    name = "alpaca"
    response_header = "\n\n### Response:\n"

    def prompt(self, record: dict) -> str:
        return format_input(record) + self.response_header


class Phi3(PromptStyle):
    """The book's exercise 7.1: Phi-3 `<|user|>` / `<|assistant|>:` markers."""

    name = "phi3"
    response_header = "\n<|assistant|>:\n"
    stop_strings = ("<|user|>",)

    def prompt(self, record: dict) -> str:
        instruction_text = f"<|user|>\n{record['instruction']}"
        input_text = f"\n{record['input']}" if record["input"] else ""
        return instruction_text + input_text + self.response_header


class ChatML(PromptStyle):
    """ChatML turns; the answer ends with `<|im_end|>` so the model learns to close its turn."""

    name = "chatml"
    response_header = "<|im_start|>assistant\n"
    stop_strings = ("<|im_end|>",)
    supports_conversations = True

    def prompt(self, record: dict) -> str:
        user = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
        return f"<|im_start|>user\n{user}<|im_end|>\n" + self.response_header

    def response(self, record: dict) -> str:
        return record["output"] + "<|im_end|>"

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """Conversations in the usual ChatML layout: every turn closed by `<|im_end|>` and a newline."""
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + (self.response_header if add_generation_prompt else "")


_STYLES: dict[str, PromptStyle] = {style.name: style for style in (Alpaca(), Phi3(), ChatML())}
# `chat_template` is the model's own template; it is built from the tokenizer (resolve_style).
CHAT_TEMPLATE = "chat_template"
STYLE_NAMES: tuple[str, ...] = (*_STYLES, CHAT_TEMPLATE)


def get_style(name: str | PromptStyle) -> PromptStyle:
    """Look a style up by name (a style instance passes through)."""
    if isinstance(name, PromptStyle):
        return name
    if name == CHAT_TEMPLATE:
        raise UserError(
            f"prompt style {name!r} is the model's own template: it needs the model's tokenizer "
            "(instructkit.data.resolve_style(name, tokenizer))"
        )
    try:
        return _STYLES[name]
    except KeyError:
        raise UserError(
            f"unknown prompt style {name!r}; choose one of: {', '.join(STYLE_NAMES)}"
        ) from None
