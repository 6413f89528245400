"""SNI task files, the built-in suite, task splits, the datasets view and the task text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hyperray.data import (
    BUILTIN_EVAL_TASKS,
    Example,
    Instance,
    Task,
    TaskFileError,
    builtin_tasks,
    format_instance,
    format_task_text,
    load_sni_dataset,
    load_sni_repository,
    load_task,
    load_tasks,
    split_tasks,
    tasks_to_dataset,
    write_task,
)

# The shape of a real SNI file, NaN URL included (task088 and others carry `"URL": [NaN]`).
REAL_SCHEMA = """{
 "Contributors": ["Neeraj Varshney"],
 "Source": ["synthetic"],
 "URL": [NaN],
 "Categories": ["Spelling Error Detection"],
 "Reasoning": [],
 "Definition": ["You need to identify the typo in the given sentence."],
 "Input_language": ["English"],
 "Output_language": ["English"],
 "Instruction_language": ["English"],
 "Domains": ["Commonsense -> Concepts and Relations"],
 "Positive Examples": [
  {"input": "It is gonig to rain today.", "output": "gonig", "explanation": "swapped"},
  {"input": "Who is the pesident of America", "output": "pesident", "explanation": "missing"}
 ],
 "Instances": [
  {"id": "task088-65a0", "input": "The karge motorcycle is white.", "output": ["karge"]},
  {"id": "task088-4e80", "input": "Teh cat sat.", "output": ["Teh", "teh"]}
 ],
 "Instance License": ["Unknown"]
}"""


def _record(**changes) -> dict:
    record = json.loads(REAL_SCHEMA)
    record.update(changes)
    return record


def _write(directory: Path, name: str, record: dict | str) -> Path:
    path = directory / f"{name}.json"
    path.write_text(record if isinstance(record, str) else json.dumps(record, indent=1))
    return path


def _task(name: str, n_instances: int = 2) -> Task:
    return Task(
        name=name,
        definition=f"Do {name}.",
        positive_examples=(Example("a", "b"), Example("c", "d")),
        instances=tuple(
            Instance(f"{name}-{k}", f"in {k}", (f"out {k}",)) for k in range(n_instances)
        ),
        categories=("Misc.",),
    )


def test_real_schema_with_nan_url_loads(tmp_path):
    path = _write(tmp_path, "task088_identify_typo_verification", REAL_SCHEMA)
    task = load_task(path)
    assert task.name == "task088_identify_typo_verification"
    assert task.definition == "You need to identify the typo in the given sentence."
    assert task.positive_examples[1] == Example("Who is the pesident of America", "pesident")
    assert task.instances[1] == Instance("task088-4e80", "Teh cat sat.", ("Teh", "teh"))
    assert task.categories == ("Spelling Error Detection",)


def test_several_definitions_are_joined(tmp_path):
    path = _write(tmp_path, "task1", _record(Definition=["First wording.", "Second wording."]))
    assert load_task(path).definition == "First wording. Second wording."


def test_invalid_json_names_file_and_line(tmp_path):
    broken = REAL_SCHEMA.replace('"Teh cat sat.",', '"Teh cat sat."')  # a missing comma
    line = 1 + next(i for i, text in enumerate(broken.splitlines()) if "Teh cat sat." in text)
    path = _write(tmp_path, "task_broken", broken)
    with pytest.raises(TaskFileError, match=rf"task_broken\.json.*line {line},"):
        load_task(path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.pop("Definition"), "Definition"),
        (lambda r: r.pop("Instances"), "Instances"),
        (lambda r: r.update(Instances={"id": "x"}), "Instances"),
        (lambda r: r.update(Definition="not a list"), "Definition"),
        (lambda r: r["Instances"][1].update(output=[]), "Instances[1].output"),
        (lambda r: r["Instances"][0].update(output="karge"), "Instances[0].output"),
        (lambda r: r["Instances"][0].pop("id"), "Instances[0].id"),
        (lambda r: r["Positive Examples"][1].pop("output"), "Positive Examples[1].output"),
        (lambda r: r.update(Categories=[1]), "Categories[0]"),
    ],
)
def test_malformed_field_names_file_and_field(tmp_path, change, field):
    record = _record()
    change(record)
    path = _write(tmp_path, "task_bad", record)
    with pytest.raises(TaskFileError) as caught:
        load_task(path)
    message = str(caught.value)
    assert "task_bad.json" in message
    assert repr(field) in message


def test_too_few_positive_examples_is_a_task_file_error(tmp_path):
    record = _record()
    record["Positive Examples"] = record["Positive Examples"][:1]
    _write(tmp_path, "task_one_example", record)
    with pytest.raises(TaskFileError, match=r"task_one_example\.json.*Positive Examples"):
        load_tasks(tmp_path)
    assert len(load_tasks(tmp_path, min_positive_examples=1)[0].positive_examples) == 1


def test_load_tasks_sorted_skips_manifest_and_selects_names(tmp_path):
    for name in ("task_b", "task_a", "task_c"):
        write_task(_task(name), tmp_path)
    (tmp_path / "manifest.json").write_text('{"tasks": []}')
    assert [t.name for t in load_tasks(tmp_path)] == ["task_a", "task_b", "task_c"]
    assert [t.name for t in load_tasks(tmp_path, names=["task_c", "task_a"])] == [
        "task_c",
        "task_a",
    ]
    with pytest.raises(ValueError, match="task_a"):
        load_tasks(tmp_path, names=["task_zz"])


def test_load_tasks_missing_or_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tasks(tmp_path / "nowhere")
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        load_tasks(tmp_path)


def test_builtin_suite_round_trips_through_files(tmp_path):
    tasks = builtin_tasks(num_instances=6)
    for task in tasks:
        write_task(task, tmp_path)
    assert load_tasks(tmp_path, min_positive_examples=5) == tasks


def test_builtin_suite_shape():
    tasks = builtin_tasks(num_instances=10, seed=3)
    names = [t.name for t in tasks]
    ids = [i.id for t in tasks for i in t.instances]
    assert len(tasks) >= 40
    assert len(set(names)) == len(names) and names == sorted(names)
    assert all(re.fullmatch(r"builtin\d{3}_[a-z_]+", n) for n in names)
    assert len(set(ids)) == len(ids)
    assert all(i.id.startswith(t.name.split("_")[0] + "-") for t in tasks for i in t.instances)
    assert all(len(t.positive_examples) >= 5 and len(t.instances) == 10 for t in tasks)
    assert all(len(i.input) <= 60 for t in tasks for i in t.instances)
    assert set(BUILTIN_EVAL_TASKS) <= set(names)
    assert len(set(BUILTIN_EVAL_TASKS)) == len(BUILTIN_EVAL_TASKS) >= 6
    assert len({t.categories for t in tasks if t.name in BUILTIN_EVAL_TASKS}) >= 5


def test_builtin_suite_is_deterministic_per_seed():
    assert builtin_tasks(8, seed=1) == builtin_tasks(8, seed=1)
    assert builtin_tasks(8, seed=1) != builtin_tasks(8, seed=2)


def test_builtin_binary_tasks_show_both_labels_in_the_first_two_examples():
    for task in builtin_tasks(4):
        labels = {i.outputs[0] for i in task.instances} | {e.output for e in task.positive_examples}
        if labels <= {"yes", "no"} or labels <= {"positive", "negative"}:
            first_two = {e.output for e in task.positive_examples[:2]}
            assert len(first_two) == 2, task.name


def _pairs(tasks: list[Task], suffix: str) -> list[tuple[str, str]]:
    (task,) = [t for t in tasks if t.name.endswith(suffix)]
    return [(e.input, e.output) for e in task.positive_examples] + [
        (i.input, i.outputs[0]) for i in task.instances
    ]


def test_builtin_outputs_are_correct():
    tasks = builtin_tasks(num_instances=20)
    numbers = lambda text: [int(x) for x in text.split(", ")]  # noqa: E731
    for word, reversed_word in _pairs(tasks, "_reverse_word"):
        assert reversed_word == word[::-1]
    for text, answer in _pairs(tasks, "_sort_ascending"):
        assert numbers(answer) == sorted(numbers(text))
    for text, answer in _pairs(tasks, "_sort_descending"):
        assert numbers(answer) == sorted(numbers(text), reverse=True)
    for text, answer in _pairs(tasks, "_subtract_numbers"):
        a, b = map(int, text.split(" and "))
        assert int(answer) == a - b
    for word, answer in _pairs(tasks, "_is_palindrome"):
        assert answer == ("yes" if word == word[::-1] else "no")
    for text, answer in _pairs(tasks, "_last_word"):
        assert answer == text.split()[-1]


def test_split_tasks_disjoint_covering_deterministic():
    tasks = [_task(f"task{i:02d}") for i in range(10)]
    train, held = split_tasks(tasks, eval_fraction=0.3, seed=7)
    assert len(held) == 3 and len(train) == 7
    assert {t.name for t in train}.isdisjoint(t.name for t in held)
    assert {t.name for t in train + held} == {t.name for t in tasks}
    assert split_tasks(tasks[::-1], 0.3, seed=7) == (train, held)
    assert any(split_tasks(tasks, 0.3, seed=s)[1] != held for s in range(8, 12))
    two = split_tasks(tasks[:2], eval_fraction=0.01, seed=0)
    assert len(two[0]) == 1 and len(two[1]) == 1
    with pytest.raises(ValueError, match="eval_fraction"):
        split_tasks(tasks, eval_fraction=1.0, seed=0)


def test_tasks_to_dataset_one_row_per_instance(tmp_path):
    tasks = [_task("task_a", 3), _task("task_b", 2)]
    dataset = tasks_to_dataset(tasks)
    assert len(dataset) == 5
    row = dataset[3]
    assert row["task"] == "task_b" and row["id"] == "task_b-0"
    assert row["definition"] == "Do task_b." and row["input"] == "in 0"
    assert row["outputs"] == ["out 0"]
    assert row["positive_examples"] == [
        {"input": "a", "output": "b"},
        {"input": "c", "output": "d"},
    ]
    for task in tasks:
        write_task(task, tmp_path)
    assert load_sni_dataset(tmp_path)["id"] == dataset["id"]


def test_load_sni_repository_reads_split_and_filters_languages(tmp_path):
    tasks_dir = tmp_path / "tasks"
    for name in ("task001_a", "task002_b", "task003_c"):
        write_task(_task(name), tasks_dir)
    french = json.loads((tasks_dir / "task002_b.json").read_text())
    french["Output_language"] = ["French"]
    _write(tasks_dir, "task002_b", french)
    split_dir = tmp_path / "splits" / "default"
    split_dir.mkdir(parents=True)
    (split_dir / "train_tasks.txt").write_text("task003_c\ntask002_b\n\ntask001_a\n")
    assert [t.name for t in load_sni_repository(tmp_path)] == ["task003_c", "task001_a"]
    everything = load_sni_repository(tmp_path, english_only=False)
    assert [t.name for t in everything] == ["task003_c", "task002_b", "task001_a"]
    with pytest.raises(FileNotFoundError, match="test_tasks.txt"):
        load_sni_repository(tmp_path, split="test")


def test_format_task_text_has_definition_and_examples_in_order():
    examples = [Example(f" input {k} ", f"output {k}\n") for k in range(3)]
    text = format_task_text("  Reverse the word. ", examples[:2])
    assert text.startswith("Definition: Reverse the word.\n\nPositive Example 1 -\n")
    assert text.count("Positive Example") == 2 and "input 2" not in text
    assert text.index("Input: input 0\nOutput: output 0") < text.index("Input: input 1")
    assert text == text.strip()
    assert format_task_text("Define.", []) == "Definition: Define."


def test_format_instance():
    assert format_instance(" cat ") == "cat"
    assert format_instance("cat", definition="Reverse it.") == "Definition: Reverse it.\n\ncat"
