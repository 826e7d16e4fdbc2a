"""Values that the data pipeline writes and the model reads, so neither imports the other.

`IGNORE_INDEX` marks a target the loss skips: padding, and the prompt under
`mask_prompt`. The collator writes it, `GPTModel.loss` and the training loop read it;
it is PyTorch's `cross_entropy` default, as in the book. `MAX_BODY_BYTES` and
`DEFAULT_MAX_BATCH` are shared by the server and the `serve` command, whose help must not
import the server (nor torch).
"""

IGNORE_INDEX = -100

# The largest request body `serve` reads by default (--max-body-bytes): about 250k tokens
# of text, more than any served model's context; a bigger body is answered 413 unread.
MAX_BODY_BYTES = 1_000_000

# The most requests `serve` decodes together by default (--max-batch); later ones wait.
# 16 one-token rows cost a CPU little more than one (the weights are read once per step).
DEFAULT_MAX_BATCH = 16
