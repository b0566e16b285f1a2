"""Reading what a question asks from its wording."""

from __future__ import annotations

from streamer.funnel import normal_words
from streamer.intent import options_prompt, read_intent


def test_named_times_and_text() -> None:
    intent = read_intent("What word was written on the sign shown at 05:12?")
    assert intent.times == (312.0,)
    assert intent.text and intent.recency is None and not intent.count


def test_recency() -> None:
    assert read_intent("What did the most recent sign say?").recency == "latest"
    assert read_intent("What was in the last photo?").recency == "latest"
    assert read_intent("What was the first word shown?").recency == "earliest"
    assert read_intent("What animal appeared on screen?").recency is None
    # unqualified written text is the last shown; with a time, or now, it is that time's
    assert read_intent("What word was written on the sign?").recency == "latest"
    assert read_intent("What did the sign at 01:10 say?").recency is None
    assert read_intent("What does the sign say right now?").now


def test_order_is_not_recency() -> None:
    intent = read_intent("Which was shown first: the red triangle or the sign saying FALCON?")
    assert intent.order and intent.recency is None
    assert set(normal_words("red triangle falcon")) <= intent.words


def test_count_and_now() -> None:
    count = read_intent("How many times was the sign saying KESTREL shown?")
    assert count.count and normal_words("kestrel")[0] in count.words and "time" not in count.words
    assert read_intent("What is on screen right now?").now
    assert not read_intent("What did the sign say?").now


def test_options_are_not_part_of_the_intent() -> None:
    prompt = options_prompt("What colour was the shape?", ["red", "the most recent one"])
    assert prompt.splitlines()[1:4] == ["Options:", "A. red", "B. the most recent one"]
    assert read_intent(prompt).recency is None
