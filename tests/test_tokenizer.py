"""Tests for tokenizers: tiktoken and tokenizer.json backends, training, save/load round trips."""

from __future__ import annotations

import base64
import json

import pytest
import tiktoken
import tokenizers

from instructkit.errors import ModelError
from instructkit.tokenizer import (
    EOS_TOKEN,
    GPT2_PATTERN,
    HFTokenizer,
    TiktokenTokenizer,
    _byte_to_unicode,
    as_tokenizer,
    load_tokenizer,
    train_tokenizer,
)

SAMPLE = "Convert 25 degrees: it's 77°F, café 日本.\n\n### Response:\n  spaced<|endoftext|>after"


def ranks_of(tokenizer: HFTokenizer) -> dict[bytes, int]:
    """The trained byte-level BPE as tiktoken ranks (ids are in merge order)."""
    to_byte = {char: byte for byte, char in _byte_to_unicode().items()}
    return {
        bytes(to_byte[char] for char in token): token_id
        for token, token_id in tokenizer.backend.get_vocab().items()
        if token != EOS_TOKEN
    }


@pytest.fixture(scope="module")
def encoding(small_tokenizer) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="small",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks_of(small_tokenizer),
        special_tokens={EOS_TOKEN: small_tokenizer.eos_id},
    )


def test_trained_tokenizer_round_trips_text_and_encodes_eos(small_tokenizer):
    ids = small_tokenizer.encode(SAMPLE)
    assert small_tokenizer.decode(ids) == SAMPLE
    assert ids.count(small_tokenizer.eos_id) == 1
    assert small_tokenizer.vocab_size == 400
    assert small_tokenizer.encode(EOS_TOKEN) == [small_tokenizer.eos_id]


def test_training_is_deterministic(example_records):
    texts = [record["instruction"] + record["output"] for record in example_records]
    first, second = train_tokenizer(texts, 300), train_tokenizer(texts, 300)
    assert first.backend.to_str() == second.backend.to_str()


def test_training_rejects_a_vocabulary_without_room_for_bytes():
    with pytest.raises(ValueError, match="at least 257"):
        train_tokenizer(["abc"], 100)


def test_word_pieces_spell_a_word_the_same_wherever_it_stands(tmp_path):
    """The demo's tokenizer: a word copied from a list into an answer is the same tokens, and
    digits and spaces are tokens of their own, whatever the merges learned."""
    texts = [
        "<|user|>\nWhat is the first word in this list: bread, tulip, 907\n<|assistant|>:\nbread"
    ]
    tokenizer = train_tokenizer(texts * 50, 320, word_pieces=True)
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(texts[0])]
    word = [tokenizer.decode([i]) for i in tokenizer.encode("tulip")]
    assert len(word) == 1  # merged: BPE still learns the words it sees often
    assert pieces.count("tulip") == 1 and pieces.count("bread") == 2
    assert "<|user|>" in pieces and {"9", "0", "7"} <= set(pieces)
    assert all(piece == " " or " " not in piece for piece in pieces)
    tokenizer.save(tmp_path)
    for spec in (tmp_path, tmp_path / "tokenizer.json"):
        assert load_tokenizer(spec).encode(SAMPLE) == tokenizer.encode(SAMPLE)
    assert tokenizer.decode(tokenizer.encode(SAMPLE)) == SAMPLE
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf(SAMPLE)["input_ids"] == tokenizer.encode(SAMPLE)


