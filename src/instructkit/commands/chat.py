"""`instructkit chat`: talk to a model in the terminal, its reply streamed as it is generated.

With a model that has a chat template (Llama 3, Qwen; or --style chatml) the chat is
multi-turn: each line is a user turn, the whole history (an optional --system prompt, then
the turns so far) is rendered with the template, and the oldest turns are dropped when it
would no longer leave room for the reply in the context; the system prompt stays. With a
single-turn style (the book's alpaca, the GPT-2 default) each line is the instruction of
one prompt, answered alone, because that is the format the model was fine-tuned on.
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
            "Chat with a model: each line is a user turn (a multi-turn conversation with a\n"
            "chat-template model; one instruction at a time with alpaca), the reply streams\n"
            "as it is generated. /exit or Ctrl-D quits; Ctrl-C stops the current reply.\n\n"
            "  instructkit chat --model runs/demo\n"
            "  echo 'Name three primary colors.' | instructkit chat --model runs/demo"
        ),
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--system",
        default=None,
        help="system prompt for multi-turn chat (kept when old turns are dropped)",
    )
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
    config = config.for_tokenizer(tokenizer)  # any end id stops a reply
    multi_turn = style.supports_conversations
    if args.system is not None and not multi_turn:
        raise UserError(
            f"--system needs a multi-turn prompt style (a chat template or chatml); "
            f"{args.model} uses {style.name}"
        )
    history = [{"role": "system", "content": args.system}] if args.system else []
    limit = prompt_limit(model.config.context_length, config.max_new_tokens)
    interactive = sys.stdin.isatty()
    turns = "multi-turn" if multi_turn else "one instruction at a time"
    print(
        f"chatting with {args.model} (style {style.name}, {turns}); /exit or Ctrl-D quits",
        file=sys.stderr,
    )
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in EXIT_COMMANDS:
            return 0
        if not line.strip():
            continue
        if multi_turn:
            history.append({"role": "user", "content": line.strip()})
            history, prompt_ids = fit_history(style, tokenizer, history, limit)
        else:
            prompt_ids = tokenizer.encode(style.prompt({"instruction": line.strip(), "input": ""}))
        try:
            check_prompt_fits(len(prompt_ids), model, "the message")
        except UserError as error:
            if not interactive:  # piped input: a script should see it fail
                raise
            print(f"error: {error.problems[0]}", file=sys.stderr)  # the user may type again
            if multi_turn:
                history.pop()
            continue
        tokens = stream(model, prompt_ids, config=config)
        reply = []
        try:
            for piece in reply_text(tokens, tokenizer, style.stop_strings):
                print(piece, end="", flush=True)
                reply.append(piece)
        except KeyboardInterrupt:
            pass  # stop this reply, keep chatting
        finally:
            tokens.close()
        print(flush=True)
        if multi_turn:
            history.append({"role": "assistant", "content": "".join(reply)})


def prompt_limit(context_length: int, max_new_tokens: int) -> int:
    """Most prompt tokens a turn may use: the context less room for the reply (at most half
    the context, so that a large --max-new-tokens still leaves room for some history)."""
    return context_length - min(max_new_tokens, context_length // 2)


def fit_history(style, tokenizer, messages: list[dict], limit: int) -> tuple[list[dict], list[int]]:
    """The latest turns whose rendering (with the assistant header) is at most `limit`
    tokens, and those tokens. A leading system message is always kept; the oldest
    user/assistant pair is dropped first; the last user turn stays even when alone too long
    (generation then keeps its last tokens, as the book's `generate` crops)."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    while True:
        ids = tokenizer.encode(style.render(system + turns, add_generation_prompt=True))
        if len(ids) <= limit or len(turns) <= 1:
            return system + turns, ids
        turns = turns[2:] if len(turns) > 2 else turns[1:]


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
