"""Llama / Qwen2 / Qwen3: parity with transformers on tiny random checkpoints it writes.

Every case is a checkpoint transformers saved itself (grouped-query attention, llama3 rope
scaling, q/k norm, biases, head_dim != hidden/heads, tied and untied heads, sharded files,
bf16 on disk); the reference for logits, saving and greedy generation is transformers.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from instructkit.data import Example
from instructkit.data.packing_check import check_packing
from instructkit.errors import ModelError
from instructkit.generate import generate, generate_batch
from instructkit.model import DecoderConfig, DecoderModel, load_pretrained, save_pretrained
from instructkit.model.lora import apply_lora, merge_lora

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 320
COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "max_position_embeddings": 128,
}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
CASES = {
    # name: (config class, fields, save_pretrained keywords)
    "llama-gqa-llama3-untied-sharded": (
        "LlamaConfig",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500000.0,
         "rope_scaling": LLAMA3, "tie_word_embeddings": False, "rms_norm_eps": 1e-5},
        {"max_shard_size": "60KB"},
    ),
    "llama-tied-bias": (
        "LlamaConfig",
        {"num_attention_heads": 4, "num_key_value_heads": 4, "attention_bias": True,
         "mlp_bias": True, "tie_word_embeddings": True},
        {},
    ),
    "qwen2-bias-tied": (
        "Qwen2Config",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True},
        {},
    ),
    "qwen3-headdim-untied-bf16": (
        "Qwen3Config",
        {"num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
         "tie_word_embeddings": False},
        {"bf16": True},
    ),
    "qwen3-tied": (
        "Qwen3Config",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24,
         "tie_word_embeddings": True},
        {},
    ),
}  # fmt: skip


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(checkpoint dir written by transformers, the fp32 transformers reference model)."""
    class_name, fields, save = CASES[request.param]
    config = getattr(transformers, class_name)(**COMMON, **fields, eos_token_id=VOCAB - 1)
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # weights far from init, so that every mix-up shows in the logits
        for name, parameter in reference.named_parameters():
            noise = torch.randn_like(parameter) * (0.3 if "norm" in name else 0.15)
            parameter.copy_((1.0 if "norm" in name else 0.0) + noise)
    directory = tmp_path_factory.mktemp(request.param)
    if save.pop("bf16", False):
        quiet(reference.to(torch.bfloat16).save_pretrained, directory, **save)
        reference = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32
        ).eval()  # the reference sees the same rounded weights we do
    else:
        quiet(reference.save_pretrained, directory, **save)
    return directory, reference


def ids(batch: int = 2, length: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids)
    return out.logits if hasattr(out, "logits") else out


def test_logits_match_transformers(case):
    directory, reference = case
    model, tokenizer = quiet(load_pretrained, directory)
    assert isinstance(model, DecoderModel) and tokenizer is None
    assert next(model.parameters()).dtype == torch.float32  # fp32 even from bf16 files
    assert model.config.tie_embeddings == reference.config.tie_word_embeddings
    assert (model.lm_head.weight is model.embed_tokens.weight) == model.config.tie_embeddings
    sample = ids(length=60)  # beyond the llama3 case's original 32 positions
    torch.testing.assert_close(
        logits_of(model, sample), logits_of(reference, sample), atol=1e-4, rtol=0
    )


def test_save_loads_in_transformers_with_the_same_class(case, tmp_path):
    directory, reference = case
    model, _ = quiet(load_pretrained, directory)
    save_pretrained(model, None, tmp_path / "saved")
    raw = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert raw["architectures"] == reference.config.architectures
    reloaded = quiet(transformers.AutoModelForCausalLM.from_pretrained, tmp_path / "saved").eval()
    assert type(reloaded) is type(reference)
    sample = ids()
    torch.testing.assert_close(
        logits_of(reloaded, sample), logits_of(reference, sample), atol=1e-5, rtol=0
    )
    again, _ = quiet(load_pretrained, tmp_path / "saved")
    assert again.config == model.config
    assert again.eos_ids == [VOCAB - 1]


