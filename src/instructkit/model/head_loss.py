"""Output head and cross-entropy together, a chunk of positions at a time.

With a 128k-152k vocabulary the logits are the largest tensor of a training step: a batch
of 8 x 1,024 targets makes 8,192 x 151,936 fp32 logits, 5 GB, and autograd would keep them
(and their softmax) for the backward pass. `head_cross_entropy` instead computes, for each
chunk of target positions, the logits, the loss and right away the gradients with respect
to the hidden states and the head weight (softmax minus one-hot, two matmuls), then drops
the logits. Only one chunk's logits ever exist; the backward pass just scales the stored
gradients. The arithmetic is the same as `F.cross_entropy(hidden @ weight.T, targets)`
with its backward (no extra matmul): the results agree to fp32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instructkit.constants import IGNORE_INDEX

CHUNK_ELEMENTS = 2**25
"""Logits per chunk (128 MB in fp32): about 220 positions of a 151,936-token vocabulary."""


def head_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Cross entropy of `hidden @ weight.T` (hidden (..., C), weight (V, C)) against
    `targets` (...), over positions whose target is not -100.

    The head runs only on those positions (with prompt masking most need no logits). With
    no target at all the loss is 0, still attached to the graph so backward works.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    keep = targets != IGNORE_INDEX  # (B, T)
    selected = hidden[keep]  # (N, C)
    if selected.shape[0] == 0:
        return hidden.sum() * 0.0
    kept = targets[keep]  # (N,)
    rows = max(1, chunk_elements // weight.shape[0])
    if torch.is_grad_enabled() and (selected.requires_grad or weight.requires_grad):
        total = ChunkedHeadLoss.apply(selected, weight, kept, rows)
    else:
        total = sum_loss(selected, weight, kept, rows)
    return total / kept.numel() if reduction == "mean" else total


def sum_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int):
    """Summed cross entropy, chunk by chunk, no gradients (evaluation)."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], rows):
        logits = F.linear(hidden[start : start + rows], weight).float()  # (n, V)
        total += F.cross_entropy(logits, targets[start : start + rows], reduction="sum")
    return total


class ChunkedHeadLoss(torch.autograd.Function):
    """Summed cross entropy whose gradients are computed in the forward pass, per chunk.

    Under autocast the matmuls run in its dtype (the weight cast once, not per chunk);
    softmax and the loss are fp32. Backward only scales the stored gradients, in place, so
    it can run once (no `retain_graph`).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows):  # hidden (N, C), weight (V, C), targets (N,)
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        dtype = dtype or hidden.dtype  # the matmuls' dtype
        hidden_mm, weight_mm = hidden.to(dtype), weight.to(dtype)
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden_mm) if want_hidden else None  # (N, C)
        grad_weight = None  # (V, C), fp32
        for start in range(0, hidden.shape[0], rows):
            h = hidden_mm[start : start + rows]  # (n, C)
            target = targets[start : start + rows]  # (n,)
            logits = (h @ weight_mm.T).float()  # (n, V), the only vocabulary-wide tensor
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            total += (lse - logits.gather(1, target[:, None]).squeeze(1)).sum()
            # d(sum of losses)/d(logits) = softmax - one_hot(target), built in place
            grad = logits.sub_(lse[:, None]).exp_()  # (n, V)
            grad[torch.arange(len(target), device=grad.device), target] -= 1.0
            grad = grad.to(dtype)
            if want_hidden:
                torch.matmul(grad, weight_mm, out=grad_hidden[start : start + rows])  # (n, C)
            if not want_weight:
                continue
            if grad_weight is None:
                grad_weight = (grad.T @ h).float()  # (V, C)
            elif dtype == torch.float32:
                grad_weight.addmm_(grad.T, h)  # no (V, C) temporary
            else:
                grad_weight += grad.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = hidden.dtype, weight.dtype
        ctx.used = False
        return total

    @staticmethod
    def backward(ctx, grad_total):
        if ctx.used:
            raise RuntimeError("the chunked head loss supports one backward pass")
        ctx.used = True
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(grad_total.to(grad_hidden.dtype)).to(hidden_dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_total).to(weight_dtype)
        return grad_hidden, grad_weight, None, None
