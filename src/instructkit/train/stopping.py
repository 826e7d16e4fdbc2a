"""Why a run stops early: a Ctrl-C (at the next step boundary, after a checkpoint) or a
loss that is no longer finite (before the update that would spoil the weights).

Also the test suite's way to slow a run down enough to kill or interrupt it mid-epoch:
`INSTRUCTKIT_TEST_STEP_DELAY=SECONDS` (read by `install_test_step_delay`).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch

from instructkit.errors import UserError
from instructkit.train.state import latest_checkpoint

TEST_STEP_DELAY = "INSTRUCTKIT_TEST_STEP_DELAY"


class DivergedError(UserError):
    """The loss became NaN or infinite; the run stopped before applying that update."""


def check_finite(loss: float, step: int, checkpoints: Path) -> None:
    """Raise `DivergedError` naming the last good checkpoint when `loss` is NaN or inf."""
    if not math.isfinite(loss):
        raise DivergedError(
            f"loss became {loss} at step {step}; stopped before "
            f"applying that update; the last good checkpoint is "
            f"{latest_checkpoint(checkpoints) or 'none (no checkpoint yet)'}; "
            "try a lower --lr or --grad-clip 1.0"
        )


class StopRequest:
    """Turns the first Ctrl-C into a request to stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self.requested = True
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts at once
            print("\nStopping after this step to save a checkpoint (Ctrl-C again to abort)")

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def install_test_step_delay(optimizer: torch.optim.Optimizer) -> None:
    """For tests only: sleep after every optimizer step when INSTRUCTKIT_TEST_STEP_DELAY
    is set, so a test can kill or interrupt a run between two steps."""
    delay = float(os.environ.get(TEST_STEP_DELAY, "0"))
    if delay:
        optimizer.register_step_post_hook(lambda *_: time.sleep(delay))
