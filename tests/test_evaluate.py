"""ROUGE-L as the SNI papers compute it, and held-out evaluation on a tiny model."""

import pytest
from rouge_score import rouge_scorer

from hyperray.build import build, build_tasks
from hyperray.evaluate import evaluate, rouge_l


@pytest.mark.parametrize(
    "prediction, references",
    [
        ("the cat sat", ["the cat sat on the mat"]),
        ("tac", ["tac"]),
        ("yes", ["no", "yes please"]),
        ("", ["x"]),
    ],
)
def test_rouge_l_is_the_best_reference_f_measure_times_100(prediction, references):
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = 100 * max(scorer.score(r, prediction)["rougeL"].fmeasure for r in references)
    assert rouge_l(prediction, references) == pytest.approx(expected)


def test_evaluate_scores_every_task_and_averages(config):
    model = build(config)
    _, held_out = build_tasks(config)
    held_out = held_out[:3]
    result = evaluate(model, held_out, num_instances=2, max_new_tokens=4)
    assert set(result.per_task) == {t.name for t in held_out}
    assert result.average == pytest.approx(sum(result.per_task.values()) / 3)
    for task in held_out:
        rows = result.examples[task.name]
        assert len(rows) == 2
        assert all(
            r["rougeL"] == pytest.approx(rouge_l(r["prediction"], r["references"])) for r in rows
        )
        assert result.per_task[task.name] == pytest.approx(sum(r["rougeL"] for r in rows) / 2)
