"""Tasks in the Super-NaturalInstructions (SNI) schema: the dataclasses, the file loader and writer.

A task is a definition, a few positive examples (the "Def+2Pos" task text reads the first two) and
the instances the target model is trained or scored on. One JSON file holds one task, keyed as in
the SNI repository (`"Definition"`, `"Positive Examples"`, `"Instances"`, ...); the file stem is
the task name. Loading checks the fields this project reads and raises `TaskFileError` naming the
file, the field and the fix; the fields it does not read (`"Contributors"`, `"URL"`, ...) pass
unchecked, so `"URL": [NaN]` in the real files is fine.
"""

from __future__ import annotations

import difflib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Example:
    """A positive example (demonstration) shown to the hypernetwork."""

    input: str
    output: str


@dataclass(frozen=True)
class Instance:
    """One input the target model answers; any of `outputs` is a correct answer."""

    id: str
    input: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    name: str
    definition: str
    positive_examples: tuple[Example, ...]
    instances: tuple[Instance, ...]
    categories: tuple[str, ...] = ()


class TaskFileError(ValueError):
    """A task file that is not valid JSON or does not follow the SNI task schema."""


MANIFEST_NAME = "manifest.json"
_FIX_HINT = "see https://github.com/allenai/natural-instructions/blob/master/schema.md"


