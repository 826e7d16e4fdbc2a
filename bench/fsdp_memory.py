"""Per-rank memory of a training step, DDP vs FSDP2, gpt2-medium shape, 2 CPU ranks (gloo).

Each strategy runs in 2 fresh processes (torch.multiprocessing, gloo): the gpt2-medium
shape (355M parameters, random weights, fp32), wrapped the way `instructkit finetune
--strategy ddp|fsdp` wraps it (instructkit.train.fsdp.shard: fully_shard per block and the
root objective), fused AdamW, then `--steps` optimizer steps on one batch of
`--tokens` random tokens. Per rank it reports:

- training state: the bytes of this rank's parameters + gradients + AdamW state, counted
  from the tensors after the last step (DDP: whole tensors; FSDP: the local shards);
- peak RSS during the last step, sampled every 2 ms from /proc/self/statm (the step's
  real footprint: state, activations, the gathered block weights, allocator slack).

    python bench/fsdp_memory.py [--steps 2] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

GIB = 2**30


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Highest RSS seen by a 2 ms sampling thread while the block runs."""

    def __enter__(self):
        self.peak, self._running = rss_bytes(), True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()


def local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def worker(rank: int, strategy: str, init_file: str, steps: int, tokens: int, out: str) -> None:
    from instructkit.model import GPTConfig, GPTModel
    from instructkit.train.fsdp import shard
    from instructkit.train.steps import LossModule

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("gpt2-medium"))
    objective = LossModule(model)
    if strategy == "fsdp":
        module = shard(objective, bf16=False)
    else:
        module = torch.nn.parallel.DistributedDataParallel(objective)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, 50257, (1, tokens + 1))
    batch = type("B", (), {"input_ids": ids[:, :-1], "targets": ids[:, 1:]})()
    batch.position_ids = batch.segment_ids = None
    for step in range(steps):
        with PeakRss() as peak:
            module(batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)  # keep the gradients: they are state too
    params = list(model.parameters())
    state = sum(local_bytes(p) + local_bytes(p.grad) for p in params)
    state += sum(
        local_bytes(v) for s in optimizer.state.values() for v in s.values() if v.dim() > 0
    )
    row = {
        "strategy": strategy,
        "rank": rank,
        "state_gib": state / GIB,
        "peak_gib": peak.peak / GIB,
    }
    with open(f"{out}.{rank}", "w") as handle:
        json.dump(row, handle)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; gpt2-medium shape, 2 gloo ranks")
    print("strategy | rank | params+grads+AdamW (GiB) | peak RSS in step (GiB)")
    for strategy in ("ddp", "fsdp"):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "row")
            spawn_args = (strategy, os.path.join(tmp, "init"), args.steps, args.tokens, out)
            mp.spawn(worker, args=spawn_args, nprocs=2, join=True)
            for rank in range(2):
                with open(f"{out}.{rank}") as handle:
                    row = json.load(handle)
                print(f"{strategy} | {rank} | {row['state_gib']:.2f} | {row['peak_gib']:.2f}")


if __name__ == "__main__":
    main()
