"""Choosing what a question reads: adaptive keyframe sampling, timeline lines, items a text names."""

from __future__ import annotations

import logging
import random

import numpy as np

from memory.events import Showing, TimelineItem
from memory.frame_table import FrameTable
from streamer.funnel import normal_words
from streamer.grounding import timeline_facts
from streamer.retrieval import adaptive_keyframes, began_near, named_by, timeline_line


def test_frames_that_stand_out_are_read_together() -> None:
    scores = [0.0] * 20
    scores[7] = scores[8] = scores[9] = scores[10] = 5.0
    assert adaptive_keyframes(scores, 4) == [7, 8, 9, 10]


def test_when_nothing_stands_out_the_frames_spread_over_the_stream() -> None:
    scores = [0.1 * (i % 3) for i in range(40)]
    picked = adaptive_keyframes(scores, 4)
    assert len(picked) == 4 and picked == sorted(picked)
    assert [index // 10 for index in picked] == [0, 1, 2, 3], "one from each quarter"


def test_fewer_frames_than_asked_are_all_read() -> None:
    assert adaptive_keyframes([1.0, 2.0], 4) == [0, 1]


def _item(kind: str, name: str, *spans: tuple[float, float]) -> TimelineItem:
    return TimelineItem(kind, name, [Showing(first, last) for first, last in spans])


def test_timeline_lines_name_the_item_and_every_showing() -> None:
    assert timeline_line(_item("text", "Kestrel", (10, 12), (52, 52))) == (
        '"Kestrel" (text), shown 2 times: 00:10-00:12, 00:52'
    )
    assert timeline_line(_item("object", "cat", (3725, 3730))) == "cat (object), shown 1 time: 1:02:05-1:02:10"


def test_a_line_of_an_item_shown_hundreds_of_times_stays_short() -> None:
    """A long stream shows the same thing again and again: the line keeps the count, the first and last
    showings and those nearest a named time, and sums up the rest, so reading it costs the same each hour."""
    item = _item("object", "car", *((60.0 * i, 60.0 * i + 5) for i in range(500)))
    line = timeline_line(item, near=[3 * 3600 + 2])
    assert line.startswith("car (object), shown 500 times: 00:00-00:05, 01:00-01:05, 02:00-02:05, (176 more), ")
    assert "2:59:00-2:59:05, 3:00:00-3:00:05, 3:01:00-3:01:05, (316 more), 8:18:00-8:18:05, 8:19:00-8:19:05" in line
    assert len(line) < 200
    (fact,) = timeline_facts([line])
    assert fact.count == 500 and len(fact.spans) == 8 and fact.starts[0] == 0 and fact.starts[-1] == 499 * 60
    assert "more" not in timeline_line(_item("object", "car", *((60.0 * i, 60.0 * i) for i in range(5))))


def test_items_an_option_names_and_items_that_began_at_a_time() -> None:
    timeline = [
        _item("colour", "blue", (0, 300)),
        _item("colour", "purple", (194, 198)),
        _item("text", "Bus 69", (400, 403)),
        _item("scene", "street sign", (400, 403)),
    ]
    assert [item.name for item in named_by(timeline, "the sign saying BUS 69", 2)] == ["Bus 69"]
    assert [item.name for item in began_near(timeline, [196.0], 3.0)] == ["purple"]


def test_bm25_scores_equal_the_bm25s_librarys() -> None:
    """Over the frames asked about only: other frames of the table (here every other one, with words of
    their own) change neither the document frequencies nor the mean length."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    rng = random.Random(3)
    vocabulary = "street sign person car bicycle tree grey green white KESTREL Gate42 gate 42 exit cl0sed".split()
    for _ in range(30):
        texts = [" ".join(rng.choices(vocabulary, k=rng.randint(0, 9))) for _ in range(rng.randint(1, 40))]
        table = FrameTable()
        ids = []
        for text in texts:
            table.add(0.0, " ".join(rng.choices(vocabulary, k=rng.randint(0, 20))), False)
            ids.append(table.add(0.0, text, False))
        query = normal_words(" ".join(rng.sample(vocabulary, 3)))
        retriever = bm25s.BM25()
        retriever.index([normal_words(text) or ["\x00"] for text in texts], show_progress=False)
        expected = retriever.get_scores(list(dict.fromkeys(query)))
        np.testing.assert_allclose(table.bm25(np.asarray(ids), query), expected, rtol=1e-5, atol=1e-6)
