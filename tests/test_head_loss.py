"""The chunked output head + cross-entropy equals the plain one, loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from instructkit.model.head_loss import head_cross_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def inputs(vocab: int = 1000, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 50, 16, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, vocab, (3, 50), generator=generator)
    targets[0, :10] = -100  # a masked prompt
    targets[2, 40:] = -100  # padding
    return hidden, weight, targets


def reference(hidden, weight, targets, reduction):
    keep = targets != -100
    return F.cross_entropy(F.linear(hidden[keep], weight), targets[keep], reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_elements", [7_000, 10**9])  # 7 rows per chunk; one chunk
def test_equals_unchunked_loss_and_gradients(reduction, chunk_elements):
    hidden, weight, targets = inputs()
    ours = head_cross_entropy(hidden, weight, targets, reduction, chunk_elements=chunk_elements)
    ours_grads = torch.autograd.grad(ours * 1.7, (hidden, weight))  # a non-unit upstream grad
    theirs = reference(hidden, weight, targets, reduction)
    theirs_grads = torch.autograd.grad(theirs * 1.7, (hidden, weight))
    torch.testing.assert_close(ours, theirs, atol=0, rtol=1e-6)
    for mine, expected in zip(ours_grads, theirs_grads):  # fp32 rounding of the largest entry
        torch.testing.assert_close(mine, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)


def test_frozen_head_and_no_grad_evaluation():
    hidden, weight, targets = inputs()
    weight.requires_grad_(False)  # LoRA freezes the head
    loss = head_cross_entropy(hidden, weight, targets, chunk_elements=7_000)
    (grad,) = torch.autograd.grad(loss, hidden)
    (expected,) = torch.autograd.grad(reference(hidden, weight, targets, "mean"), hidden)
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        evaluated = head_cross_entropy(hidden, weight, targets, chunk_elements=7_000)
    assert not evaluated.requires_grad
    torch.testing.assert_close(evaluated, loss.detach())


def test_tied_weight_gets_both_gradients():
    """A head tied to the embedding: the weight's gradient sums the head's and the lookup's."""
    _, weight, targets = inputs()
    ids = targets.clamp(min=0)

    def loss_with(head_loss):
        hidden = F.embedding(ids, weight) * 0.5  # (B, T, C): the embedding feeds the head
        return head_loss(hidden, weight, targets, "mean")

    (ours,) = torch.autograd.grad(
        loss_with(lambda *a: head_cross_entropy(*a, chunk_elements=7_000)), weight
    )
    (theirs,) = torch.autograd.grad(loss_with(reference), weight)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_no_target_is_a_zero_loss_that_backpropagates():
    hidden, weight, targets = inputs()
    loss = head_cross_entropy(hidden, weight, torch.full_like(targets, -100))
    loss.backward()
    assert float(loss.detach()) == 0.0 and hidden.grad is not None


def test_bf16_autocast_is_close_to_fp32():
    hidden, weight, targets = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head_cross_entropy(hidden, weight, targets, chunk_elements=7_000)
        grads = torch.autograd.grad(loss, (hidden, weight))
    assert loss.dtype == torch.float32 and grads[0].dtype == grads[1].dtype == torch.float32
    expected = reference(hidden, weight, targets, "mean")
    torch.testing.assert_close(loss, expected, atol=0, rtol=1e-2)