def test_save_then_load_gives_the_same_ids(small_tokenizer, small_tokenizer_dir):
    names = {path.name for path in small_tokenizer_dir.iterdir()}
    assert {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"} <= names
    expected = small_tokenizer.encode(SAMPLE)
    for spec in (small_tokenizer_dir, small_tokenizer_dir / "tokenizer.json"):
        loaded = load_tokenizer(spec)
        assert loaded.encode(SAMPLE) == expected
        assert loaded.eos_id == small_tokenizer.eos_id


def test_vocab_and_merges_alone_load_the_same(small_tokenizer, small_tokenizer_dir, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((small_tokenizer_dir / name).read_bytes())
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode(SAMPLE) == small_tokenizer.encode(SAMPLE)
    assert loaded.eos_id == small_tokenizer.eos_id


def test_transformers_loads_the_saved_directory(small_tokenizer, small_tokenizer_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(small_tokenizer_dir)
    assert hf(SAMPLE)["input_ids"] == small_tokenizer.encode(SAMPLE)
    assert hf.eos_token_id == small_tokenizer.eos_id
    # vocab.json + merges.txt alone (the GPT-2 slow-tokenizer files) give the same ids too.
    only_bpe = tmp_path / "bpe"
    only_bpe.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (only_bpe / name).write_bytes((small_tokenizer_dir / name).read_bytes())
    text = SAMPLE.replace(EOS_TOKEN, "")
    from_files = transformers.GPT2TokenizerFast.from_pretrained(only_bpe)
    assert from_files(text)["input_ids"] == small_tokenizer.encode(text)


def test_tiktoken_encoding_is_wrapped_like_the_book_uses_it(encoding, small_tokenizer):
    wrapped = as_tokenizer(encoding)
    assert isinstance(wrapped, TiktokenTokenizer)
    assert wrapped.encode(SAMPLE) == small_tokenizer.encode(SAMPLE)
    assert wrapped.decode(wrapped.encode(SAMPLE)) == SAMPLE
    assert wrapped.eos_id == small_tokenizer.eos_id
    assert as_tokenizer(wrapped) is wrapped


def test_tiktoken_save_converts_ranks_to_loadable_bpe(encoding, tmp_path):
    wrapped = as_tokenizer(encoding)
    wrapped.save(tmp_path)
    expected = wrapped.encode(SAMPLE)
    assert load_tokenizer(tmp_path).encode(SAMPLE) == expected
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2"
    assert len(merges) - 1 == len(encoding._mergeable_ranks) - 256
    transformers = pytest.importorskip("transformers")
    assert transformers.AutoTokenizer.from_pretrained(tmp_path)(SAMPLE)["input_ids"] == expected


def test_tiktoken_ranks_file(encoding, tmp_path):
    path = tmp_path / "small.tiktoken"
    lines = [
        f"{base64.b64encode(token).decode()} {rank}"
        for token, rank in sorted(encoding._mergeable_ranks.items(), key=lambda item: item[1])
    ]
    path.write_text("\n".join(lines) + "\n")
    loaded = load_tokenizer(path)
    text = SAMPLE.replace(EOS_TOKEN, "")
    assert loaded.encode(text) == encoding.encode(text)
    assert loaded.eos_id == max(encoding._mergeable_ranks.values()) + 1


def test_tokenizers_object_is_wrapped(small_tokenizer):
    backend = tokenizers.Tokenizer.from_str(small_tokenizer.backend.to_str())
    assert as_tokenizer(backend).encode(SAMPLE) == small_tokenizer.encode(SAMPLE)
    with pytest.raises(TypeError, match="cannot use dict as a tokenizer"):
        as_tokenizer({})


def test_gpt2_offline_says_how_to_give_a_local_vocabulary(monkeypatch):
    def unreachable(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", unreachable)
    with pytest.raises(ModelError) as caught:
        load_tokenizer("gpt2")
    (problem,) = caught.value.problems
    assert problem.startswith("tokenizer 'gpt2': the GPT-2 vocabulary could not be downloaded")
    assert "TIKTOKEN_CACHE_DIR" in problem and "--tokenizer FILE" in problem
    assert "tokenizer.json" in problem


def test_bad_specs_name_the_file(tmp_path):
    cases = {
        str(tmp_path / "missing.json"): "no such tokenizer",
    }
    (tmp_path / "empty").mkdir()
    cases[str(tmp_path / "empty")] = "no tokenizer.json, vocab.json + merges.txt, or single"
    (tmp_path / "vocab.txt").write_text("x")
    cases[str(tmp_path / "vocab.txt")] = "unknown tokenizer file type"
    (tmp_path / "broken.json").write_text("{}")
    cases[str(tmp_path / "broken.json")] = "not a Hugging Face tokenizer.json"
    (tmp_path / "bad.tiktoken").write_text("QQ== 0\nnot-a-line\n")
    cases[str(tmp_path / "bad.tiktoken")] = "line 2: expected `<base64 token> <rank>`"
    for spec, message in cases.items():
        with pytest.raises(ModelError) as caught:
            load_tokenizer(spec)
        assert caught.value.problems[0].startswith(spec), spec
        assert message in caught.value.problems[0]


def test_tokenizer_without_end_of_text_is_refused(tmp_path):
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    path = tmp_path / "tokenizer.json"
    path.write_text(backend.to_str())
    with pytest.raises(ModelError, match="no end-of-text token"):
        load_tokenizer(path)


def test_eos_named_in_tokenizer_config_is_used(small_tokenizer, tmp_path):
    small_tokenizer.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == EOS_TOKEN
    config["eos_token"] = "a"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(tmp_path).eos_id == small_tokenizer.backend.token_to_id("a")
