"""Tests for chat templates: our Jinja rendering equals transformers' apply_chat_template,
chat-model tokenizer files load (special tokens, end ids) and save back for transformers."""

from __future__ import annotations

import json

import pytest
from chat_fixtures import TEMPLATES, reference_tokenizer, write_chat_tokenizer

from instructkit.data import get_style
from instructkit.data.chat_template import (
    ChatTemplateStyle,
    default_style_for,
    render_chat_template,
    resolve_style,
)
from instructkit.errors import UserError
from instructkit.tokenizer import load_tokenizer

CONVERSATIONS = {
    "one turn": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    "system and two turns": [
        {"role": "system", "content": "  Answer briefly.  "},
        {"role": "user", "content": "Rewrite: the cat sat."},
        {"role": "assistant", "content": "The cat was sitting.\n"},
        {"role": "user", "content": "Again, in French: café 日本?"},
        {"role": "assistant", "content": "Le chat était assis."},
    ],
}


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def chat_dir(request, tmp_path_factory):
    return write_chat_tokenizer(tmp_path_factory.mktemp(request.param), request.param)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_rendering_equals_transformers(chat_dir, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    if add_generation_prompt:
        messages = messages[:-1]
    style = ChatTemplateStyle.from_tokenizer(load_tokenizer(chat_dir))
    expected = reference_tokenizer(chat_dir).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert style.render(messages, add_generation_prompt) == expected


def test_default_system_prompts_are_inserted(tmp_path):
    user = [{"role": "user", "content": "Hi"}]
    qwen = resolve_style(None, load_tokenizer(write_chat_tokenizer(tmp_path / "q", "qwen2.5")))
    assert qwen.render(user, True) == (
        "<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    llama = resolve_style(None, load_tokenizer(write_chat_tokenizer(tmp_path / "l", "llama3")))
    assert llama.render(user).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: "
    )


def test_environment_features_match_transformers(tmp_path):
    # tojson keeps non-ASCII text and takes options; loop controls; namespace; generation tags.
    template = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'system' %}"
        "{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}{% generation %}{{ m | tojson }}"
        "{% endgeneration %}\n{{ m | tojson(indent=2, sort_keys=true) }}{% if ns.n > 2 %}"
        "{% break %}{% endif %}{% endfor %}{{ ns.n }}<{{ eos_token }}|{{ pad_token }}>"
    )
    directory = write_chat_tokenizer(tmp_path, "qwen2.5", template=template)
    messages = CONVERSATIONS["system and two turns"]
    ours = ChatTemplateStyle.from_tokenizer(load_tokenizer(directory)).render(messages)
    assert ours == reference_tokenizer(directory).apply_chat_template(messages, tokenize=False)
    assert '"content": "Again, in French: café 日本?"' in ours and "Le chat" not in ours
    assert ours.endswith("3<<|im_end|>|<|endoftext|>>")


def test_template_errors_are_user_errors():
    with pytest.raises(UserError, match="line 1"):
        render_chat_template("{% for m in messages %}", [])
    with pytest.raises(UserError, match="unknown role tool"):
        render_chat_template(TEMPLATES["qwen2.5"], [{"role": "tool", "content": "x"}])


def test_chat_tokenizer_reads_special_tokens_and_end_ids(tmp_path):
    tok = load_tokenizer(write_chat_tokenizer(tmp_path, "llama3"))
    backend = tok.backend
    for token in ("<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>"):
        assert tok.encode(token) == [backend.token_to_id(token)]
    assert tok.encode("<|eot_id|>Paris") == [
        backend.token_to_id("<|eot_id|>"),
        *tok.encode("Paris"),
    ]
    assert tok.eos_id == backend.token_to_id("<|eot_id|>")
    assert tok.bos_id == backend.token_to_id("<|begin_of_text|>")
    assert tok.end_ids == (tok.eos_id, backend.token_to_id("<|end_of_text|>"))
    assert tok.special_tokens == {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    assert tok.chat_template == TEMPLATES["llama3"]


def test_saved_chat_tokenizer_loads_in_transformers_with_the_same_template(chat_dir, tmp_path):
    ours = load_tokenizer(chat_dir)
    ours.save(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == ours.chat_template
    theirs = reference_tokenizer(tmp_path)
    messages = CONVERSATIONS["system and two turns"]
    text = theirs.apply_chat_template(messages, tokenize=False)
    assert text == ChatTemplateStyle.from_tokenizer(ours).render(messages)
    assert theirs.encode(text, add_special_tokens=False) == ours.encode(text)
    again = load_tokenizer(tmp_path)
    assert (again.chat_template, again.eos_id, again.bos_id) == (
        ours.chat_template,
        ours.eos_id,
        ours.bos_id,
    )


def test_template_in_its_own_file_is_read(tmp_path):
    directory = write_chat_tokenizer(tmp_path, "qwen3", template="")
    (directory / "chat_template.jinja").write_text(TEMPLATES["qwen3"])
    assert load_tokenizer(directory).chat_template == TEMPLATES["qwen3"]


def test_gpt2_tokenizers_keep_alpaca_and_have_no_template(small_tokenizer, small_tokenizer_dir):
    for tok in (small_tokenizer, load_tokenizer(small_tokenizer_dir)):
        assert tok.chat_template is None and tok.end_ids == (tok.eos_id,)
        assert default_style_for(tok) == "alpaca"
        assert resolve_style(None, tok).name == "alpaca"
    config = json.loads((small_tokenizer_dir / "tokenizer_config.json").read_text())
    assert "chat_template" not in config and config["tokenizer_class"] == "GPT2Tokenizer"


def test_style_resolution(tmp_path, small_tokenizer):
    chat = load_tokenizer(write_chat_tokenizer(tmp_path, "qwen2.5"))
    assert default_style_for(chat) == "chat_template"
    assert isinstance(resolve_style("chat_template", chat), ChatTemplateStyle)
    assert resolve_style("alpaca", chat).name == "alpaca"
    with pytest.raises(UserError, match="needs the model's tokenizer"):
        get_style("chat_template")
    with pytest.raises(UserError, match="no chat_template"):
        resolve_style("chat_template", small_tokenizer)


def test_instruction_records_become_one_user_and_one_assistant_turn(chat_dir):
    style = resolve_style(None, load_tokenizer(chat_dir))
    theirs = reference_tokenizer(chat_dir)
    record = {"instruction": "Rewrite the sentence.", "input": "The cat sat.", "output": "It sat."}
    user = {"role": "user", "content": "Rewrite the sentence.\n\nThe cat sat."}
    prompt = style.prompt(record)
    assert prompt == theirs.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    full = theirs.apply_chat_template(
        [user, {"role": "assistant", "content": "It sat."}], tokenize=False
    )
    assert prompt + style.response(record) == full
    generated = prompt + "It sat." + style.stop_strings[0] + "<|im_start|>user\nmore"
    assert style.extract_response(generated, prompt) == "It sat."
