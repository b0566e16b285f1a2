"""The event timeline: showings bounded by fully described frames, counted when they come back."""

from __future__ import annotations

from memory.events import EventTimeline

SIGN = ("text", "Kestrel")
CAT = ("object", "cat")


def test_a_sign_shown_twice_is_two_showings() -> None:
    timeline = EventTimeline(rejoin_s=6)
    timeline.observe(0, 10.0, [SIGN], full=True)
    timeline.observe(1, 11.0, [], full=False)  # a terse frame reads no text: it says nothing
    timeline.observe(2, 12.0, [SIGN], full=True)
    timeline.observe(3, 14.0, [], full=True)  # fully described without it: the showing ended
    timeline.observe(4, 90.0, [SIGN], full=True)
    (item,) = timeline.view(upto=100.0)
    assert [(s.first, s.last) for s in item.showings] == [(10.0, 12.0), (90.0, 90.0)]
    assert item.showings[0].frame_ids == [0, 2]


def test_a_flicker_within_rejoin_continues_the_showing() -> None:
    timeline = EventTimeline(rejoin_s=6)
    timeline.observe(0, 0.0, [CAT], full=True)
    timeline.observe(1, 1.0, [], full=True)  # the detector missed it once
    timeline.observe(2, 2.0, [CAT], full=True)
    assert len(timeline.view(10.0)[0].showings) == 1


def test_silence_of_terse_frames_does_not_end_a_showing() -> None:
    timeline = EventTimeline(rejoin_s=6)
    timeline.observe(0, 0.0, [CAT], full=True)
    for second in range(1, 30):
        timeline.observe(second, float(second), [], full=False)
    timeline.observe(30, 30.0, [CAT], full=True)
    assert len(timeline.view(40.0)[0].showings) == 1


def test_view_is_a_copy_as_of_a_time() -> None:
    timeline = EventTimeline()
    timeline.observe(0, 5.0, [SIGN], full=True)
    timeline.observe(1, 50.0, [CAT], full=True)
    early = timeline.view(upto=10.0)
    assert [item.name for item in early] == ["Kestrel"]
    timeline.observe(2, 51.0, [SIGN], full=True)
    assert early[0].showings[-1].last == 5.0


def test_view_orders_items_by_first_showing_then_kind_and_name_and_keeps_later_frames_out() -> None:
    timeline = EventTimeline(rejoin_s=1)
    timeline.observe(0, 1.0, [("scene", "street"), CAT, ("text", "EXIT")], full=True)
    timeline.observe(1, 2.0, [("colour", "red"), SIGN], full=True)
    timeline.observe(2, 3.0, [], full=True)
    timeline.observe(3, 9.0, [CAT], full=True)
    taken = timeline.view(upto=9.0)
    assert [(item.kind, item.name) for item in taken] == [
        CAT,
        ("scene", "street"),
        ("text", "EXIT"),
        ("colour", "red"),
        SIGN,
    ]
    cat = taken[0]
    assert [(s.first, s.last, s.frame_ids, s.ended) for s in cat.showings] == [
        (1.0, 1.0, [0], True),
        (9.0, 9.0, [3], False),
    ]
    timeline.observe(4, 10.0, [CAT], full=True)  # the open showing goes on after the view was taken
    assert cat.showings[-1].last == 9.0 and cat.showings[-1].frame_ids == [3]
    assert [len(item.showings) for item in timeline.view(upto=5.0)] == [1, 1, 1, 1, 1]
