"""SNI tasks as a Hugging Face `datasets.Dataset`, and the loader for a full SNI repository clone.

The dataset has one row per instance and carries its task's definition and positive examples, so
a row alone is enough to build both the hypernetwork's task text and the target model's input.
The repository loader reads the official split lists (`splits/<split_name>/<split>_tasks.txt`)
and the task files they name (`tasks/<name>.json`) of https://github.com/allenai/natural-instructions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import datasets

from hyperray.data.tasks import (
    Task,
    load_tasks,
    parse_task,
    read_task_json,
    require_positive_examples,
)

FEATURES = datasets.Features(
    {
        "task": datasets.Value("string"),
        "definition": datasets.Value("string"),
        "positive_examples": datasets.List(
            {"input": datasets.Value("string"), "output": datasets.Value("string")}
        ),
        "id": datasets.Value("string"),
        "input": datasets.Value("string"),
        "outputs": datasets.List(datasets.Value("string")),
    }
)
_LANGUAGE_FIELDS = ("Input_language", "Output_language", "Instruction_language")
_SPLITS = ("train", "test")


def tasks_to_dataset(tasks: Sequence[Task]) -> datasets.Dataset:
    """One row per instance, tasks in the given order, instances in file order."""
    rows: dict[str, list] = {name: [] for name in FEATURES}
    for task in tasks:
        examples = [{"input": e.input, "output": e.output} for e in task.positive_examples]
        for instance in task.instances:
            rows["task"].append(task.name)
            rows["definition"].append(task.definition)
            rows["positive_examples"].append(examples)
            rows["id"].append(instance.id)
            rows["input"].append(instance.input)
            rows["outputs"].append(list(instance.outputs))
    return datasets.Dataset.from_dict(rows, features=FEATURES)


def load_sni_dataset(directory: str | Path) -> datasets.Dataset:
    """`load_tasks(directory)` as a dataset."""
    return tasks_to_dataset(load_tasks(directory))


def _split_names(root: Path, split: str, split_name: str) -> list[str]:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    split_file = root / "splits" / split_name / f"{split}_tasks.txt"
    if not split_file.is_file():
        splits_dir = root / "splits"
        found = (
            sorted(p.name for p in splits_dir.iterdir() if p.is_dir())
            if splits_dir.is_dir()
            else []
        )
        raise FileNotFoundError(
            f"SNI split list {split_file} does not exist; root must be a checkout of "
            "https://github.com/allenai/natural-instructions (it holds splits/ and tasks/). "
            f"Split names found under {splits_dir}: {found or 'none'}"
        )
    names = [line.strip() for line in split_file.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n and not n.startswith("#")]


def load_sni_repository(
    root: str | Path,
    split: str = "train",
    split_name: str = "default",
    english_only: bool = True,
    min_positive_examples: int = 2,
) -> list[Task]:
    """The tasks of one official SNI split, in split-file order.

    `english_only` keeps tasks whose input, output and instruction languages are all English; a
    task file without one of those fields is kept, since the fields are optional in the schema.
    """
    root = Path(root)
    names = _split_names(root, split, split_name)
    missing = [n for n in names if not (root / "tasks" / f"{n}.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} task(s) listed in splits/{split_name}/{split}_tasks.txt have no file "
            f"under {root / 'tasks'}, e.g. {missing[:3]}; check out the full repository "
            "or remove them from the list"
        )
    tasks = []
    for name in names:
        path = root / "tasks" / f"{name}.json"
        record = read_task_json(path)
        if english_only and any(
            record.get(f, ["English"]) != ["English"] for f in _LANGUAGE_FIELDS
        ):
            continue
        tasks.append(
            require_positive_examples(parse_task(record, path), path, min_positive_examples)
        )
    return tasks
