"""Pretraining passages and their A|B|C|D and A|B|C splits."""

from __future__ import annotations

import random

import pytest

from hyperray.data import (
    Example,
    Instance,
    Task,
    build_pretrain_tasks,
    load_text_passages,
    passages_from_tasks,
    split_abc,
    split_abcd,
)
from hyperray.data.pretrain import GAP

PASSAGE = " ".join(f"w{i}" for i in range(30))


@pytest.mark.parametrize("seed", range(20))
def test_split_abcd_segments_rebuild_the_passage(seed):
    example = split_abcd(PASSAGE, random.Random(seed))
    a, d = example.context.split(GAP)
    segments = [a, example.prompt, example.completion, d]
    assert all(s.strip() for s in segments)
    assert " ".join(segments).split() == PASSAGE.split()


@pytest.mark.parametrize("seed", range(20))
def test_split_abc_segments_rebuild_the_passage(seed):
    example = split_abc(PASSAGE, random.Random(seed))
    segments = [example.context, example.prompt, example.completion]
    assert all(s.strip() for s in segments)
    assert " ".join(segments).split() == PASSAGE.split()


def test_shortest_passage_still_splits():
    example = split_abcd("a b c d", random.Random(0), min_words=4)
    assert (example.context, example.prompt, example.completion) == (f"a{GAP}d", "b", "c")


def test_cut_points_vary_with_the_rng():
    completions = {split_abcd(PASSAGE, random.Random(s)).completion for s in range(10)}
    assert len(completions) > 1


def test_too_short_passages_raise_naming_min_words():
    with pytest.raises(ValueError, match="min_words=8"):
        split_abcd("one two three four five six seven", random.Random(0))
    with pytest.raises(ValueError, match="min_words=6"):
        split_abc("one two three four five", random.Random(0))


def test_build_pretrain_tasks_objectives():
    passages = [PASSAGE, "too short", " ".join(["x"] * 7)]
    abcd = build_pretrain_tasks(passages, "abcd", seed=0, per_passage=3)
    assert len(abcd) == 3 and all(GAP in e.context for e in abcd)
    abc = build_pretrain_tasks(passages, "abc", seed=0)
    assert len(abc) == 2 and all(GAP not in e.context for e in abc)
    mixed = build_pretrain_tasks([PASSAGE] * 40, "mixed", seed=0)
    assert {GAP in e.context for e in mixed} == {True, False}
    assert build_pretrain_tasks(passages, "abcd", seed=5) == build_pretrain_tasks(
        passages, "abcd", seed=5
    )


def test_unknown_objective_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'abcd', 'abc', 'mixed'"):
        build_pretrain_tasks([PASSAGE], objective="bert")


def test_load_text_passages_merges_paragraphs_and_caps_words(tmp_path):
    (tmp_path / "nested").mkdir()
    (tmp_path / "a.txt").write_text("one two\nthree\n\nfour five\n\n\n" + " ".join(["long"] * 7))
    (tmp_path / "nested" / "b.txt").write_text("six seven")
    (tmp_path / "ignored.md").write_text("not text")
    passages = load_text_passages(tmp_path, max_words=5)
    assert passages == [
        "one two three four five",
        "long long long long long",
        "long long",
        "six seven",
    ]
    assert all(len(p.split()) <= 5 for p in passages)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_text_passages(tmp_path / "missing")


def test_passages_from_tasks_uses_input_and_first_output():
    task = Task(
        "task1",
        "Answer.",
        (Example("q", "a"),),
        (Instance("1", "What is two plus two?", ("four", "4")), Instance("2", " Hi ", ("there",))),
    )
    assert passages_from_tasks([task]) == ["What is two plus two? four", "Hi there"]
