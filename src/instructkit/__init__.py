"""instructkit: instruction fine-tuning of GPT-style language models.

The pipeline runs records -> prompts -> token ids -> batches -> GPT -> losses ->
checkpoints -> responses -> scores; each stage is a subpackage (see DESIGN.md).
"""

__version__ = "0.1.0"
