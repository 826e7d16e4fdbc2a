"""The packed-vs-padded self-test passes on the real model and catches attention leaks."""

import subprocess
import sys

import torch

from instructkit.data import Example
from instructkit.data.packing_check import check_packing
from instructkit.model import GPTConfig, GPTModel


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


class IgnoresSegments(torch.nn.Module):
    """A model with the bug the check exists for: attention crosses example boundaries."""

    def __init__(self, model: GPTModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids=None, segment_ids=None):
        return self.model(input_ids, position_ids)

    def loss(self, input_ids, targets, position_ids=None, segment_ids=None):
        return self.model.loss(input_ids, targets, position_ids)


def test_packing_check_fails_when_attention_leaks():
    check = check_packing(IgnoresSegments(make_model()), make_examples(), 96, max_length=48)
    assert check.max_logit_difference > 1e-3
    assert not check.passed


def test_inspect_check_packing_cli(example_records_path, small_tokenizer_dir):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "instructkit",
            "data",
            "inspect",
            str(example_records_path),
            "--tokenizer",
            str(small_tokenizer_dir),
            "--check-packing",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "packing self-test" in result.stdout and "passed" in result.stdout
