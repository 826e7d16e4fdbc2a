"""One tokenizer interface over tiktoken ranks, Hugging Face `tokenizer.json` and trained BPE.

The rest of instructkit only needs `encode`, `decode`, `eos_id`, `vocab_size` and `save`.
`load_tokenizer(spec)` accepts the book's tiktoken `"gpt2"` (downloaded and cached by
tiktoken on first use), a local `.tiktoken` ranks file, a `tokenizer.json`, or a directory
holding tokenizer files; `train_tokenizer` trains a byte-level BPE for small models.
`save(directory)` always writes a Hugging Face `tokenizer.json` plus GPT-2 `vocab.json` and
`merges.txt`, so `transformers.AutoTokenizer.from_pretrained(directory)` loads the result.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from instructkit.errors import ModelError
from instructkit.files import write_atomic

EOS_TOKEN = "<|endoftext|>"
# GPT-2's pre-tokenization pattern as tiktoken spells it ("gpt2" / "r50k_base").
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
# What BPE may merge within when trained with `word_pieces`: runs of letters, and chat
# markers such as <|user|>; every other character (space, digit, punctuation) stays a token
# of its own, so a word or a number is the same tokens wherever it stands.
WORD_PIECES_PATTERN = r"<\|[a-z]+\|>|[^A-Za-z]"
GPT2_HELP = (
    "the GPT-2 vocabulary could not be downloaded ({reason}); supply it locally: put "
    "tiktoken's cached files in a folder named by TIKTOKEN_CACHE_DIR, or pass "
    "--tokenizer FILE with a gpt2 `.tiktoken` ranks file or a `tokenizer.json` "
    "(every GPT-2 checkpoint directory has one), or --tokenizer DIR for such a directory"
)


class Tokenizer:
    """What instructkit needs from a tokenizer; subclasses wrap one backend each.

    Chat models add a `chat_template` (Jinja text from `tokenizer_config.json`), a
    begin-of-text token, and several ids that end a turn (`end_ids`); for GPT-2 these are
    None and just `(eos_id,)`.
    """

    name: str
    eos_id: int
    vocab_size: int
    chat_template: str | None = None
    bos_id: int | None = None

    @property
    def end_ids(self) -> tuple[int, ...]:
        """Every id that ends generation: eos, plus generation_config.json's eos ids."""
        return (self.eos_id,)

    @property
    def special_tokens(self) -> dict[str, str]:
        """Named special tokens as text (`bos_token`, `eos_token`, ...), as templates see them."""
        return {"eos_token": self.decode([self.eos_id])}

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        """Write `tokenizer.json`, `vocab.json`, `merges.txt` and a `tokenizer_config.json`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"


class TiktokenTokenizer(Tokenizer):
    """A tiktoken `Encoding`, as the book uses; end-of-text written in text is encoded as eos."""

    def __init__(self, encoding, name: str | None = None):
        self.encoding = encoding
        self.name = name or encoding.name
        self.eos_id = encoding.eot_token
        self.vocab_size = encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def save(self, directory: str | Path) -> None:
        ranks = self.encoding._mergeable_ranks
        specials = self.encoding._special_tokens
        vocab = {_bytes_to_unicode_text(token): rank for token, rank in ranks.items()}
        merges = _recover_merges(ranks)
        _write_bpe_files(Path(directory), vocab, merges, specials, self.encoding._pat_str)


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (from a `tokenizer.json`, GPT-2 vocab files, or training).

    `config` is the model's `tokenizer_config.json` (empty for GPT-2 and trained BPEs): its
    named special tokens, chat template and tokenizer class are read here and written back
    by `save`, so transformers loads the saved directory as it loaded the original.
    """

    def __init__(
        self,
        backend,
        name: str,
        eos_id: int | None = None,
        config: dict | None = None,
        extra_end_ids: Iterable[int] = (),
    ):
        self.backend = backend
        self.name = name
        self.config = dict(config or {})
        _add_configured_tokens(backend, self.config, name)
        self.tokens = {
            key: token
            for key in SPECIAL_TOKEN_KEYS
            if (token := _token_text(self.config.get(key))) is not None
        }
        eos_token = self.tokens.get("eos_token")
        if eos_id is None and eos_token is not None:
            eos_id = backend.token_to_id(eos_token)
        if eos_id is None:
            eos_id = backend.token_to_id(EOS_TOKEN)
        if eos_id is None:
            raise ModelError(
                f"{name}: tokenizer has no end-of-text token {eos_token or EOS_TOKEN!r}; "
                "instructkit needs one to end every training example"
            )
        self.eos_id = eos_id
        self.tokens["eos_token"] = backend.id_to_token(eos_id)
        bos_token = self.tokens.get("bos_token")
        self.bos_id = backend.token_to_id(bos_token) if bos_token is not None else None
        self.chat_template = _template_text(self.config.get("chat_template"))
        self._end_ids = tuple(dict.fromkeys([eos_id, *extra_end_ids]))
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

    @property
    def end_ids(self) -> tuple[int, ...]:
        return self._end_ids

    @property
    def special_tokens(self) -> dict[str, str]:
        return dict(self.tokens)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / "tokenizer.json", self.backend.to_str())
        model = json.loads(self.backend.to_str())["model"]
        if model.get("type") == "BPE":  # GPT-2's slow-tokenizer files too
            merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
            _write_vocab_merges(directory, model["vocab"], merges)
        config = self.config or _gpt2_config(self.tokens["eos_token"])
        config = {**config, **self.tokens}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        write_atomic(directory / "tokenizer_config.json", json.dumps(config, indent=2))
        # A chat_template.jinja beside it would override ours in transformers.
        (directory / "chat_template.jinja").unlink(missing_ok=True)


