"""`instructkit chat`: talk to a model in the terminal, its reply streamed as it is generated.

Each line you type becomes the instruction of one prompt in the model's prompt style (the
one saved with the run, else alpaca); the model answers it alone, without earlier turns,
because that is the single-turn format it was fine-tuned on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator

from instructkit.commands import HelpFormatter, add_model_arguments
from instructkit.commands.flags import add_generation_flags, generation_config

EXIT_COMMANDS = ("/exit", "/quit")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description=(
            "Chat with a model: each line is an instruction, the reply streams as it is\n"
            "generated. /exit or Ctrl-D quits; Ctrl-C stops the current reply.\n\n"
            "  instructkit chat --model runs/demo\n"
            "  echo 'Name three primary colors.' | instructkit chat --model runs/demo"
        ),
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser)
    add_generation_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from instructkit.errors import UserError
    from instructkit.generate import stream
    from instructkit.loading import load_for_generation
    from instructkit.responses import check_prompt_fits

    config = generation_config(args)  # bad values fail before the model loads
    model, tokenizer, style = load_for_generation(
        args.model, args.style, args.tokenizer, args.device
    )
    interactive = sys.stdin.isatty()
    print(
        f"chatting with {args.model} (style {style.name}); /exit or Ctrl-D quits", file=sys.stderr
    )
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in EXIT_COMMANDS:
            return 0
        if not line.strip():
            continue
        prompt_ids = tokenizer.encode(style.prompt({"instruction": line.strip(), "input": ""}))
        try:
            check_prompt_fits(len(prompt_ids), model, "the message")
        except UserError as error:
            if not interactive:  # piped input: a script should see it fail
                raise
            print(f"error: {error.problems[0]}", file=sys.stderr)  # the user may type again
            continue
        tokens = stream(model, prompt_ids, eos_id=tokenizer.eos_id, config=config)
        try:
            for piece in reply_text(tokens, tokenizer, style.stop_strings):
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            pass  # stop this reply, keep chatting
        finally:
            tokens.close()
        print(flush=True)


def reply_text(
    tokens: Iterable[int], tokenizer, stop_strings: tuple[str, ...] = ()
) -> Iterator[str]:
    """The reply's text in printable pieces as tokens arrive.

    Text is held back while it could still change: a token can end inside a multi-byte
    character (decoded as U+FFFD until the rest arrives), or inside a stop string, which
    ends the reply and is not shown. Leading whitespace is dropped.
    """
    ids: list[int] = []
    shown = ""
    for token in tokens:
        ids.append(token)
        text = tokenizer.decode(ids).lstrip()
        stops = [text.index(stop) for stop in stop_strings if stop in text]
        if stops:
            yield text[len(shown) : min(stops)]
            return
        ready = len(text.rstrip("\ufffd"))
        for stop in stop_strings:  # keep back a tail that may begin a stop string
            for size in range(min(len(stop) - 1, ready), 0, -1):
                if text[:ready].endswith(stop[:size]):
                    ready -= size
                    break
        if ready > len(shown):
            yield text[len(shown) : ready]
            shown = text[:ready]
    text = tokenizer.decode(ids).lstrip()
    if len(text) > len(shown):
        yield text[len(shown) :]
