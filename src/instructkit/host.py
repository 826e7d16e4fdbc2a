"""How busy the machine's cores are, read before torch loads: it decides how torch's threads wait.

PyTorch's OpenMP threads spin between parallel regions. On idle cores that is the fastest
way to wait (the demo's training step ~18% faster than with passive waiting); when another
process uses one of the cores, a spinning thread takes the time slices that the thread it
waits for needs, and training is 1.9x (the demo's model) to 15x (a tiny one) slower than
with passive waiting. Measured in BENCHMARKS.md ("Demo, session 7"; `bench/thread_wait.py`).
"""

from __future__ import annotations

import os
import time

BUSY_CORES = 0.5
"""Cores in use by other work above which torch's threads should wait passively."""


def cores_in_use(interval_s: float = 0.25) -> float | None:
    """Cores busy (all processes) over the next `interval_s` seconds, from /proc/stat;
    None where that cannot be read (not Linux)."""
    try:
        before = cpu_times()
        time.sleep(interval_s)
        after = cpu_times()
    except (OSError, ValueError):
        return None
    return busy_cores(before, after)


def cpu_times() -> tuple[list[int], int]:
    """The summed jiffies per state of /proc/stat's "cpu" line, and how many cores it sums."""
    with open("/proc/stat") as stat:
        lines = stat.read().splitlines()
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return [int(value) for value in lines[0].split()[1:]], max(cores, 1)


def busy_cores(before: tuple[list[int], int], after: tuple[list[int], int]) -> float:
    """Cores busy between two `cpu_times` samples: all time but idle and iowait."""
    (start, cores), (end, _) = before, after
    delta = [b - a for a, b in zip(start, end, strict=False)]
    total = sum(delta[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    idle = delta[3] + delta[4]
    return cores * (total - idle) / total if total > 0 else 0.0


def wait_passively_if_busy() -> None:
    """Set OMP_WAIT_POLICY=PASSIVE when other work holds a core or the load cannot be read;
    leave OpenMP's spinning default on idle cores. A user's own setting wins. Only takes
    effect if torch is not imported yet."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    busy = cores_in_use()
    if busy is None or busy >= BUSY_CORES:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
