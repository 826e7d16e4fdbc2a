"""How torch's OpenMP threads should wait: spinning (the default) against OMP_WAIT_POLICY=PASSIVE,
on idle cores and with another process spinning on one core.

Each measurement is a fresh process (the policy is read when torch loads) timing training
steps of the demo's model as `instructkit demo` runs them (`demo-llama`, 16 packed rows of
128 tokens, fwd + bwd + fused AdamW); the policies alternate, so a drifting host affects
them alike. The reference is the default policy in the same condition; the ratio is
PASSIVE's seconds per step over the default's.

    python bench/thread_wait.py [--rounds 2] [--steps 6]
    python bench/thread_wait.py --probe   # only the idle default: the host's speed now
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

STEP_TIMER = """
import sys, time, torch
from instructkit.model.decoder import DecoderModel
from instructkit.model.decoder_config import DECODER_PRESETS
steps = int(sys.argv[1])
torch.manual_seed(0)
B, T = 16, 128
x = torch.randint(0, 512, (B, T)); y = torch.randint(0, 512, (B, T)); y[:, :90] = -100
segments = torch.arange(T).div(32, rounding_mode="floor").add(1).expand(B, T).contiguous()
positions = (torch.arange(T) % 32).expand(B, T).contiguous()
model = DecoderModel(DECODER_PRESETS["demo-llama"])
optimizer = torch.optim.AdamW(model.parameters(), fused=True)
def step():
    model.loss(x, y, position_ids=positions, segment_ids=segments).backward()
    optimizer.step(); optimizer.zero_grad()
for _ in range(3): step()
times = []
for _ in range(5):
    start = time.perf_counter()
    for _ in range(steps): step()
    times.append((time.perf_counter() - start) / steps)
print(sorted(times)[2])
"""
POLICIES = {"default (spin)": None, "PASSIVE": "PASSIVE"}


def seconds_per_step(policy: str | None, steps: int) -> float:
    """Median seconds per step of five blocks, in a fresh process under `policy`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run(
        [sys.executable, "-c", STEP_TIMER, str(steps)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout.strip())


def measure(rounds: int, steps: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in POLICIES}
    for _ in range(rounds):
        for name, policy in POLICIES.items():
            results[name].append(seconds_per_step(policy, steps))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the policies")
    parser.add_argument("--steps", type=int, default=6, help="steps per timed block (5 blocks)")
    parser.add_argument(
        "--probe", action="store_true", help="print one default-policy measurement and stop"
    )
    args = parser.parse_args()
    if args.probe:
        print(f"probe: {seconds_per_step(None, args.steps):.3f} s/step")
        return 0
    print(f"{os.cpu_count()} cores, torch threads: default; seconds per step (median)")
    for condition in ("idle", "one core taken by a spinning process"):
        spinner = None
        if condition != "idle":
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            results = measure(args.rounds, args.steps)
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
        medians = {name: statistics.median(times) for name, times in results.items()}
        ratio = medians["PASSIVE"] / medians["default (spin)"]
        print(f"\n{condition}:")
        for name, times in results.items():
            print(f"  {name:15s} {medians[name]:.3f} s/step  (runs {[round(t, 3) for t in times]})")
        print(f"  PASSIVE / default: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
