"""Shared fixtures: the example records file in the repo and a small tokenizer trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from shared_data import SHARED_DATA

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "instructions.json"
BOOK_DATA = SHARED_DATA / "instruction-data.json"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module (`pytestmark = usefixtures(...)`): on a small
    shared CPU box, torch's spinning worker threads make tiny models 10-100x slower.
    Restored afterwards for other test modules."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def example_records_path() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def example_records() -> list[dict]:
    from instructkit.data import load_instructions

    return load_instructions(EXAMPLES)


@pytest.fixture(scope="session")
def small_tokenizer(example_records):
    """A byte-level BPE (vocab 400, eos `<|endoftext|>`) trained on the example records."""
    from instructkit.data import get_style
    from instructkit.tokenizer import train_tokenizer

    style = get_style("alpaca")
    return train_tokenizer([style.text(record) for record in example_records], vocab_size=400)


@pytest.fixture(scope="session")
def small_tokenizer_dir(small_tokenizer, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    small_tokenizer.save(directory)
    return directory


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nothing can be written in, even by root: a read-only tmpfs mount when
    running as root (permission bits do not stop root), else mode 0555."""
    import os
    import subprocess

    path = tmp_path / "read-only"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)]
    if subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root without the right to mount: nothing is read-only to root")
    yield path
    subprocess.run(["umount", str(path)], capture_output=True, check=False)


# Tiny random chat checkpoints of the new families, written by transformers itself, with a
# chat tokenizer (chat_fixtures) in the same directory: what a hub download looks like.
CHAT_FAMILIES = {
    # family: (transformers config class, chat_fixtures template, config fields)
    "llama": ("LlamaConfig", "llama3",
              {"num_key_value_heads": 2, "rope_theta": 500000.0, "tie_word_embeddings": True}),
    "qwen2": ("Qwen2Config", "qwen2.5", {"num_key_value_heads": 2, "tie_word_embeddings": False}),
    "qwen3": ("Qwen3Config", "qwen3",
              {"num_key_value_heads": 1, "head_dim": 24, "tie_word_embeddings": True}),
}  # fmt: skip


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    """`chat_model_dir(family, padding=0)`: a directory with a tiny random Llama / Qwen2 /
    Qwen3 checkpoint (config.json, model.safetensors, generation_config.json with both end
    ids) and its chat tokenizer; `padding` extra embedding rows past the tokenizer's last id,
    as the hub's Llama and Qwen checkpoints have. Built once per session and argument."""
    import warnings

    import torch
    import transformers
    from chat_fixtures import write_chat_tokenizer

    made: dict[tuple[str, int], Path] = {}

    def make(family: str, padding: int = 0) -> Path:
        if (family, padding) in made:
            return made[family, padding]
        class_name, template, fields = CHAT_FAMILIES[family]
        directory = tmp_path_factory.mktemp(f"{family}-chat")
        vocabulary = tmp_path_factory.mktemp(f"{family}-tokenizer")
        write_chat_tokenizer(vocabulary, template)
        from instructkit.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(vocabulary)
        config = getattr(transformers, class_name)(
            vocab_size=tokenizer.vocab_size + padding,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=list(tokenizer.end_ids),
            **fields,
        )
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(directory)
        write_chat_tokenizer(directory, template)
        made[family, padding] = directory
        return directory

    return make
