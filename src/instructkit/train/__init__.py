"""Fine-tuning: the training loop, resumable checkpoints, the LR schedule and DDP glue.

`finetune(config)` is the one entry point; the CLI's `instructkit finetune` and the
demo both call it, so they run the same code path.
"""

from instructkit.config import FinetuneConfig
from instructkit.train.loop import DivergedError, RunResult, finetune

__all__ = ["DivergedError", "FinetuneConfig", "RunResult", "finetune"]
