"""Weights in and out: parity with transformers, the book's state dicts, clear errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from instructkit.errors import ModelError
from instructkit.model import GPTConfig, GPTModel, load_pretrained, read_metadata, save_pretrained

VOCAB = 97


def tiny_model(seed: int = 0, vocab_size: int = VOCAB, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    config = GPTConfig.preset("tiny", vocab_size=vocab_size, context_length=32, **overrides)
    model = GPTModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a mix-up shows
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_f"):
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def sample_ids(batch: int = 2, length: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(3))


def load_quietly(spec, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_pretrained(spec, **kwargs)


@pytest.fixture(scope="module")
def transformers():
    """Only the tests that compare with transformers need it (a test extra)."""
    return pytest.importorskip("transformers")


def hf_tiny(transformers, tie: bool = True):
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
        if not tie:
            model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight) * 0.1)
    return model.eval()


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("tie", [True, False])
def test_transformers_checkpoint_loads_with_equal_logits(transformers, tmp_path, tie):
    reference = hf_tiny(transformers, tie)
    reference.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no tokenizer files"):
        model, tokenizer = load_pretrained(tmp_path)
    assert tokenizer is None
    assert model.config.tie_embeddings is tie
    assert (model.config.emb_dim, model.config.n_heads, model.config.n_layers) == (32, 4, 2)
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(reference, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_saved_model_loads_in_transformers_with_equal_logits(transformers, tmp_path, tie):
    model = tiny_model(tie_embeddings=tie)
    if not tie:
        with torch.no_grad():
            model.lm_head.weight.add_(0.05)
    save_pretrained(model, None, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["tie_word_embeddings"] is tie
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", attn_implementation="eager"
    ).eval()
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(loaded, ids), model(ids), atol=1e-5, rtol=1e-5)


def test_model_without_qkv_bias_saves_as_gpt2(tmp_path):
    model = tiny_model(qkv_bias=False)
    save_pretrained(model, None, tmp_path)
    loaded, _ = load_quietly(tmp_path)
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))


def test_round_trip_with_tokenizer_and_metadata_into_a_run_dir(tmp_path):
    from instructkit.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["hello world, instructions follow."] * 20, vocab_size=280)
    model = tiny_model(vocab_size=300)
    run = tmp_path / "runs" / "one"
    save_pretrained(model, tokenizer, run / "model", metadata={"style": "alpaca"})
    assert read_metadata(run) == {"style": "alpaca"}
    loaded, loaded_tokenizer = load_pretrained(run)  # a run dir means RUN/model
    assert loaded_tokenizer.encode("hello world") == tokenizer.encode("hello world")
    assert loaded_tokenizer.eos_id == tokenizer.eos_id
    for (name, expected), actual in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(actual, expected, msg=name)
    assert not loaded.training
    assert read_metadata(tmp_path) == {}


def test_save_replaces_an_existing_model_and_failures_leave_it_intact(tmp_path):
    target = tmp_path / "model"
    save_pretrained(tiny_model(seed=1), None, target, metadata={"n": 1})
    save_pretrained(tiny_model(seed=2), None, target, metadata={"n": 2})
    assert read_metadata(target) == {"n": 2}

    class BrokenTokenizer:
        eos_id = 0

        def save(self, directory):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_pretrained(tiny_model(seed=3), BrokenTokenizer(), target, metadata={"n": 3})
    assert read_metadata(target) == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


class BookLayerNorm(nn.Module):
    def __init__(self, emb_dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class BookGELU(nn.Module):
    def forward(self, x):
        c = torch.sqrt(torch.tensor(2.0 / torch.pi))
        return 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * torch.pow(x, 3))))


class BookAttention(nn.Module):
    def __init__(self, d, context_length, heads, qkv_bias):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.W_query = nn.Linear(d, d, bias=qkv_bias)
        self.W_key = nn.Linear(d, d, bias=qkv_bias)
        self.W_value = nn.Linear(d, d, bias=qkv_bias)
        self.out_proj = nn.Linear(d, d)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), 1))

    def forward(self, x):
        b, n, d = x.shape

        def split(t):
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.W_query(x)), split(self.W_key(x)), split(self.W_value(x))
        scores = q @ k.transpose(2, 3)
        scores.masked_fill_(self.mask.bool()[:n, :n], -torch.inf)
        weights = torch.softmax(scores / self.head_dim**0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class BookBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["emb_dim"]
        self.att = BookAttention(d, cfg["context_length"], cfg["n_heads"], cfg["qkv_bias"])
        self.ff = nn.Module()
        self.ff.layers = nn.Sequential(nn.Linear(d, 4 * d), BookGELU(), nn.Linear(4 * d, d))
        self.norm1, self.norm2 = BookLayerNorm(d), BookLayerNorm(d)

    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.ff.layers(self.norm2(x))


class BookGPT(nn.Module):
    """The book's GPTModel (chapter 4), with its parameter names."""

    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.trf_blocks = nn.Sequential(*[BookBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = BookLayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, idx):
        positions = torch.arange(idx.shape[1])
        x = self.tok_emb(idx) + self.pos_emb(positions)
        return self.out_head(self.final_norm(self.trf_blocks(x)))


def book_model(emb_dim=64, n_layers=2, n_heads=2, qkv_bias=True, seed=0) -> BookGPT:
    torch.manual_seed(seed)
    cfg = {
        "vocab_size": VOCAB,
        "context_length": 32,
        "emb_dim": emb_dim,
        "n_heads": n_heads,
        "n_layers": n_layers,
        "qkv_bias": qkv_bias,
    }
    model = BookGPT(cfg).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_book_state_dict_loads_with_equal_logits(tmp_path, qkv_bias):
    book = book_model(qkv_bias=qkv_bias)
    torch.save(book.state_dict(), tmp_path / "model.pth")
    model, tokenizer = load_pretrained(tmp_path / "model.pth")
    assert tokenizer is None
    assert model.config.tie_embeddings is False  # the book's out_head is its own matrix
    assert model.config.qkv_bias is qkv_bias and model.config.n_heads == 2  # from preset tiny
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), book(ids), atol=1e-5, rtol=1e-5)


