"""Values that the data pipeline writes and the model reads, so neither imports the other.

`IGNORE_INDEX` marks a target the loss skips: padding, and the prompt under
`mask_prompt`. The collator writes it, `GPTModel.loss` and the training loop read it;
it is PyTorch's `cross_entropy` default, as in the book.
"""

IGNORE_INDEX = -100
