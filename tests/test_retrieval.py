"""Choosing what a question reads: adaptive keyframe sampling, timeline lines, items a text names."""

from __future__ import annotations

from memory.events import Showing, TimelineItem
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


def test_items_an_option_names_and_items_that_began_at_a_time() -> None:
    timeline = [
        _item("colour", "blue", (0, 300)),
        _item("colour", "purple", (194, 198)),
        _item("text", "Bus 69", (400, 403)),
        _item("scene", "street sign", (400, 403)),
    ]
    assert [item.name for item in named_by(timeline, "the sign saying BUS 69", 2)] == ["Bus 69"]
    assert [item.name for item in began_near(timeline, [196.0], 3.0)] == ["purple"]
