"""Tasks and their text: SNI task files, the built-in suite, task text and pretraining passages."""

from hyperray.data.builtin import BUILTIN_EVAL_TASKS, builtin_tasks
from hyperray.data.pretrain import (
    PretrainExample,
    build_pretrain_tasks,
    load_text_passages,
    passages_from_tasks,
    split_abc,
    split_abcd,
)
from hyperray.data.prompts import format_in_context, format_instance, format_task_text
from hyperray.data.sni_dataset import load_sni_dataset, load_sni_repository, tasks_to_dataset
from hyperray.data.tasks import (
    Example,
    Instance,
    Task,
    TaskFileError,
    load_task,
    load_tasks,
    split_tasks,
    write_task,
)

__all__ = [
    "BUILTIN_EVAL_TASKS",
    "Example",
    "Instance",
    "PretrainExample",
    "Task",
    "TaskFileError",
    "build_pretrain_tasks",
    "builtin_tasks",
    "format_in_context",
    "format_instance",
    "format_task_text",
    "load_sni_dataset",
    "load_sni_repository",
    "load_task",
    "load_tasks",
    "load_text_passages",
    "passages_from_tasks",
    "split_abc",
    "split_abcd",
    "split_tasks",
    "tasks_to_dataset",
    "write_task",
]