def test_greedy_generation_matches_transformers(case):
    directory, reference = case
    model, _ = quiet(load_pretrained, directory)
    prompt = ids(batch=1, length=9, seed=4)
    ours = generate(model, prompt, max_new_tokens=30, context_size=128, temperature=0.0)
    theirs = reference.generate(
        prompt, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert ours.tolist() == theirs.tolist()
    assert len(set(ours[0, 9:].tolist())) > 3  # a real sequence, not one repeated token


def test_batched_left_padded_generation_matches_transformers(case):
    directory, reference = case
    model, _ = quiet(load_pretrained, directory)
    prompts = [ids(1, n, seed=n)[0].tolist() for n in (3, 11, 7)]
    ours = generate_batch(model, prompts, max_new_tokens=12, temperature=0.0, batch_size=3)
    for prompt, answer in zip(prompts, ours):
        theirs = reference.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
            pad_token_id=0,
        )  # fmt: skip
        assert answer == theirs[0, len(prompt) :].tolist()


def test_packed_equals_padded(case):
    directory, _ = case
    model, _ = quiet(load_pretrained, directory)
    generator = torch.Generator().manual_seed(2)
    examples = [
        Example(torch.randint(0, VOCAB - 1, (n,), generator=generator).tolist(), n // 2)
        for n in (9, 14, 5, 21, 12, 7)
    ]
    check = check_packing(model, examples, pad_token_id=VOCAB - 1, max_length=48)
    assert check.packed_rows < check.examples
    assert check.passed, check


def test_generation_stops_at_any_end_id(tmp_path, case):
    directory, _ = case
    model, _ = quiet(load_pretrained, directory)
    prompt = ids(batch=1, length=9, seed=4)
    free = generate(model, prompt, max_new_tokens=20)[0, 9:].tolist()
    for ends in ([free[2]], [VOCAB + 5, free[2]], (free[5], free[2]), [free[7]]):
        stopped = generate(model, prompt, max_new_tokens=20, eos_id=ends)[0, 9:].tolist()
        assert stopped == free[: min(free.index(t) for t in ends if t in free)]


def test_generation_config_end_ids_are_read_and_written(tmp_path):
    model = DecoderModel(DecoderConfig.preset("tiny-llama"))
    model.eos_ids = [128009, 128001]
    save_pretrained(model, None, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [128009, 128001]
    loaded, _ = quiet(load_pretrained, tmp_path / "m")
    assert loaded.eos_ids == [128009, 128001]
    config = transformers.GenerationConfig.from_pretrained(tmp_path / "m")
    assert config.eos_token_id == [128009, 128001]


def test_tokenizer_in_the_directory_and_a_padded_vocabulary(case, tmp_path, small_tokenizer):
    directory, _ = case
    model, _ = quiet(load_pretrained, directory)
    small_tokenizer.save(tmp_path)  # 320 model rows, a 400-token tokenizer: refused
    save_pretrained(model, small_tokenizer, tmp_path / "too-small")
    with pytest.raises(ModelError, match="400 tokens but model"):
        load_pretrained(tmp_path / "too-small")
    bigger = DecoderModel(DecoderConfig.preset("tiny-qwen3"))  # 512 rows: padded, accepted
    save_pretrained(bigger, small_tokenizer, tmp_path / "padded")
    loaded, tokenizer = load_pretrained(tmp_path / "padded")
    assert tokenizer.vocab_size == 400 and loaded.config.vocab_size == 512
    assert loaded.eos_ids == [small_tokenizer.eos_id]


def test_bf16_stays_bf16_when_asked(tmp_path):
    model = DecoderModel(DecoderConfig.preset("tiny-qwen2")).to(torch.bfloat16)
    save_pretrained(model, None, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    as_fp32, _ = quiet(load_pretrained, tmp_path / "m")
    as_bf16, _ = quiet(load_pretrained, tmp_path / "m", dtype=torch.bfloat16)
    assert next(as_fp32.parameters()).dtype == torch.float32
    assert next(as_bf16.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(as_fp32.embed_tokens.weight.to(torch.bfloat16),
                               as_bf16.embed_tokens.weight)  # fmt: skip


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def test_random_presets_save_as_their_family(preset, tmp_path, small_tokenizer):
    model, tokenizer = load_pretrained(f"random:{preset}", tokenizer=small_tokenizer, seed=3)
    assert model.config.vocab_size == small_tokenizer.vocab_size
    save_pretrained(model, tokenizer, tmp_path / "m")
    reloaded = quiet(transformers.AutoModelForCausalLM.from_pretrained, tmp_path / "m").eval()
    assert type(reloaded).__name__.lower().startswith(model.config.family)
    sample = ids()
    torch.testing.assert_close(
        logits_of(reloaded, sample), logits_of(model, sample), atol=1e-5, rtol=0
    )


def hub_config(**fields) -> dict:
    base = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
    }
    return {**base, **fields}


def write_config(directory, raw: dict) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(raw))


OLD_LLAMA3 = {"type": "llama3", **{k: v for k, v in LLAMA3.items() if k != "rope_type"}}


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_theta": 5e5, "rope_scaling": OLD_LLAMA3},  # transformers < 4.45
        {"rope_theta": 5e5, "rope_scaling": LLAMA3},  # the hub's Llama 3.x config.json
        {"rope_parameters": {**LLAMA3, "rope_theta": 5e5}},  # transformers 5
    ],
)
def test_every_spelling_of_llama3_rope_reads_the_same(rope, tmp_path):
    from instructkit.model.decoder_checkpoints import config_from_hf

    config = config_from_hf(hub_config(**rope), tmp_path / "config.json")
    assert config.rope_theta == 5e5
    assert config.rope_scaling.factor == 8.0
    assert config.rope_scaling.original_context_length == 32


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "model_type"),
    ],
)
def test_unsupported_variants_are_refused_by_name(fields, message, tmp_path):
    write_config(tmp_path, hub_config(**fields))
    with pytest.raises(ModelError, match=message):
        load_pretrained(tmp_path)