# The named special tokens of tokenizer_config.json that transformers hands to chat templates.
SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template_text(value) -> str | None:
    """The chat template: a string, or transformers' list of named templates ("default")."""
    if isinstance(value, list):
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        value = named.get("default")
    return value if isinstance(value, str) else None


def _add_configured_tokens(backend, config: dict, name: str) -> None:
    """Add the config's `added_tokens_decoder` entries that tokenizer.json lacks, at their ids."""
    from tokenizers import AddedToken

    decoder = config.get("added_tokens_decoder")
    if not isinstance(decoder, dict):
        return
    for key, entry in sorted(decoder.items(), key=lambda item: int(item[0])):
        content = _token_text(entry)
        if content is None or backend.token_to_id(content) is not None:
            continue
        if int(key) != backend.get_vocab_size(with_added_tokens=True):
            raise ModelError(
                f"{name}: tokenizer_config.json adds {content!r} as id {key}, which "
                "tokenizer.json cannot give it; the two files do not belong together"
            )
        special = bool(entry.get("special", True)) if isinstance(entry, dict) else True
        backend.add_tokens([AddedToken(content, special=special, normalized=False)])


def as_tokenizer(obj) -> Tokenizer:
    """Wrap a tiktoken `Encoding` or a `tokenizers.Tokenizer`; our own tokenizers pass through."""
    if isinstance(obj, Tokenizer):
        return obj
    import tiktoken
    import tokenizers

    if isinstance(obj, tiktoken.Encoding):
        return TiktokenTokenizer(obj)
    if isinstance(obj, tokenizers.Tokenizer):
        return HFTokenizer(obj, name="tokenizers.Tokenizer")
    raise TypeError(f"cannot use {type(obj).__name__} as a tokenizer")


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """Load by spec: a tiktoken name, a `.tiktoken` file, a `tokenizer.json`, or a directory."""
    import tiktoken

    text = str(spec)
    path = Path(text).expanduser()
    if not path.exists() and text in tiktoken.list_encoding_names():
        return _load_tiktoken_name(text)
    if path.is_dir():
        return _load_directory(path)
    if not path.exists():
        raise ModelError(
            f"{text}: no such tokenizer; give a tiktoken name ("
            + ", ".join(tiktoken.list_encoding_names())
            + "), a .tiktoken ranks file, a tokenizer.json, or a directory holding one"
        )
    if path.suffix == ".tiktoken":
        return _load_ranks_file(path)
    if path.suffix == ".json":
        return _load_tokenizer_json(path)
    raise ModelError(f"{path}: unknown tokenizer file type; expected .tiktoken or tokenizer.json")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, *, word_pieces: bool = False
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE on `texts`, with `<|endoftext|>` as eos.

    word_pieces: merge only within letter runs (`WORD_PIECES_PATTERN`) instead of GPT-2's
    space-led words; a small model then copies a word from its prompt token for token
    (GPT-2's pieces spell " cat" inside a list and "cat" at the start of an answer).
    """
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    minimum = 256 + 1  # every byte plus end-of-text
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (256 bytes + end-of-text)")
    backend = Backend(models.BPE())
    if word_pieces:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(WORD_PIECES_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    kind = "word-pieces-bpe" if word_pieces else "trained-bpe"
    return HFTokenizer(backend, name=f"{kind}-{vocab_size}")


def _load_tiktoken_name(name: str) -> Tokenizer:
    import tiktoken

    try:
        return TiktokenTokenizer(tiktoken.get_encoding(name), name=name)
    except (OSError, ValueError) as error:  # requests' ConnectionError is an OSError
        reason = type(error).__name__
        raise ModelError(f"tokenizer {name!r}: " + GPT2_HELP.format(reason=reason)) from None


def _load_ranks_file(path: Path) -> Tokenizer:
    """A tiktoken ranks file (`base64-token rank` per line); GPT-2 pattern, eos after the ranks."""
    import tiktoken

    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise ModelError(f"{path}: cannot read tokenizer file ({error.strerror})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ModelError(
                f"{path}: line {number}: expected `<base64 token> <rank>` in a .tiktoken file"
            ) from None
    if not ranks:
        raise ModelError(f"{path}: empty .tiktoken file")
    eos = max(ranks.values()) + 1
    encoding = tiktoken.Encoding(
        name=path.stem,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOS_TOKEN: eos},
    )
    return TiktokenTokenizer(encoding, name=str(path))


def _load_tokenizer_json(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer as Backend

    try:
        backend = Backend.from_file(str(path))
    except Exception as error:  # noqa: BLE001 - tokenizers raises plain Exception on bad files
        raise ModelError(f"{path}: not a Hugging Face tokenizer.json ({error})") from None
    config = _read_config(path.parent)
    return HFTokenizer(
        backend, name=str(path), config=config, extra_end_ids=_generation_end_ids(path.parent)
    )


def _read_config(directory: Path) -> dict:
    """`tokenizer_config.json` beside the tokenizer ({} when absent), with the chat template
    from `chat_template.jinja` when the model keeps it in its own file (newer transformers)."""
    config = _read_json_object(directory / "tokenizer_config.json")
    template = directory / "chat_template.jinja"
    if template.is_file():
        config["chat_template"] = template.read_text(encoding="utf-8")
    return config


def _generation_end_ids(directory: Path) -> list[int]:
    """generation_config.json's `eos_token_id`: one id or a list (Llama 3 ends on two)."""
    found = _read_json_object(directory / "generation_config.json").get("eos_token_id")
    ids = found if isinstance(found, list) else [found]
    return [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]


def _read_json_object(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot read ({error})") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return value


def _load_directory(path: Path) -> Tokenizer:
    if (path / "tokenizer.json").is_file():
        return _load_tokenizer_json(path / "tokenizer.json")
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders, models, pre_tokenizers

        try:
            model = models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
        except Exception as error:  # noqa: BLE001 - as above
            raise ModelError(f"{path}: cannot read vocab.json/merges.txt ({error})") from None
        backend = Backend(model)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        eos = backend.token_to_id(EOS_TOKEN)
        if eos is not None:
            backend.add_special_tokens([EOS_TOKEN])
        return HFTokenizer(
            backend,
            name=str(path),
            config=_read_config(path),
            extra_end_ids=_generation_end_ids(path),
        )
    found = sorted(path.glob("*.tiktoken"))
    if len(found) == 1:
        return _load_ranks_file(found[0])
    raise ModelError(
        f"{path}: no tokenizer.json, vocab.json + merges.txt, or single .tiktoken file found"
    )


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte (the byte-level BPE alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars)}


def _bytes_to_unicode_text(token: bytes) -> str:
    table = _byte_to_unicode()
    return "".join(table[byte] for byte in token)


def _recover_merges(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    """The merge list that reproduces tiktoken ranks: replay BPE below each token's rank."""
    merges: list[tuple[int, str, str]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        parts = [bytes([byte]) for byte in token]
        while len(parts) > 2:
            best_index, best_rank = -1, rank
            for index in range(len(parts) - 1):
                pair_rank = ranks.get(parts[index] + parts[index + 1])
                if pair_rank is not None and pair_rank < best_rank:
                    best_index, best_rank = index, pair_rank
            if best_index < 0:
                break
            parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
        if len(parts) != 2:
            raise ModelError(f"tiktoken rank {rank} cannot be expressed as a BPE merge")
        merges.append((rank, _bytes_to_unicode_text(parts[0]), _bytes_to_unicode_text(parts[1])))
    merges.sort()
    return [(left, right) for _, left, right in merges]


def _write_bpe_files(
    directory: Path,
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    specials: dict[str, int],
    pattern: str,
) -> None:
    """Write a byte-level BPE as `tokenizer.json`, `vocab.json`, `merges.txt`, config."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    directory.mkdir(parents=True, exist_ok=True)
    full_vocab = dict(vocab)
    for token, token_id in specials.items():
        full_vocab[token] = token_id
    backend = Backend(models.BPE(vocab=full_vocab, merges=list(merges)))
    if pattern == GPT2_PATTERN:  # HF's ByteLevel regex is GPT-2's
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(sorted(specials, key=specials.get))
    write_atomic(directory / "tokenizer.json", backend.to_str())
    _write_vocab_merges(directory, full_vocab, merges)
    eos = EOS_TOKEN if EOS_TOKEN in specials else next(iter(specials), EOS_TOKEN)
    _write_tokenizer_config(directory, eos)


def _write_vocab_merges(directory: Path, vocab: dict[str, int], merges) -> None:
    write_atomic(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    write_atomic(directory / "merges.txt", "\n".join(lines) + "\n")


def _gpt2_config(eos_token: str) -> dict:
    """GPT-2's tokenizer_config.json: end-of-text is also begin and unknown."""
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": eos_token,
        "eos_token": eos_token,
        "unk_token": eos_token,
        "add_prefix_space": False,
        "model_max_length": 1024,
    }


def _write_tokenizer_config(directory: Path, eos_token: str) -> None:
    write_atomic(directory / "tokenizer_config.json", json.dumps(_gpt2_config(eos_token), indent=2))