def read_task_json(path: str | Path) -> dict[str, Any]:
    """The raw JSON object of a task file, with errors that point at the line to fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TaskFileError(f"{path}: not UTF-8 text ({err}); re-save the file as UTF-8") from err
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskFileError(
            f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}; "
            "fix the file there, or regenerate it with hyperray.data.write_task"
        ) from err
    if not isinstance(record, dict):
        raise TaskFileError(
            f"{path}: the top level is a {type(record).__name__}, expected a JSON object with "
            f'"Definition", "Positive Examples" and "Instances"; {_FIX_HINT}'
        )
    return record


def parse_task(record: dict[str, Any], path: str | Path) -> Task:
    """Checks an SNI task record and converts it; `path` names the task and the errors."""
    path = Path(path)

    def fail(field: str, problem: str, fix: str) -> TaskFileError:
        return TaskFileError(f"{path}: field {field!r} {problem}; {fix}")

    def require(field: str) -> Any:
        if field not in record:
            present = ", ".join(repr(k) for k in record) or "none"
            raise fail(field, f"is missing (fields present: {present})", f"add it; {_FIX_HINT}")
        return record[field]

    def string(value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise fail(field, f"is a {type(value).__name__}, expected a string", "quote the value")
        return value

    def items(value: Any, field: str, of: type) -> list:
        if not isinstance(value, list):
            raise fail(
                field, f"is a {type(value).__name__}, expected a list", "wrap the value in [ ]"
            )
        for i, item in enumerate(value):
            if not isinstance(item, of):
                raise fail(
                    f"{field}[{i}]",
                    f"is a {type(item).__name__}, expected a {of.__name__}",
                    "make every entry of the list the same kind",
                )
        return value

    definitions = [d.strip() for d in items(require("Definition"), "Definition", str)]
    # Several definitions are rewordings of the same instruction (task288 has two); one string
    # keeps the task text a single definition while losing none of the wording.
    definition = " ".join(d for d in definitions if d)
    if not definition:
        raise fail("Definition", "is empty", 'write the instruction as ["Given ..., output ..."]')

    examples = []
    for i, raw in enumerate(items(require("Positive Examples"), "Positive Examples", dict)):
        field = f"Positive Examples[{i}]"
        for key in ("input", "output"):
            if key not in raw:
                raise fail(f"{field}.{key}", "is missing", f'add "{key}": "..." to the example')
        output = raw["output"]
        # A few SNI examples list several acceptable outputs; the first is what a reader is shown.
        if isinstance(output, list) and output and all(isinstance(o, str) for o in output):
            output = output[0]
        examples.append(
            Example(string(raw["input"], f"{field}.input"), string(output, f"{field}.output"))
        )

    instances = []
    for i, raw in enumerate(items(require("Instances"), "Instances", dict)):
        field = f"Instances[{i}]"
        for key in ("id", "input", "output"):
            if key not in raw:
                raise fail(f"{field}.{key}", "is missing", f'add "{key}" to the instance')
        outputs = items(raw["output"], f"{field}.output", str)
        if not outputs:
            raise fail(
                f"{field}.output", "is an empty list", 'give at least one reference, ["answer"]'
            )
        instances.append(
            Instance(
                id=string(raw["id"], f"{field}.id"),
                input=string(raw["input"], f"{field}.input"),
                outputs=tuple(outputs),
            )
        )
    if not instances:
        raise fail(
            "Instances", "is an empty list", "add at least one instance to train or score on"
        )

    categories = items(record.get("Categories", []), "Categories", str)
    return Task(path.stem, definition, tuple(examples), tuple(instances), tuple(categories))


def load_task(path: str | Path) -> Task:
    """The task in one SNI task file; its name is the file stem."""
    return parse_task(read_task_json(path), path)


def _task_files(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        raise FileNotFoundError(
            f"task directory {directory} does not exist; pass the folder that holds the "
            "task*.json files (e.g. shared/data/sni/train)"
        )
    files = {p.stem: p for p in sorted(directory.glob("*.json")) if p.name != MANIFEST_NAME}
    if not files:
        raise FileNotFoundError(
            f"task directory {directory} holds no task files (*.json other than {MANIFEST_NAME}); "
            "write some with hyperray.data.write_task or point at an SNI folder"
        )
    return files


def load_tasks(
    directory: str | Path,
    names: Sequence[str] | None = None,
    min_positive_examples: int = 2,
) -> list[Task]:
    """The tasks in a folder of SNI task files, sorted by name (or in the order of `names`)."""
    directory = Path(directory)
    files = _task_files(directory)
    if names is None:
        chosen = list(files.values())
    else:
        unknown = [n for n in names if n not in files]
        if unknown:
            close = {n: difflib.get_close_matches(n, files, n=3) for n in unknown[:3]}
            hints = "; ".join(f"{n!r} -> did you mean {c}?" for n, c in close.items() if c)
            raise ValueError(
                f"unknown task name(s) {unknown[:5]} in {directory} ({len(unknown)} in all). "
                f"{hints + '. ' if hints else ''}Available ({len(files)}): "
                f"{list(files)[:5]}{' ...' if len(files) > 5 else ''}"
            )
        chosen = [files[n] for n in names]

    tasks = []
    for path in chosen:
        tasks.append(require_positive_examples(load_task(path), path, min_positive_examples))
    return tasks


def require_positive_examples(task: Task, path: Path, minimum: int) -> Task:
    """``task`` itself, if it has the ``minimum`` positive examples its task text needs."""
    if len(task.positive_examples) < minimum:
        raise TaskFileError(
            f"{path}: field 'Positive Examples' has {len(task.positive_examples)} example(s) "
            f"but min_positive_examples={minimum}; add examples to the file "
            "or pass a lower min_positive_examples"
        )
    return task


def split_tasks(
    tasks: Sequence[Task], eval_fraction: float, seed: int
) -> tuple[list[Task], list[Task]]:
    """A seeded task-level split into (train, eval); both keep name order.

    The shuffle runs over the tasks sorted by name, so the split depends on the seed and the set of
    tasks, not on the order they were listed in.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    by_name = sorted(tasks, key=lambda t: t.name)
    names = [t.name for t in by_name]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"task names must be unique to split by task; repeated: {repeated[:5]}")
    if len(by_name) < 2:
        return by_name, []
    n_eval = min(max(round(len(by_name) * eval_fraction), 1), len(by_name) - 1)
    held = set(random.Random(seed).sample(names, n_eval))
    return [t for t in by_name if t.name not in held], [t for t in by_name if t.name in held]


def write_task(task: Task, directory: str | Path) -> Path:
    """Writes `task` to `<directory>/<name>.json` in the SNI schema; `load_task` reads it back."""
    if not task.name or Path(task.name).name != task.name or task.name.endswith(".json"):
        raise ValueError(
            f"task name {task.name!r} is not a plain file stem; use e.g. 'task001_my_task'"
        )
    english = ["English"]
    record = {
        "Contributors": [],
        "Source": [],
        "URL": [],
        "Categories": list(task.categories),
        "Reasoning": [],
        "Definition": [task.definition],
        "Input_language": english,
        "Output_language": english,
        "Instruction_language": english,
        "Domains": [],
        "Positive Examples": [
            {"input": e.input, "output": e.output, "explanation": ""}
            for e in task.positive_examples
        ],
        "Negative Examples": [],
        "Instances": [
            {"id": i.id, "input": i.input, "output": list(i.outputs)} for i in task.instances
        ],
        "Instance License": ["Unknown"],
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{task.name}.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
