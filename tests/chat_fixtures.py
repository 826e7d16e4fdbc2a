"""Offline chat-model tokenizers for tests: a small byte-level BPE plus the special tokens,
`tokenizer_config.json` (with a chat template) and `generation_config.json` that Llama 3
and Qwen checkpoints ship. The templates are written here in the style of those models:
Llama 3's header/eot turns with a dated default system block, Qwen 2.5's ChatML with a
default system prompt, and Qwen3's ChatML that gives only answers after the last user
turn a think block. Each wraps its answers in `{% generation %}` (as TRL's training
templates do), so transformers computes the assistant mask without our prefix rendering.
"""

from __future__ import annotations

import json
from pathlib import Path

LLAMA3 = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
    {%- if message['role'] == 'assistant' %}
        {%- generation %}
        {{- message['content'] | trim + '<|eot_id|>' }}
        {%- endgeneration %}
    {%- else %}
        {{- message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

QWEN25 = r"""{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
        {%- continue %}
    {%- endif %}
    {%- if message.role not in ['user', 'assistant', 'system'] %}
        {{- raise_exception('unknown role ' + message.role) }}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\n' }}
    {%- if message.role == 'assistant' %}
        {%- generation %}
        {{- message.content + '<|im_end|>' }}
        {%- endgeneration %}
    {%- else %}
        {{- message.content + '<|im_end|>' }}
    {%- endif %}
    {{- '\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN3 = r"""{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(last_user=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- if message.role == 'user' %}
        {%- set ns.last_user = (messages|length - 1) - loop.index0 %}
        {%- break %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' }}
        {%- generation %}
        {%- if loop.index0 > ns.last_user and loop.last %}
            {{- '<think>\n\n</think>\n\n' + message.content }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""

TEMPLATES = {"llama3": LLAMA3, "qwen2.5": QWEN25, "qwen3": QWEN3}

LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"]  # fmt: skip
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TEXTS = [
    "You are a helpful assistant. What is the capital of France? Paris is the capital.",
    "Cutting Knowledge Date: December 2023. Today Date: 26 Jul 2024.",
    "Rewrite the sentence: the cat sat on the mat. Thank you! Here it is, café 日本.",
]


def write_chat_tokenizer(directory: Path, family: str, template: str | None = None) -> Path:
    """A tokenizer directory like `family`'s (llama3, qwen2.5, qwen3), trained on TEXTS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    llama = family == "llama3"
    specials = LLAMA_SPECIALS if llama else QWEN_SPECIALS
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TEXTS * 5, trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / "tokenizer.json"))
    if llama:
        config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
        end_ids = [backend.token_to_id("<|end_of_text|>"), backend.token_to_id("<|eot_id|>")]
    else:
        config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        end_ids = [backend.token_to_id("<|im_end|>"), backend.token_to_id("<|endoftext|>")]
    config |= {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 131072,
        "chat_template": template if template is not None else TEMPLATES[family],
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": end_ids}))
    return directory


def reference_tokenizer(directory: Path):
    """transformers' own tokenizer for the directory: the reference we compare against."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))
