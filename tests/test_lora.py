"""Generated LoRA applied through hooks equals peft's LoraModel with the same A and B."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hyperray.adapter_output import orthonormal_basis
from hyperray.layout import Layout
from hyperray.lora import Adapter, LoraHooks
from hyperray.targets import find_target_modules
from hyperray.tiny import build_tiny_llama


def random_adapter(model, names, rank, batch, lightweight=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    weights = {}
    for i, name in enumerate(names):
        d_in, d_out = modules[name].in_features, modules[name].out_features
        if lightweight:
            c = 8
            a = torch.randn(batch, rank, c, generator=g) @ orthonormal_basis(c, d_in, 2 * i)
            b = orthonormal_basis(c, d_out, 2 * i + 1).T @ torch.randn(batch, c, rank, generator=g)
        else:
            a = torch.randn(batch, rank, d_in, generator=g) * 0.3
            b = torch.randn(batch, d_out, rank, generator=g) * 0.3
        weights[name] = (a, b)
    return Adapter(weights, rank, alpha=8.0, target_modules=["q_proj", "v_proj"])


@pytest.mark.parametrize("lightweight", [False, True])
def test_generated_lora_matches_peft(lightweight):
    model, _ = build_tiny_llama(seed=0)
    names = find_target_modules(model, ["q_proj", "v_proj"])
    adapter = random_adapter(model, names, rank=4, batch=1, lightweight=lightweight)
    ids = torch.randint(0, 200, (2, 11))

    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    modules = dict(peft_model.base_model.model.named_modules())
    with torch.no_grad():
        for name, (a, b) in adapter.weights.items():
            modules[name].lora_A["default"].weight.copy_(a[0])
            modules[name].lora_B["default"].weight.copy_(b[0])
    expected = peft_model(input_ids=ids).logits

    hooks = LoraHooks(model, names)
    with torch.no_grad(), hooks.apply(adapter):
        got = model(input_ids=ids).logits
    base = model(input_ids=ids).logits
    assert not torch.allclose(expected, base, atol=1e-3), "the adapter must change the output"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rows_with_different_adapters_match_each_row_alone():
    model, _ = build_tiny_llama(seed=0)
    names = find_target_modules(model, ["q_proj", "v_proj"])
    adapter = random_adapter(model, names, rank=4, batch=3)
    hooks = LoraHooks(model, names)
    ids = torch.randint(0, 200, (3, 9))
    with torch.no_grad(), hooks.apply(adapter):
        together = model(input_ids=ids).logits
    for i in range(3):
        with torch.no_grad(), hooks.apply(adapter.row(i)):
            alone = model(input_ids=ids[i : i + 1]).logits
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-3)


def test_layout_groups_modules_by_kind_and_depth():
    model, _ = build_tiny_llama(seed=0, num_layers=3)
    layout = Layout.from_model(model, find_target_modules(model, ["q_proj", "v_proj"]))
    assert layout.num_layers == 3
    assert [k.pattern for k in layout.kinds] == [
        "model.layers.*.self_attn.q_proj",
        "model.layers.*.self_attn.v_proj",
    ]
    assert [s.layer for s in layout.slots] == [0, 0, 1, 1, 2, 2]
    assert Layout.from_dict(layout.to_dict()) == layout
    q, v = layout.kinds
    assert (q.d_in, q.d_out) != (v.d_in, v.d_out), "the tiny Llama uses GQA: v is narrower than q"


def test_orthonormal_basis_is_seeded_and_orthonormal():
    p = orthonormal_basis(8, 32, seed=3)
    torch.testing.assert_close(p @ p.T, torch.eye(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(p, orthonormal_basis(8, 32, seed=3))
    assert not torch.allclose(p, orthonormal_basis(8, 32, seed=4))
