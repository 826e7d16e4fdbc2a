"""The packed-vs-padded self-test passes on the real model and catches attention leaks."""

import subprocess
import sys

import torch

from instructkit.data import Example, InstructionCollator
from instructkit.model import GPTConfig, GPTModel
from instructkit.model.packing_check import check_packing, example_logits


def make_model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig.preset("tiny", vocab_size=97)).eval()


def make_examples() -> list[Example]:
    generator = torch.Generator().manual_seed(1)
    return [
        Example(torch.randint(0, 96, (n,), generator=generator).tolist(), n // 2)
        for n in (9, 14, 5, 21, 12, 7)
    ]


def test_packing_check_passes_on_the_model():
    check = check_packing(make_model(), make_examples(), pad_token_id=96, max_length=48)
    assert check.packed_rows < check.examples  # several examples share a row
    assert check.passed, check


def test_example_logits_see_a_leak_when_segments_are_merged():
    model, examples = make_model(), make_examples()
    packed = InstructionCollator(96, allowed_max_length=48, pack=True)(examples)
    honest = example_logits(model, packed)
    packed.segment_ids = (packed.segment_ids > 0).long()  # one segment per row: attention leaks
    leaking = example_logits(model, packed)
    differences = [float((honest[ids] - leaking[ids]).abs().max()) for ids in honest]
    assert max(differences) > 1e-3


def test_inspect_check_packing_cli(example_records_path, small_tokenizer_dir):
    result = subprocess.run(
        [sys.executable, "-m", "instructkit", "data", "inspect", str(example_records_path),
         "--tokenizer", str(small_tokenizer_dir), "--check-packing"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "packing self-test" in result.stdout and "passed" in result.stdout
