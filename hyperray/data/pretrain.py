"""Hypernetwork pretraining data from plain text, as in HyperTuning (Phang et al., 2023).

Before it sees instructions, the hypernetwork learns to turn *any* text into a useful adapter: a
passage is cut into contiguous word segments, the hypernetwork reads some of them (the "task
text") and the LoRA-adapted target model must continue others.

    abcd:  passage = A | B | C | D   hypernetwork reads "A ... D", model reads B, predicts C
    abc:   passage = A | B | C       hypernetwork reads A,         model reads B, predicts C

In abcd the hypernetwork sees text on both sides of the gap, so the adapter must carry what the
model needs to bridge B to D; in abc it sees only what came before.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hyperray.data.tasks import Task

OBJECTIVES = ("abcd", "abc", "mixed")
GAP = " ... "
_MIN_WORDS = {"abcd": 8, "abc": 6}


@dataclass(frozen=True)
class PretrainExample:
    context: str
    prompt: str
    completion: str


def _segments(text: str, parts: int, rng: random.Random, min_words: int, name: str) -> list[str]:
    """`parts` contiguous, non-empty word segments with uniformly drawn cut points."""
    words = text.split()
    needed = max(min_words, parts)
    if len(words) < needed:
        raise ValueError(
            f"{name} needs a passage of at least min_words={needed} words, got {len(words)}; "
            "drop short passages or lower min_words"
        )
    cuts = sorted(rng.sample(range(1, len(words)), parts - 1))
    bounds = [0, *cuts, len(words)]
    return [" ".join(words[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def split_abcd(text: str, rng: random.Random, min_words: int = 8) -> PretrainExample:
    """A|B|C|D: the hypernetwork reads `A ... D`, the model reads B and predicts C."""
    a, b, c, d = _segments(text, 4, rng, min_words, "split_abcd")
    return PretrainExample(context=f"{a}{GAP}{d}", prompt=b, completion=c)


def split_abc(text: str, rng: random.Random, min_words: int = 6) -> PretrainExample:
    """A|B|C: the hypernetwork reads A, the model reads B and predicts C."""
    a, b, c = _segments(text, 3, rng, min_words, "split_abc")
    return PretrainExample(context=a, prompt=b, completion=c)


def _chunk(paragraphs: list[list[str]], max_words: int) -> list[str]:
    """Greedily merges consecutive paragraphs up to max_words; a longer paragraph is cut."""
    passages: list[str] = []
    current: list[str] = []
    for words in paragraphs:
        if current and len(current) + len(words) > max_words:
            passages.append(" ".join(current))
            current = []
        for start in range(0, len(words), max_words):
            piece = words[start : start + max_words]
            if len(piece) == max_words:
                passages.append(" ".join(piece))
            else:
                current.extend(piece)
    if current:
        passages.append(" ".join(current))
    return passages


def load_text_passages(source: str | Path, max_words: int = 256) -> list[str]:
    """Passages of at most `max_words` words from a .txt file or a folder of them (recursively).

    Files are split on blank lines into paragraphs, which are merged within a file, never across
    files; whitespace inside a passage becomes single spaces.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    source = Path(source)
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = sorted(source.rglob("*.txt"))
    else:
        raise FileNotFoundError(f"text source {source} does not exist; pass a .txt file or folder")
    if not files:
        raise FileNotFoundError(f"no .txt files under {source}; put plain-text files there")
    passages = []
    for path in files:
        blocks = path.read_text(encoding="utf-8", errors="replace").split("\n\n")
        paragraphs = [words for block in blocks if (words := block.split())]
        passages.extend(_chunk(paragraphs, max_words))
    return passages


def passages_from_tasks(tasks: Sequence[Task]) -> list[str]:
    """Each instance's input followed by its first reference output, as one passage."""
    passages = []
    for task in tasks:
        for instance in task.instances:
            text = f"{instance.input.strip()} {instance.outputs[0].strip()}".strip()
            if text:
                passages.append(text)
    return passages


def build_pretrain_tasks(
    passages: Sequence[str], objective: str = "abcd", seed: int = 0, per_passage: int = 1
) -> list[PretrainExample]:
    """`per_passage` seeded splits of every passage long enough for the objective.

    "mixed" picks abcd or abc per split, among those the passage is long enough for.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown pretraining objective {objective!r}; valid: {list(OBJECTIVES)}")
    if per_passage < 1:
        raise ValueError(f"per_passage must be at least 1, got {per_passage}")
    splitters = {"abcd": split_abcd, "abc": split_abc}
    rng = random.Random(seed)
    examples = []
    for passage in passages:
        n_words = len(passage.split())
        fitting = [o for o in ("abcd", "abc") if n_words >= _MIN_WORDS[o]]
        if objective != "mixed":
            fitting = [o for o in fitting if o == objective]
        for _ in range(per_passage if fitting else 0):
            chosen = rng.choice(fitting)
            examples.append(splitters[chosen](passage, rng, _MIN_WORDS[chosen]))
    return examples
