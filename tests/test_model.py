"""HyperLoRA end to end on a tiny Llama: invariants, training, mixed batches, export, checkpoints."""

import json

import pytest
import torch
from conftest import tiny_config
from peft import PeftModel

from hyperray.batching import Group, instruction_groups
from hyperray.build import build, build_tasks
from hyperray.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from hyperray.engine import TorchEngine
from hyperray.heads import HEADS


def first_batch(model, config, with_alt=False, tasks_per_batch=2):
    train, _ = build_tasks(config)
    groups = next(instruction_groups(train, tasks_per_batch, 3, with_alt=with_alt, seed=0))
    return model.collator(groups)


def fit(model, batch, steps, lr=1e-2):
    """Train on one batch; the cross-entropy of every step."""
    engine = TorchEngine(model, lr=lr, total_steps=steps)
    losses = []
    for _ in range(steps):
        out = model(batch)
        engine.backward(out.loss)
        engine.step()
        losses.append(out.ce.item())
    return losses


def test_untrained_hypernetwork_leaves_the_base_model_unchanged(config):
    model = build(config)
    batch = first_batch(model, config)
    adapter = model.adapter(model.generate_weights(batch.task_texts)).index_select(batch.row_task)
    assert all(float(b.detach().abs().max()) == 0.0 for _, b in adapter.weights.values())
    assert any(float(a.detach().abs().max()) > 0.0 for a, _ in adapter.weights.values())
    with torch.no_grad():
        base = model.target(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with model.hooks.apply(adapter):
            adapted = model.target(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).logits
    torch.testing.assert_close(adapted, base, atol=0, rtol=0)


def test_a_step_changes_only_hypernetwork_parameters(config):
    model = build(config)
    target_before = {k: v.clone() for k, v in model.target.state_dict().items()}
    hyper_before = {k: v.clone() for k, v in model.hypernet.state_dict().items()}
    engine = TorchEngine(model, lr=1e-2, total_steps=3)
    for _ in range(3):
        engine.backward(model(first_batch(model, config)).loss)
        engine.step()
    assert all(p.grad is None for p in model.target.parameters())
    for k, v in model.target.state_dict().items():
        assert torch.equal(v, target_before[k]), k
    changed = [
        k for k, v in model.hypernet.state_dict().items() if not torch.equal(v, hyper_before[k])
    ]
    assert len(changed) >= len(hyper_before) // 2


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("lightweight", [False, True])
def test_every_head_learns(head, lightweight):
    config = tiny_config(
        **{"hypernet.head": head, "lora.lightweight": lightweight, "train.lr": 1e-2}
    )
    model = build(config)
    batch = first_batch(model, config)
    losses = fit(model, batch, steps=80)
    assert losses[-1] < 0.85 * losses[0], (head, losses[0], losses[-1])


@pytest.mark.parametrize("on", ["adapter", "states"])
def test_consistency_is_zero_for_identical_demos_and_positive_otherwise(on):
    config = tiny_config(
        **{
            "train.consistency_weight": 1.0,
            "train.consistency_on": on,
            "hypernet.head": "autoregressive",
        }
    )
    model = build(config)
    batch = first_batch(model, config, with_alt=True)
    assert batch.alt_task_texts is not None and batch.alt_task_texts != batch.task_texts
    out = model(batch)
    assert float(out.consistency) > 0
    torch.testing.assert_close(out.loss, out.ce + out.consistency)
    batch.alt_task_texts = list(batch.task_texts)
    assert float(model(batch).consistency) == 0.0


def test_alpha_zero_turns_consistency_off():
    config = tiny_config(**{"train.consistency_weight": 0.0})
    model = build(config)
    batch = first_batch(model, config, with_alt=True)
    out = model(batch)
    assert float(out.consistency) == 0.0 and torch.equal(out.loss, out.ce)


def trained(config, steps=15):
    model = build(config)
    fit(model, first_batch(model, config), steps)
    return model.eval()


def test_mixed_task_batch_equals_each_row_alone(config):
    model = trained(config)
    batch = first_batch(model, config, tasks_per_batch=3)
    adapter = model.adapter(model.generate_weights(batch.task_texts))
    with torch.no_grad(), model.hooks.apply(adapter.index_select(batch.row_task)):
        together = model.target(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits
    for i in range(len(batch.row_task)):
        length = int(batch.attention_mask[i].sum())
        with torch.no_grad(), model.hooks.apply(adapter.row(int(batch.row_task[i]))):
            alone = model.target(input_ids=batch.input_ids[i : i + 1, :length]).logits
        torch.testing.assert_close(together[i : i + 1, :length], alone, atol=1e-5, rtol=1e-4)
    assert adapter.batch_size == 3


def test_exported_adapter_loads_in_peft_with_the_same_logits(config, tmp_path):
    model = trained(config)
    train, _ = build_tasks(config)
    task = train[0]
    adapter = model.generate_adapter(task.definition, task.positive_examples[:2])
    adapter.save_peft(tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["r"] == 4 and meta["target_modules"] == ["q_proj", "v_proj"]

    ids = model.collator(
        [Group("unused", ((task.instances[0].input, task.instances[0].outputs[0]),))]
    ).input_ids
    with torch.no_grad(), model.hooks.apply(adapter):
        ours = model.target(input_ids=ids).logits
    base = model.target(input_ids=ids).logits
    peft_model = PeftModel.from_pretrained(model.target, tmp_path / "adapter")
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    assert not torch.allclose(ours, base, atol=1e-4), (
        "training must have moved the adapter off zero"
    )
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


def test_checkpoint_round_trip_and_mismatch(config, tmp_path):
    model = trained(config, steps=3)
    save_checkpoint(model, config, tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {
        "hypernet.safetensors",
        "hyperray.json",
    }
    restored, restored_config = load_checkpoint(tmp_path / "ckpt")
    assert restored_config == config
    texts = ["Definition: reverse the word.\n\nPositive Example 1 -\nInput: cat\nOutput: tac"]
    torch.testing.assert_close(
        restored.generate_weights(texts).codes, model.generate_weights(texts).codes
    )

    other = build(tiny_config(**{"model.target_modules": "q_proj,k_proj"}))
    with pytest.raises(CheckpointMismatchError, match="tiny-llama"):
        load_weights(other, tmp_path / "ckpt")
    deeper = build(tiny_config(**{"model.name": "tiny-t5", "model.target_modules": "q,v"}))
    with pytest.raises(CheckpointMismatchError, match="model.name"):
        load_weights(deeper, tmp_path / "ckpt")


def test_generate_adapter_from_dict_examples(config):
    model = build(config)
    adapter = model.generate_adapter(
        "Reverse the word.", [{"input": "cat", "output": "tac"}, {"input": "dog", "output": "god"}]
    )
    assert adapter.batch_size == 1
    assert set(adapter.weights) == {s.name for s in model.hypernet.layout.slots}


def test_batched_generation_equals_each_input_alone(config):
    model = trained(config)
    train, _ = build_tasks(config)
    task = train[1]
    adapter = model.generate_adapter(task.definition, task.positive_examples[:2])
    inputs = ["ab", "a much longer input than the first one", "xyz 12"]
    together = model.generate(inputs, adapter, max_new_tokens=6)
    assert together == [model.generate([text], adapter, max_new_tokens=6)[0] for text in inputs]
    assert together != model.generate(inputs, None, max_new_tokens=6), "the adapter must matter"


def test_encoder_decoder_target_trains_and_exports(tmp_path):
    config = tiny_config(
        **{"model.name": "tiny-t5", "model.target_modules": "q,v", "train.lr": 1e-2}
    )
    model = build(config)
    assert model.is_encoder_decoder
    assert any("EncDecAttention" in s.name for s in model.hypernet.layout.slots)
    batch = first_batch(model, config)
    losses = fit(model, batch, steps=40)
    assert losses[-1] < 0.9 * losses[0]

    adapter = model.generate_adapter("Copy the input.", [{"input": "a", "output": "a"}] * 2)
    adapter.save_peft(tmp_path / "t5")
    meta = json.loads((tmp_path / "t5" / "adapter_config.json").read_text())
    assert meta["task_type"] == "SEQ_2_SEQ_LM"
    with torch.no_grad(), model.hooks.apply(adapter):
        ours = model.target(
            input_ids=batch.input_ids[:1], decoder_input_ids=batch.input_ids[:1, :4]
        ).logits
    peft_model = PeftModel.from_pretrained(model.target, tmp_path / "t5")
    with torch.no_grad():
        theirs = peft_model(
            input_ids=batch.input_ids[:1], decoder_input_ids=batch.input_ids[:1, :4]
        ).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


def test_generate_adapter_rejects_bad_task_text(config):
    model = build(config)
    with pytest.raises(ValueError, match="definition is empty"):
        model.generate_adapter("  ", [])
    with pytest.raises(ValueError, match=r"positive_examples\[1\].*'output'"):
        model.generate_adapter("Reverse it.", [{"input": "a", "output": "a"}, {"input": "b"}])


@pytest.mark.parametrize("lightweight", [False, True])
def test_a_bf16_model_trains_as_deepspeed_bf16_runs_it(lightweight):
    """DeepSpeed's bf16 casts the whole module: encoder, hypernetwork and frozen target alike."""
    config = tiny_config(**{"lora.lightweight": lightweight})
    model = build(config).to(torch.bfloat16)
    batch = first_batch(model, config, with_alt=True)
    out = model(batch)
    out.loss.backward()
    grads = [p.grad for p in model.hypernet.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
