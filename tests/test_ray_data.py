"""The task-grouped Ray Data stream: one task per group, every task each epoch, equal shards."""

import threading
from collections import Counter

import pytest
from conftest import tiny_config

from hyperray.build import build, build_tasks
from hyperray.ray_data import build_dataset, group_rows, groups_per_batch, task_batches


def test_each_epoch_of_rows_holds_every_task_once():
    config = tiny_config(**{"data.tasks_per_batch": 2, "data.rows_per_task": 3})
    tasks, _ = build_tasks(config)
    rows = group_rows(config, tasks, num_batches=len(tasks))  # two epochs of groups
    names = sorted(t.name for t in tasks)
    for epoch in range(2):
        chunk = rows[epoch * len(tasks) : (epoch + 1) * len(tasks)]
        assert sorted(r["task"] for r in chunk) == names
    assert [r["task"] for r in rows[: len(tasks)]] != [r["task"] for r in rows[len(tasks) :]]
    assert all(len(r["prompts"]) == len(r["answers"]) == 3 for r in rows)
    by_task = {t.name: {i.input for i in t.instances} for t in tasks}
    for r in rows:  # a group's rows come from its own task only
        assert all(any(inp in p for inp in by_task[r["task"]]) for p in r["prompts"])


def test_pretraining_batches_hold_one_example_per_group():
    config = tiny_config(**{"train.stage": "pretrain"})
    tasks, _ = build_tasks(config)
    rows = group_rows(config, tasks, num_batches=2)
    assert len(rows) == 2 * groups_per_batch(config)
    assert all(len(r["prompts"]) == 1 and r["task"] == "pretrain" for r in rows)


@pytest.mark.slow
def test_two_shards_get_single_task_groups_and_cover_every_task(ray_cluster):
    config = tiny_config(**{"data.tasks_per_batch": 2, "data.rows_per_task": 2})
    tasks, _ = build_tasks(config)
    epoch_batches = len(tasks) // 2  # one epoch of groups across both shards
    dataset = build_dataset(config, tasks, epoch_batches)
    shards = dataset.streaming_split(2, equal=True)
    collator = build(config).collator
    got: dict[int, list] = {0: [], 1: []}

    def consume(i):
        for batch in task_batches(shards[i], collator, 2):
            got[i].append(batch)
            if len(got[i]) == epoch_batches // 2:
                break

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(got[0]) == len(got[1]) == epoch_batches // 2
    by_task = {t.name: t for t in tasks}
    seen = Counter()
    for batch in got[0] + got[1]:
        assert len(batch.tasks) == 2 and batch.input_ids.shape[0] == 4
        assert batch.row_task.tolist() == [0, 0, 1, 1]
        for g, name in enumerate(batch.tasks):
            seen[name] += 1
            demo = by_task[name].positive_examples[0]
            assert demo.input in batch.task_texts[g]  # the hypernet reads its own task's demos
        assert (batch.labels != -100).any()  # tokenised in Ray Data, answers scored
    assert set(seen) == set(by_task)  # every task within the epoch
