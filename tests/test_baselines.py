"""Evaluation against the baselines: the held-out split, the peft LoRA baselines, adaptation cost,
and jobs/evaluate.py end to end on a tiny model and the built-in tasks."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from rouge_score import rouge_scorer

from hyperray.adaptation_cost import count_flops, hypernet_cost, steps_to_reach
from hyperray.build import build, build_tasks
from hyperray.checkpoint import save_checkpoint
from hyperray.comparison import (
    METHODS,
    random_texts,
    resolve_methods,
    unrelated_assignment,
    unrelated_texts,
)
from hyperray.data import (
    Example,
    Instance,
    Task,
    format_in_context,
    format_task_text,
    load_tasks,
)
from hyperray.evaluate import rouge_l
from hyperray.heldout import split_task, split_tasks_for_eval
from hyperray.lora_baselines import (
    Budget,
    attached_lora,
    lora_module_names,
    task_group,
    train_multitask_lora,
    train_task_lora,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))
SNI_DEV = ROOT.parent / "shared" / "data" / "sni" / "dev"

import evaluate as evaluate_job  # noqa: E402


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


@pytest.mark.parametrize(
    "prediction, references, expected",
    [
        # LCS 3 of 3 predicted and 6 reference tokens: P = 1, R = 1/2, F = 2/3.
        ("the cat sat", ["the cat sat on the mat"], 200 / 3),
        ("sat the cat", ["the cat sat"], 200 / 3),  # LCS "the cat": P = R = 2/3
        ("no", ["yes", "No"], 100.0),  # best reference, case-insensitive tokens
        ("a b c d", ["x y"], 0.0),
    ],
)
def test_rouge_l_on_hand_made_pairs(prediction, references, expected):
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    reference = 100 * max(scorer.score(r, prediction)["rougeL"].fmeasure for r in references)
    assert rouge_l(prediction, references) == pytest.approx(expected)
    assert rouge_l(prediction, references) == pytest.approx(reference)


def test_in_context_prompt_holds_the_task_text_then_the_input():
    demos = [Example("cat", "tac"), Example("dog", "god")]
    text = format_in_context("Reverse the word.", demos, "lamp")
    assert text.startswith("Definition: Reverse the word.")
    assert text.index("Input: cat") < text.index("Input: dog") < text.index("Input: lamp")
    assert text.endswith("Input: lamp\nOutput:")


# The split


def _split_is_clean(split) -> None:
    test = {_norm(i.input) for i in split.test}
    assert test, split.name
    assert not test & {_norm(e.input) for e in split.demos}
    assert not test & {_norm(i.input) for i in split.train}
    assert not {i.id for i in split.test} & {i.id for i in split.train}
    assert {i.id for i in split.train + split.test} <= {i.id for i in split.task.instances}


def test_split_keeps_demos_and_training_instances_out_of_the_test_part():
    _, held_out = build_tasks(tiny_config())
    for split in split_tasks_for_eval(held_out, num_demos=2, train_fraction=0.5, seed=3):
        _split_is_clean(split)
        assert split.demos == split.task.positive_examples[:2]
        assert len(split.train) == len(split.task.instances) // 2


@pytest.mark.skipif(not SNI_DEV.is_dir(), reason="../shared/data/sni/dev not present")
def test_split_of_the_sni_dev_tasks_is_clean_and_fixed_by_its_seed():
    tasks = load_tasks(SNI_DEV)
    first = split_tasks_for_eval(tasks, 2, 0.5, seed=0)
    for split in first:
        _split_is_clean(split)
    again = split_tasks_for_eval(tasks, 2, 0.5, seed=0)
    assert [[i.id for i in s.test] for s in first] == [[i.id for i in s.test] for s in again]
    other = split_tasks_for_eval(tasks, 2, 0.5, seed=1)
    assert [[i.id for i in s.test] for s in first] != [[i.id for i in s.test] for s in other]


def test_split_drops_test_instances_whose_text_was_shown():
    demos = (Example("alpha", "A"), Example("beta", "B"))
    instances = tuple(Instance(f"t-{k}", f"word {k}", (str(k),)) for k in range(8))
    # Same text as a demonstration, and the same text as every other instance, under new ids.
    copies = (Instance("t-demo", "  Alpha ", ("A",)),) + tuple(
        Instance(f"t-copy-{i.id}", i.input.upper(), i.outputs) for i in instances
    )
    task = Task("task900_copies", "Name it.", demos, instances + copies)
    split = split_task(task, num_demos=2, train_fraction=0.5, seed=0)
    _split_is_clean(split)
    assert all(i.id != "t-demo" for i in split.test)


def test_split_refuses_a_task_left_without_test_instances():
    task = Task("task901_one", "d", (Example("a", "b"),) * 2, (Instance("x-1", "a", ("b",)),))
    with pytest.raises(ValueError, match="no test instance"):
        split_task(task, train_fraction=0.5)


# Methods and cost helpers


def test_methods_resolve_in_order_with_what_they_need():
    assert resolve_methods("all") == list(METHODS)
    assert resolve_methods("per-task-lora") == ["zero-shot", "per-task-lora", "hyperray"]
    with pytest.raises(ValueError, match="zero-shot"):
        resolve_methods("zeroshot")


def test_unrelated_control_pairs_every_task_with_another():
    names = [f"task{i}" for i in range(7)]
    pairs = unrelated_assignment(names, seed=5)
    assert set(pairs) == set(names) and sorted(pairs.values()) == sorted(names)
    assert all(task != other for task, other in pairs.items())


def test_steps_to_reach_takes_the_first_match_else_the_best():
    curve = [(0, 1.0), (5, 3.0), (10, 7.0), (15, 7.0), (20, 6.0)]
    assert steps_to_reach(curve, 5.0) == (10, 7.0, True, 2)
    assert steps_to_reach(curve, 1.0) == (0, 1.0, True, 0)
    assert steps_to_reach(curve, 9.0) == (10, 7.0, False, 2)


def test_count_flops_counts_a_matmul_exactly():
    linear = torch.nn.Linear(10, 20, bias=False)
    assert count_flops(lambda: linear(torch.randn(3, 10))) == 2 * 3 * 10 * 20
    q = torch.randn(1, 2, 4, 8)
    attention = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert attention == 2 * (2 * 2 * 4 * 8 * 4)  # q @ k^T and scores @ v


# The peft LoRA baselines on a tiny model


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config(**{"train.steps": 3})
    model = build(config)
    train_tasks, held_out = build_tasks(config)
    return model, config, train_tasks, held_out


def _logits(model, text="12, 7, 30"):
    ids = torch.tensor([model.collator.prompt_ids(text)])
    with torch.no_grad():
        return model.target(input_ids=ids).logits


def test_multitask_lora_trains_exactly_its_budget_and_leaves_the_target_as_it_was(tiny):
    model, config, train_tasks, _ = tiny
    before = _logits(model)
    hypernet = {k: v.clone() for k, v in model.hypernet.state_dict().items()}
    budget = Budget(steps=3, tasks_per_batch=2, rows_per_task=3)
    lora = train_multitask_lora(model, train_tasks, budget, lr=1e-2)
    assert (lora.steps, lora.rows) == (3, 3 * 2 * 3) == (budget.steps, budget.rows)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora.state.items())
    assert torch.equal(_logits(model), before)
    assert all(torch.equal(v, hypernet[k]) for k, v in model.hypernet.state_dict().items())
    with attached_lora(model, state=lora.state) as peft_model:
        assert lora_module_names(peft_model) == sorted(s.name for s in model.hypernet.layout.slots)
        assert not torch.allclose(_logits(model), before)


def test_per_task_lora_trains_on_its_training_instances_only(tiny):
    model, _, _, held_out = tiny
    split = split_task(held_out[0], train_fraction=0.5, seed=0)
    rows = task_group(split).rows
    assert [p for p, _ in rows] == [i.input.strip() for i in split.train]
    calls = []

    def score():
        calls.append(1)
        return float(len(calls)), [{"n": len(calls)}]

    run = train_task_lora(
        model, split, steps=4, eval_every=2, score=score, initial_score=0.0, lr=1e-2,
        count_flops=count_flops,
    )  # fmt: skip
    assert [s for s, _ in run.curve] == [0, 2, 4]
    assert [v for _, v in run.curve] == [0.0, 1.0, 2.0]
    assert run.train_seconds == sorted(run.train_seconds) and run.train_seconds[0] == 0.0
    assert run.step_flops > 0 and run.examples == [{"n": 2}]


def test_hypernet_cost_counts_the_encoder_and_the_hypernetwork(tiny):
    model, _, _, held_out = tiny
    task = held_out[0]
    cost = hypernet_cost(model, task.definition, task.positive_examples[:2], repeats=1)
    head_only = count_flops(lambda: model.hypernet(torch.zeros(1, model.hypernet.task_dim)))
    assert cost.flops > head_only > 0
    assert cost.seconds > 0


# The job end to end


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    config = tiny_config(**{"train.steps": 4, "train.max_new_tokens": 4})
    model = build(config)
    save_checkpoint(model, config, tmp / "checkpoint")
    out = tmp / "out"
    argv = [
        "--checkpoint", str(tmp / "checkpoint"), "--baselines", "all", "--output-dir", str(out),
        "--tasks", "3", "--max-test-instances", "3", "--per-task-steps", "4",
        "--per-task-eval-every", "2", "--instances-split-seed", "7",
    ]  # fmt: skip
    record = evaluate_job.main(argv)
    return record, out, config, argv


@pytest.mark.slow
def test_every_method_produces_its_row(evaluation):
    record, out, _, _ = evaluation
    assert list(record["averages"]) == list(METHODS)
    table = (out / "results.md").read_text()
    for method in METHODS:
        assert f"| {method} | **{record['averages'][method]:.2f}** |" in table
        assert len(record["per_task"][method]) == 3
    assert json.loads((out / "results.json").read_text())["averages"] == record["averages"]
    for name in ("rouge_by_method.png", "adaptation_cost.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.slow
def test_scores_aggregate_per_task_then_over_tasks(evaluation):
    record, _, _, _ = evaluation
    for method, per_task in record["per_task"].items():
        for task, score in per_task.items():
            rows = record["examples"][method][task]
            for r in rows:
                assert r["rougeL"] == pytest.approx(rouge_l(r["prediction"], r["references"]))
            assert score == pytest.approx(sum(r["rougeL"] for r in rows) / len(rows))
        assert record["averages"][method] == pytest.approx(sum(per_task.values()) / 3)


@pytest.mark.slow
def test_every_method_answers_only_the_test_instances(evaluation):
    record, _, config, _ = evaluation
    _, held_out = build_tasks(config)
    by_name = {t.name: t for t in held_out}
    for task, split in record["split"].items():
        instances = {i.id: i for i in by_name[task].instances}
        test_inputs = [instances[i].input for i in split["test_ids"]]
        shown = {_norm(x) for x in split["demos"]}
        shown |= {_norm(instances[i].input) for i in split["train_ids"]}
        assert not {_norm(x) for x in test_inputs} & shown
        for method in METHODS:
            assert [r["input"] for r in record["examples"][method][task]] == test_inputs


@pytest.mark.slow
def test_multitask_lora_used_the_checkpoints_budget_and_is_reused(evaluation, capsys):
    record, out, config, argv = evaluation
    used = record["context"]["multitask_lora"]
    rows = config.train.steps * config.data.tasks_per_batch * config.data.rows_per_task
    assert (used["steps"], used["rows"], used["budget_rows"]) == (config.train.steps, rows, rows)
    again = evaluate_job.main(argv[:3] + ["multitask-lora", "--no-mlflow"] + argv[4:])
    assert "reusing" in capsys.readouterr().out
    assert again["averages"]["multitask-lora"] == pytest.approx(
        record["averages"]["multitask-lora"]
    )


@pytest.mark.slow
def test_adaptation_cost_is_reported_per_task_and_overall(evaluation):
    record, _, _, _ = evaluation
    costs, summary = record["adaptation_cost"], record["adaptation_cost_summary"]
    assert set(costs) == set(record["per_task"]["hyperray"]) and summary["tasks"] == 3
    for task, c in costs.items():
        assert c["hyperray_rougeL"] == record["per_task"]["hyperray"][task]
        curve = record["per_task_lora_curves"][task]
        assert [s for s, _ in curve] == [0, 2, 4]
        assert curve[0][1] == record["per_task"]["zero-shot"][task]
        assert curve[-1][1] == record["per_task"]["per-task-lora"][task]
        step, _, reached, _ = steps_to_reach(curve, c["hyperray_rougeL"])
        assert (c["lora_steps"], c["lora_reached"]) == (step, reached)
        assert c["flops_ratio"] == pytest.approx(c["lora_flops"] / c["hyperray_flops"])
    total = sum(c["lora_flops"] for c in costs.values())
    assert summary["flops_ratio"] == pytest.approx(
        total / sum(c["hyperray_flops"] for c in costs.values())
    )


@pytest.mark.slow
def test_results_are_logged_to_mlflow(evaluation):
    from mlflow.tracking import MlflowClient

    record, out, _, _ = evaluation
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("hyperray")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`hyperray.job` = 'evaluate'")
    for method, value in record["averages"].items():
        assert run.data.metrics[f"rougeL.{method}"] == pytest.approx(value)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "results.md", "rouge_by_method.png"} <= artifacts


def test_control_texts_are_another_tasks_or_random_words(tiny):
    _, _, _, held_out = tiny
    tasks = held_out[:4]
    pairs = unrelated_assignment([t.name for t in tasks], seed=0)
    by_name = {t.name: t for t in tasks}
    unrelated = unrelated_texts(tasks, num_demos=2, seed=0)
    randoms = random_texts(tasks, num_demos=2, seed=0)
    for task in tasks:
        definition, demos = unrelated[task.name]
        assert definition == by_name[pairs[task.name]].definition != task.definition
        assert demos == list(by_name[pairs[task.name]].positive_examples[:2])
        own = format_task_text(task.definition, task.positive_examples[:2])
        words, no_demos = randoms[task.name]
        assert no_demos == [] and words != own
        assert len(words.split()) == len(own.split())


def test_checkpoint_can_be_named_by_an_mlflow_uri(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    config = tiny_config()
    save_checkpoint(build(config), config, tmp_path / "checkpoint")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(tmp_path / "checkpoint"), "checkpoint")
    local = evaluate_job.resolve_checkpoint(f"runs:/{run.info.run_id}/checkpoint")
    assert local != tmp_path / "checkpoint"
    assert (local / "hyperray.json").read_text() == (
        tmp_path / "checkpoint" / "hyperray.json"
    ).read_text()
    assert evaluate_job.resolve_checkpoint(str(tmp_path / "checkpoint")) == tmp_path / "checkpoint"