def test_missing_and_misshapen_tensors_are_named(case, tmp_path):
    from safetensors.torch import load_file, save_file

    directory, _ = case
    model, _ = quiet(load_pretrained, directory)
    save_pretrained(model, None, tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.norm.weight"] = torch.ones(3)
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(ModelError) as error:
        load_pretrained(tmp_path / "m")
    text = str(error.value)
    assert "missing tensor 'model.layers.1.mlp.up_proj.weight'" in text
    assert "'model.norm.weight' has shape [3]" in text


def test_lora_trains_only_adapters_on_every_projection_and_merges_exactly(case):
    directory, _ = case
    model, _ = quiet(load_pretrained, directory)
    sample = ids()
    before = logits_of(model, sample)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()}
    wrapped = apply_lora(model, rank=4, alpha=8.0)
    projections = {name.rsplit(".", 1)[-1] for name in wrapped}
    assert projections == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj"}  # fmt: skip
    assert len(wrapped) == 7 * model.config.n_layers
    torch.testing.assert_close(logits_of(model, sample), before)  # B starts at zero
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(2):
        model.loss(sample[:, :-1], sample[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    for name, parameter in model.named_parameters():
        if ".lora." not in name:
            assert torch.equal(parameter, frozen[name.replace(".linear.", ".")]), name
    unmerged = logits_of(model, sample)
    assert not torch.allclose(unmerged, before)
    merge_lora(model)
    torch.testing.assert_close(logits_of(model, sample), unmerged, atol=1e-4, rtol=1e-4)
    assert not any(".lora." in name for name, _ in model.named_parameters())


def test_kv_cache_holds_only_key_value_heads():
    model = DecoderModel(DecoderConfig.preset("tiny-qwen3"))
    cache = model.new_kv_cache(batch_size=3, max_length=10)
    assert cache.keys.shape == (2, 3, 2, 10, 32)  # (L, B, n_kv_heads, S, head_dim)


def test_llama3_scaling_changes_only_long_wavelengths():
    from instructkit.model.decoder import rope_frequencies

    scaled = DecoderConfig.preset("tiny-llama")
    plain = DecoderConfig.preset("tiny-llama", rope_scaling=None)
    ratio = rope_frequencies(plain) / rope_frequencies(scaled)
    assert ratio[0] == 1.0 and ratio[-1] == pytest.approx(8.0)
