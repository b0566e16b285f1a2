"""Answers checked against what a question read: option support, timeline order, recency, counts, onsets."""

from __future__ import annotations

import numpy as np

from streamer.grounding import (
    choices_named,
    colours_appeared,
    count_answer,
    description_parts,
    lexical_support,
    on_screen,
    option_choice,
    option_support,
    texts_read,
    things_appeared,
    timeline_facts,
)
from streamer.intent import read_intent

LINES = [
    '"Kestrel" (text), shown 2 times: 00:10-00:12, 00:52-00:53',
    "cat (object), shown 1 time: 00:25-00:26",
    '"Falcon" (text), shown 1 time: 00:40-00:41',
    "purple (colour), shown 1 time: 03:14-03:18",
    "blue (colour), shown 3 times: 00:00-02:50, 03:00-03:30, 04:00",
]
FRAMES = ['[00:40] scene: street sign; text: "Falcon"; colours: white, black', "[00:41] colours: blue, grey"]


def test_timeline_lines_read_back_as_facts() -> None:
    kestrel, cat, *_ = timeline_facts(LINES + FRAMES)
    assert (kestrel.name, kestrel.kind, kestrel.count, kestrel.starts) == ("Kestrel", "text", 2, (10.0, 52.0))
    assert cat.starts == (25.0,) and len(timeline_facts(LINES)) == 5


def test_support_is_the_share_of_an_options_words_read_together() -> None:
    assert lexical_support("FALCON", FRAMES) == 1.0
    # "sign", "bus" and "69" are looked for ("the", "saying" only frame the option); "bus" is there
    assert abs(lexical_support("the sign saying BUS 69", ['text: "Bus 68"']) - 1 / 3) < 1e-9
    assert option_support(["ZEPHYR", "FALCON"], FRAMES, None) == [0.0, 1.0]


def test_support_falls_back_to_the_embedding_when_no_option_shares_a_word() -> None:
    def embed(texts: list[str]) -> np.ndarray:
        # a stand-in space: "bicycle" texts point one way, everything else another
        return np.asarray([[1.0, 0.0] if "bike" in text or "bicycle" in text else [0.0, 1.0] for text in texts])

    support = option_support(["a street with bicycles", "a rabbit"], ["scene: mountain bike"], embed)
    assert support[0] > support[1]


def test_order_and_recency_come_from_the_timeline() -> None:
    first = "Which was shown first: the sign saying FALCON or the photo of the cat?"
    options = ["the sign saying FALCON", "the photo of the cat"]
    assert option_choice(first, read_intent(first), options, LINES, None) == ([1], "timeline order")
    recent = "What did the most recent sign say?"
    assert option_choice(recent, read_intent(recent), ["FALCON", "KESTREL", "TUNDRA"], LINES, None) == (
        [1],
        "timeline recency",
    )
    assert choices_named(first) == options


def test_what_began_at_a_named_time_beats_what_was_already_there() -> None:
    question = "What colour was the shape drawn at 03:16?"
    intent = read_intent(question)
    assert option_choice(question, intent, ["blue", "purple", "red"], LINES, None) == ([1], "appeared then")
    assert colours_appeared(question, intent, timeline_facts(LINES), 3.0) == ["purple"]
    assert colours_appeared("What word was on the sign shown at 03:16?", intent, timeline_facts(LINES), 3.0) == []


def test_counts_and_text_read() -> None:
    question = "How many times was the sign saying KESTREL shown?"
    assert count_answer(read_intent(question), timeline_facts(LINES)) == "2 times"
    assert option_choice(question, read_intent(question), ["1", "2", "3"], LINES, None) == ([1], "timeline count")
    assert texts_read(FRAMES + LINES[:1]) == ["Falcon", "Kestrel"]


def test_unsupported_options_are_left_to_the_model() -> None:
    question = "What was in the photo shown at 09:00?"
    among, why = option_choice(question, read_intent(question), ["horse", "coffee"], FRAMES, None)
    assert among == [0, 1] and why == "no support"


def test_what_was_shown_at_a_time_is_what_began_then() -> None:
    lines = [*LINES, "Egyptian cat (scene), shown 1 time: 00:25-00:26", "person (object), shown 1 time: 00:00-01:00"]
    question = "What was in the photo shown at 00:25?"
    assert things_appeared(question, read_intent(question), timeline_facts(lines), 3.0) == ["cat", "Egyptian cat"]
    other = "How many times was the photo shown at 00:25?"
    assert things_appeared(other, read_intent(other), timeline_facts(lines), 3.0) == []


def test_what_is_on_screen_is_the_newest_frame_that_names_something() -> None:
    frames = [
        (41.0, "[00:41] scene: minibus; objects: person; colours: grey"),
        (43.0, "[00:43] scene: streetcar, trolleybus; objects: person, 2 bicycles; colours: grey"),
        (44.0, "[00:44] colours: grey, black"),  # newest, but names nothing
    ]
    assert on_screen(frames) == (43.0, "person, 2 bicycles; streetcar")
    assert on_screen([(44.0, "[00:44] colours: grey")]) is None
    assert description_parts('[00:09] text: "Dock 61"; colours: white')["text"] == '"Dock 61"'
