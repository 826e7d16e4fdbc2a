"""LoRA: starts as a no-op, merges exactly, trains only the adapters, saves adapters alone."""

from __future__ import annotations

import pytest
import torch

from instructkit.errors import ModelError
from instructkit.model import GPTConfig, GPTModel
from instructkit.model.lora import (
    LinearWithLoRA,
    apply_lora,
    count_parameters,
    load_adapter,
    merge_lora,
    save_adapter,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=2, n_layers=2))


def randomize_adapters(model, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora.B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


IDS = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(0))


def test_wraps_attention_and_mlp_but_not_the_head():
    model = tiny_model()
    before = model(IDS)
    wrapped = apply_lora(model, rank=4, alpha=8)
    assert wrapped == [
        f"h.{i}.{name}"
        for i in range(2)
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    assert not isinstance(model.lm_head, LinearWithLoRA)
    assert torch.equal(model(IDS), before)  # B starts at zero
    trainable, total = count_parameters(model)
    expected = sum(
        4 * (m.linear.in_features + m.linear.out_features)
        for m in model.modules()
        if isinstance(m, LinearWithLoRA)
    )
    assert trainable == expected and total > trainable


def test_merged_equals_unmerged_and_loads_as_plain_gpt():
    model = tiny_model()
    apply_lora(model, rank=4, alpha=8)
    randomize_adapters(model)
    unmerged = model(IDS)
    assert not torch.allclose(unmerged, tiny_model()(IDS))  # the adapters do something
    merge_lora(model)
    assert not any(isinstance(m, LinearWithLoRA) for m in model.modules())
    torch.testing.assert_close(model(IDS), unmerged, rtol=1e-5, atol=1e-5)
    plain = tiny_model(seed=5)
    plain.load_state_dict(model.state_dict())  # strict: same keys as a plain GPT
    torch.testing.assert_close(plain(IDS), unmerged, rtol=1e-5, atol=1e-5)


def test_only_adapters_change_in_a_step():
    model = tiny_model()
    apply_lora(model, rank=2, alpha=4)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora." in n for n in lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.loss(IDS[:, :-1], IDS[:, 1:]).backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]) and param.grad is None, name
    assert any(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if n in lora)


def test_adapter_file_round_trip(tmp_path):
    model = tiny_model()
    apply_lora(model, rank=4, alpha=8)
    randomize_adapters(model)
    save_adapter(model, tmp_path / "adapter.safetensors")
    restored = load_adapter(tiny_model(), tmp_path / "adapter.safetensors")
    assert torch.equal(restored(IDS), model(IDS))
    assert (tmp_path / "adapter.safetensors").stat().st_size < 100_000  # adapters only


def test_bad_adapter_file_is_a_model_error(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="not an instructkit LoRA adapter"):
        load_adapter(tiny_model(), tmp_path / "junk.safetensors")


def test_scale_is_alpha_over_rank_written_out():
    """Each adapted layer computes x @ (W + (alpha / rank) * A @ B) + b (A: in x r, B: r x out),
    checked against a plain model holding those weights, and merging writes them."""
    model = tiny_model()
    plain = tiny_model()
    names = apply_lora(model, rank=4, alpha=6.0)
    randomize_adapters(model)
    expected = {}
    with torch.no_grad():
        for name in names:
            a = model.get_parameter(f"{name}.lora.A")
            b = model.get_parameter(f"{name}.lora.B")
            linear = plain.get_submodule(name)
            expected[name] = linear.weight + ((6.0 / 4) * (a @ b)).T  # nn.Linear is (out, in)
            linear.weight.copy_(expected[name])
    torch.testing.assert_close(model(IDS), plain(IDS), rtol=1e-5, atol=1e-6)
    merge_lora(model)
    for name in names:
        torch.testing.assert_close(
            model.get_submodule(name).weight, expected[name], rtol=1e-6, atol=1e-7
        )
