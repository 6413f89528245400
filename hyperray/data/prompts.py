"""The text of a task as people and models read it: SNI's "Definition + k positive examples".

The hypernetwork reads `format_task_text` (Def+2Pos when given the first two examples); the target
model reads `format_instance`, optionally with the definition in front, or, as the in-context
baseline, `format_in_context` (the whole task text, then the input). Chat templating happens where
the tokenizer is loaded, not here.
"""

from __future__ import annotations

from collections.abc import Sequence

from hyperray.data.tasks import Example


def format_task_text(definition: str, examples: Sequence[Example]) -> str:
    """`Definition: ...` then `Positive Example i -` blocks, separated by blank lines."""
    blocks = [f"Definition: {definition.strip()}"]
    for i, example in enumerate(examples, start=1):
        blocks.append(
            f"Positive Example {i} -\n"
            f"Input: {example.input.strip()}\n"
            f"Output: {example.output.strip()}"
        )
    return "\n\n".join(blocks)


def format_instance(input: str, definition: str | None = None) -> str:
    """The instance input, after `Definition: ...` and a blank line when a definition is given."""
    if definition is None:
        return input.strip()
    return f"Definition: {definition.strip()}\n\n{input.strip()}"


def format_in_context(definition: str, examples: Sequence[Example], input: str) -> str:
    """SNI's in-context Def+kPos prompt: the task text, then the instance to complete."""
    return (
        f"{format_task_text(definition, examples)}\n\n"
        f"Now complete the following example -\nInput: {input.strip()}\nOutput:"
    )