def test_book_checkpoint_with_tied_head_and_optimizer_state(tmp_path):
    book = book_model(emb_dim=48, n_layers=1, n_heads=4)
    with torch.no_grad():
        book.out_head.weight.copy_(book.tok_emb.weight)  # as after loading GPT-2 weights
    state = {"model_state_dict": book.state_dict(), "optimizer_state_dict": {}}
    torch.save(state, tmp_path / "ckpt.pth")
    with pytest.raises(ModelError, match="cannot tell the number of attention heads.*pass n_heads"):
        load_pretrained(tmp_path / "ckpt.pth")
    model, _ = load_pretrained(tmp_path / "ckpt.pth", n_heads=4)
    assert model.config.tie_embeddings and model.lm_head.weight is model.wte.weight
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), book(ids), atol=1e-5, rtol=1e-5)


def test_book_state_dict_problems_name_the_tensor(tmp_path):
    state = book_model().state_dict()
    del state["trf_blocks.1.att.W_key.weight"]
    state["trf_blocks.0.norm2.scale"] = torch.ones(5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelError) as error:
        load_pretrained(tmp_path / "bad.pth")
    assert "missing tensor 'trf_blocks.1.att.W_key.weight'" in str(error.value)
    assert "bad.pth" in str(error.value)
    state = book_model().state_dict()
    state["trf_blocks.0.norm2.scale"] = torch.ones(5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        ModelError, match=r"'trf_blocks.0.norm2.scale' has shape \[5\], expected \[64\]"
    ):
        load_pretrained(tmp_path / "bad.pth")
    torch.save({"weight": torch.ones(3)}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match="missing tensor 'tok_emb.weight'"):
        load_pretrained(tmp_path / "other.pth")


