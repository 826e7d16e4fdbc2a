"""Fine-tuning: the recipe (loop.py), the step pieces it is built from (steps, state,
metrics, stopping, rundir), the LR schedule and DDP glue.

`finetune(config)` is the one entry point; the CLI's `instructkit finetune` and the
demo both call it, so they run the same code path.
"""

from instructkit.config import FinetuneConfig
from instructkit.train.loop import RunResult, finetune
from instructkit.train.stopping import DivergedError

__all__ = ["DivergedError", "FinetuneConfig", "RunResult", "finetune"]
