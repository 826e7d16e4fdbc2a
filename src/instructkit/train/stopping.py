"""Why a run stops early: a Ctrl-C or SIGTERM (at the next step boundary, after a
checkpoint) or a loss that is no longer finite (before the update that would spoil the weights).

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

from instructkit.console import say
from instructkit.errors import Terminated, UserError
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
    """Turns the first Ctrl-C or SIGTERM into a request to stop at the next step boundary.

    The same signal again interrupts at once (the previous handler is back); the save
    that a stop ends with cleans up after itself if that happens (`state.save_checkpoint`).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def interrupt(self) -> KeyboardInterrupt:
        """The exception the run stops with: exit 143 for SIGTERM, 130 for Ctrl-C."""
        return Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.getsignal(signum) for signum in self.SIGNALS}

        def handler(signum, frame):
            if self.signum is None:
                self.signum = signum
            signal.signal(signum, previous[signum])  # the same signal again interrupts at once
            again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
            # The reader of a `| tee` may have died of the same Ctrl-C: `say` survives that.
            say(f"\nStopping after this step to save a checkpoint ({again} again to abort)")

        for signum in self.SIGNALS:
            signal.signal(signum, handler)
        try:
            yield self
        finally:
            for signum, handler_before in previous.items():
                signal.signal(signum, handler_before)


def install_test_step_delay(optimizer: torch.optim.Optimizer) -> None:
    """For tests only: sleep after every optimizer step when INSTRUCTKIT_TEST_STEP_DELAY
    is set, so a test can kill or interrupt a run between two steps."""
    delay = float(os.environ.get(TEST_STEP_DELAY, "0"))
    if delay:
        optimizer.register_step_post_hook(lambda *_: time.sleep(delay))
