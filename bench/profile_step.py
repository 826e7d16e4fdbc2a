"""Where one fine-tuning step's time goes: forward, backward, optimizer, and the top ops.

gpt2-small shape (50,257-row tied head), random weights, fp32, batch 8 x T tokens, the
loss of `GPTModel.loss` (head only on targets), fused AdamW, as `instructkit finetune` runs it.

    python bench/profile_step.py [--tokens 60] [--profile]
"""

from __future__ import annotations

import argparse
import time

import torch

from instructkit.model import GPTConfig, GPTModel

BATCH = 8


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=60, help="tokens per record")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    parser.add_argument(
        "--profile", action="store_true", help="also print torch.profiler's top ops"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GPTConfig.preset("gpt2-small")
    model = GPTModel(config).train()
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=True)
    inputs = torch.randint(0, config.vocab_size, (BATCH, args.tokens))
    targets = torch.randint(0, config.vocab_size, (BATCH, args.tokens))

    def step() -> tuple[float, float, float]:
        start = time.perf_counter()
        loss = model.loss(inputs, targets)
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return forward - start, backward - forward, time.perf_counter() - backward

    for _ in range(2):
        step()
    times = [step() for _ in range(args.steps)]
    forward, backward, optim = (sum(t[i] for t in times) / len(times) for i in range(3))
    tokens = BATCH * args.tokens
    total = forward + backward + optim
    print(
        f"{tokens} tokens/step: forward {forward:.3f} s, backward {backward:.3f} s, "
        f"optimizer {optim:.3f} s; {tokens / total:.1f} tokens/s; forward+backward at "
        f"{6 * parameters * tokens / (forward + backward) / 1e9:.1f} GFLOP/s"
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
