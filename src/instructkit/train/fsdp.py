"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for `--strategy fsdp` under torchrun.

DDP keeps a whole copy of the weights, gradients and AdamW state (16 bytes per parameter)
on every rank; FSDP shards all three across the ranks and gathers one transformer block's
weights at a time for its forward and backward. The recipe is PyTorch's own (torchtune
and LitGPT shard the same way): `fully_shard` each block, then the root, which here is
the objective module, so the embeddings and the head are gathered when the loss runs
(the loop calls `objective(batch)`, not `model.forward`). With `--precision bf16` the
gathered weights and the compute are bf16 while gradients reduce in fp32.

`full_state_dict` gathers the sharded weights into one plain state dict on rank 0 for the
consolidated `model/` directory.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.checkpoint import checkpoint


def transformer_blocks(root: nn.Module) -> list[nn.Module]:
    """The repeated blocks of every model under `root` (`h` in GPTModel, `layers` in the
    Llama/Qwen decoder): an objective may hold more than one model."""
    blocks = []
    for module in root.modules():
        for name in ("h", "layers"):
            found = getattr(module, name, None)
            if isinstance(found, nn.ModuleList):
                blocks.extend(found)
    if not blocks:
        raise TypeError(f"{type(root).__name__} holds no block list (h or layers) to shard")
    return blocks


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of keeping them.

    The block's own `forward` is replaced on the instance, so parameter names (and so
    checkpoints and the saved model) stay the same as without it.
    """
    for block in transformer_blocks(model):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def shard(objective: nn.Module, bf16: bool) -> nn.Module:
    """`fully_shard` every block under `objective`, then `objective` (the root), in place."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None,
        reduce_dtype=torch.float32 if bf16 else None,
    )
    for block in transformer_blocks(objective):
        fully_shard(block, mp_policy=policy)
    fully_shard(objective, mp_policy=policy)
    return objective


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every rank calls this (it is a collective); rank 0 gets the whole state dict on the
    CPU, the others an empty dict."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def unsharded_copy(
    model: nn.Module, state: dict[str, torch.Tensor], lora: tuple | None
) -> nn.Module:
    """A plain model of `model`'s class and config holding `state` (on rank 0, to save)."""
    from instructkit.model.lora import apply_lora

    copy = type(model)(model.config)
    if lora is not None:
        apply_lora(copy, *lora)
    copy.load_state_dict(state)  # copies into the tensors, so tied weights stay tied
    return copy


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())