def test_mismatched_hf_checkpoint_names_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    save_pretrained(tiny_model(), None, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    tensors["transformer.h.0.attn.c_attn.weight"] = torch.zeros(64, 100)
    tensors["transformer.h.2.ln_1.weight"] = torch.zeros(64)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ModelError) as error:
        load_quietly(tmp_path)
    problems = error.value.problems
    assert any("missing tensor 'transformer.h.1.mlp.c_fc.weight'" in p for p in problems)
    assert any(
        "'transformer.h.0.attn.c_attn.weight' has shape [64, 100], expected [64, 192]" in p
        for p in problems
    )
    assert any("unexpected tensor 'transformer.h.2.ln_1.weight'" in p for p in problems)
    assert all(str(tmp_path / "model.safetensors") in p for p in problems)


def test_corrupt_or_incomplete_directories_are_clear_errors(tmp_path):
    save_pretrained(tiny_model(), None, tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match="model.safetensors: cannot read"):
        load_quietly(tmp_path)
    weights.unlink()
    with pytest.raises(ModelError, match="no model.safetensors or pytorch_model.bin"):
        load_quietly(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(ModelError, match="model_type is 'mistral'; supported: gpt2, llama"):
        load_quietly(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelError, match="no config.json; expected a directory holding"):
        load_quietly(tmp_path)


def test_pytorch_model_bin_directory_loads(transformers, tmp_path):
    reference = hf_tiny(transformers)
    reference.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    model, _ = load_quietly(tmp_path)
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(reference, ids), atol=1e-5, rtol=1e-5)


def test_random_spec_is_seeded_and_takes_the_tokenizer_vocab():
    from instructkit.tokenizer import train_tokenizer

    first, none = load_pretrained("random:tiny", seed=5)
    again, _ = load_pretrained("random:tiny", seed=5)
    other, _ = load_pretrained("random:tiny", seed=6)
    assert none is None and first.config.vocab_size == 50257
    torch.testing.assert_close(first.wte.weight, again.wte.weight)
    assert not torch.equal(first.wte.weight, other.wte.weight)
    tokenizer = train_tokenizer(["some text to learn from"] * 5, vocab_size=300)
    model, returned = load_pretrained("random:tiny", tokenizer=tokenizer)
    assert returned is tokenizer and model.config.vocab_size == tokenizer.vocab_size
    with pytest.raises(ModelError, match="unknown model preset 'huge'"):
        load_pretrained("random:huge")


def test_hub_ids_download_only_needed_files_and_fail_clearly_offline(tmp_path, monkeypatch):
    import huggingface_hub

    save_pretrained(tiny_model(), None, tmp_path / "snapshot")
    calls = []

    def fake_download(repo_id, allow_patterns):
        calls.append(repo_id)
        assert "model.safetensors" in allow_patterns and "*.bin" not in allow_patterns
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    load_quietly("gpt2-medium")
    load_quietly("openai-community/gpt2-large")
    assert calls == ["openai-community/gpt2-medium", "openai-community/gpt2-large"]

    def offline(repo_id, allow_patterns):
        raise huggingface_hub.errors.LocalEntryNotFoundError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelError) as error:
        load_pretrained("gpt2")
    message = str(error.value)
    assert (
        "'openai-community/gpt2' is no local file or directory, and cannot be downloaded" in message
    )
    assert "config.json" in message and "model.safetensors" in message and "vocab.json" in message


def test_unknown_spec_and_tokenizer_vocab_mismatch(tmp_path):
    from instructkit.tokenizer import train_tokenizer

    with pytest.raises(ModelError, match="is not a file, a directory, random:PRESET"):
        load_pretrained("not a model")
    save_pretrained(tiny_model(), None, tmp_path)
    big = train_tokenizer(["abc def ghi"] * 5, vocab_size=300)
    with pytest.raises(
        ModelError, match=r"tokenizer has \d+ tokens but model .* only 97 embeddings"
    ):
        load_pretrained(tmp_path, tokenizer=big)
