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
