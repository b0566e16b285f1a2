"""The funnel's word matching and steps."""

from __future__ import annotations

import pytest

from streamer.funnel import FunnelRow, mentions, normal_words, rates, seen_phrases, shows_all


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('text: "Gate 7 Cl0Sed"', "GATE 7 CLOSED"),  # OCR read a zero for an O
        ('text: "Kestrei"', "KESTREL"),  # and an i for an l
        ('text: "GATE42"', "GATE 42"),  # words run together
        ("objects: 2 bicycles", "bicycle"),  # plural
        ("scene: espresso; objects: cup", "coffee|espresso"),  # alternatives
        ('text: "Platform9departures"', "departures"),  # inside a merged word, five letters or more
    ],
)
def test_mentions_survives_ocr_and_plural_differences(text: str, phrase: str) -> None:
    assert mentions(text, phrase)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("scene: scattered leaves", "cat"),  # short words match whole words only
        ('text: "Gate 42"', "GATE 43"),
        ("colours: red, white", "blue|purple"),
    ],
)
def test_mentions_does_not_match_other_words(text: str, phrase: str) -> None:
    assert not mentions(text, phrase)


def test_normal_words_fold_look_alike_characters() -> None:
    assert normal_words("C10SED Signs") == normal_words("closed sign")


def test_every_phrase_must_be_shown_somewhere() -> None:
    texts = ['text: "Falcon"', "colours: purple, grey"]
    assert shows_all(texts, ["FALCON", "purple"])
    assert not shows_all(texts, ["FALCON", "red"])


def test_seen_phrases_prefer_the_question_files_then_the_right_option() -> None:
    assert seen_phrases("B", ["red", "blue"], None) == ["blue"]
    assert seen_phrases("blue", ["red", "blue"], None) == ["blue"]
    assert seen_phrases("3", ["1", "3"], ["KESTREL"]) == ["KESTREL"]
    assert seen_phrases("juniper", None, None) == ["juniper"]
    assert seen_phrases(None, None, None) == []


def test_lost_at_is_the_first_failed_step() -> None:
    assert FunnelRow(True, True, False, False).lost_at == "chosen"
    assert FunnelRow(False, False, False, False).lost_at == "perceived"
    assert FunnelRow(True, True, True, False).lost_at == "answered"
    assert FunnelRow(True, False, False, True).lost_at is None  # right anyway (a lucky option)
    shares = rates([FunnelRow(True, True, True, True), FunnelRow(True, False, False, False)])
    assert shares == {"perceived": 1.0, "kept": 0.5, "chosen": 0.5, "answered": 0.5}
