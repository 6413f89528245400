"""Task-grouped mini-batches: rows belong to their group's task, no task is starved, only answers score."""

from hyperray.batching import IGNORE, Collator, instruction_groups
from hyperray.data import builtin_tasks, format_task_text
from hyperray.tiny import build_tiny_t5, byte_tokenizer


def test_groups_hold_only_their_task_and_every_task_appears_each_epoch():
    tasks = builtin_tasks(num_instances=6)[:10]
    by_name = {t.name: t for t in tasks}
    stream = instruction_groups(tasks, tasks_per_batch=2, rows_per_task=3, with_alt=True, seed=1)
    seen = []
    for _ in range(5):  # 5 batches x 2 tasks = one epoch of 10 tasks
        for group in next(stream):
            task = by_name[group.task]
            inputs = {i.input: i.outputs[0] for i in task.instances}
            assert all(inputs[prompt] == answer for prompt, answer in group.rows)
            assert group.task_text == format_task_text(task.definition, task.positive_examples[:2])
            assert group.alt_task_text is not None and group.alt_task_text != group.task_text
            assert task.definition in group.alt_task_text
            seen.append(group.task)
    assert sorted(seen) == sorted(by_name), "each task exactly once per epoch"


def test_causal_collation_scores_only_the_answer_and_its_end_token():
    tokenizer = byte_tokenizer()
    collate = Collator(tokenizer, is_encoder_decoder=False, chat_template=True)
    tasks = builtin_tasks(num_instances=4)[:2]
    batch = collate(next(instruction_groups(tasks, 2, 2, seed=0)))
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape
    assert batch.row_task.tolist() == [0, 0, 1, 1]
    for row in range(4):
        scored = batch.labels[row][batch.labels[row] != IGNORE].tolist()
        assert scored[-1] == tokenizer.eos_token_id
        answer = tokenizer.decode(scored[:-1])
        prompt = tokenizer.decode(
            batch.input_ids[row][batch.labels[row] == IGNORE][
                batch.attention_mask[row][batch.labels[row] == IGNORE] == 1
            ]
        )
        assert prompt.startswith("<|im_start|>user\n") and prompt.endswith(
            "<|im_start|>assistant\n"
        )
        assert answer and answer not in ("", prompt)


def test_seq2seq_collation_puts_the_answer_in_the_labels():
    _, tokenizer = build_tiny_t5()
    collate = Collator(tokenizer, is_encoder_decoder=True)
    tasks = builtin_tasks(num_instances=4)[:1]
    groups = next(instruction_groups(tasks, 1, 2, seed=0))
    batch = collate(groups)
    first_answer = groups[0].rows[0][1]
    labels = batch.labels[0][batch.labels[0] != IGNORE].tolist()
    assert tokenizer.decode(labels[:-1]) == first_answer and labels[-1] == tokenizer.eos_token_id
    assert (
        tokenizer.decode(batch.input_ids[0][batch.attention_mask[0] == 1]) == groups[0].rows[0][0]
    )
