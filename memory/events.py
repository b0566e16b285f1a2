"""The long-term level of a stream's memory: a timeline of what was shown, when, and how many times.

Frames are the detailed level: each keeps a KV block while the budget allows. Above them, every thing a
frame's description names (text read, an object detected, a scene label, a colour) is an item of the
timeline, with each stretch of time it was on screen (a showing). A showing begins at a frame that names
the item and ends at the first frame that looked for it and did not find it: fully described frames
(the curvature peaks, where the video changed) look for everything; fuzzy frames are described tersely,
without OCR or the detector, so their silence about text and objects says nothing. An item named again
after its showing ended counts as coming back, a new showing, unless within `rejoin_s` of its last
sighting (detectors flicker).

Questions about order, recency and counts read the matching items as one short line each (see
`streamer.retrieval`). The timeline keeps a few numbers per showing, whatever happens to the frames' KV
blocks and records: once the memory compacts its oldest records away (`forget_frames`), their showings
keep their times and lose only their frame ids.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# What kind of thing an item is, as a frame description names it.
ITEM_KINDS = ("text", "object", "scene", "colour")
# What a terse description (a fuzzy frame's: no OCR, no detector) still names.
TERSE_KINDS = ("scene", "colour")


@dataclass
class Showing:
    """One stretch of time an item was on screen: first and last frame that named it."""

    first: float
    last: float
    frame_ids: list[int] = field(default_factory=list)
    ended: bool = False


@dataclass
class TimelineItem:
    """Something the stream showed (`kind` one of ITEM_KINDS, `name` as described) and every showing of it."""

    kind: str
    name: str
    showings: list[Showing] = field(default_factory=list)

    @property
    def first(self) -> float:
        return self.showings[0].first

    @property
    def last(self) -> float:
        return self.showings[-1].last


class EventTimeline:
    """Items and their showings, fed one frame at a time in stream order.

    rejoin_s: an item named again within this many seconds of its last sighting continues its showing.
    """

    def __init__(self, rejoin_s: float = 6.0) -> None:
        self.rejoin_s = rejoin_s
        # In order of first showing (then kind, then name): items are added as frames arrive in stream order.
        self.items: dict[tuple[str, str], TimelineItem] = {}
        self.open: set[tuple[str, str]] = set()  # items whose last showing has not ended
        self.lock = threading.Lock()

    def observe(self, frame_id: int, stream_time: float, items: Iterable[tuple[str, str]], full: bool) -> None:
        """Add one frame: the (kind, name) items its description names; `full` when it was fully described
        (a terse description looks only for TERSE_KINDS, so only those end a showing by their absence)."""
        named = sorted(set(items))
        looked_for = ITEM_KINDS if full else TERSE_KINDS
        with self.lock:
            for key in named:
                item = self.items.get(key)
                if item is None:
                    item = self.items[key] = TimelineItem(*key)
                showing = item.showings[-1] if item.showings else None
                if showing is None or (showing.ended and stream_time - showing.last > self.rejoin_s):
                    item.showings.append(Showing(stream_time, stream_time, [frame_id]))
                else:
                    showing.last, showing.ended = stream_time, False
                    showing.frame_ids.append(frame_id)
            gone = [key for key in self.open.difference(named) if key[0] in looked_for]
            for key in gone:
                self.items[key].showings[-1].ended = True
            self.open.difference_update(gone)
            self.open.update(named)

    def view(self, upto: float) -> list[TimelineItem]:
        """Every item's showings that began by stream time `upto`, ordered by first showing (then kind and
        name). Only an item's last showing still changes, so only that one is copied: the cost of a view
        grows with the number of items, not with the frames they were seen in."""
        with self.lock:
            copies = []
            for item in self.items.values():
                showings = item.showings
                count = len(showings)
                while count and showings[count - 1].first > upto:
                    count -= 1
                if not count:
                    continue
                kept = showings[: count - 1]
                last = showings[count - 1]
                kept.append(Showing(last.first, last.last, list(last.frame_ids), last.ended))
                copies.append(TimelineItem(item.kind, item.name, kept))
        return copies

    def __len__(self) -> int:
        return len(self.items)

    def forget_frames(self, first: int) -> None:
        """Drop the ids of frames before `first` from every showing (their records were compacted away);
        the showings stay. Changed showings are replaced, so a view copied earlier keeps its own."""
        with self.lock:
            for item in self.items.values():
                showings = item.showings
                for at, showing in enumerate(showings):
                    ids = showing.frame_ids
                    if not ids or ids[0] >= first:
                        if ids:
                            break  # later showings hold later frames
                        continue
                    kept = [i for i in ids if i >= first]
                    showings[at] = Showing(showing.first, showing.last, kept, showing.ended)

    def state(self) -> list[Any]:
        """The timeline as plain lists, for a snapshot: [rejoin_s, [kind, name, [[first, last, ended,
        frame_ids], ...]], ...]."""
        with self.lock:
            return [
                self.rejoin_s,
                [
                    [item.kind, item.name, [[s.first, s.last, s.ended, list(s.frame_ids)] for s in item.showings]]
                    for item in self.items.values()
                ],
            ]

    @classmethod
    def from_state(cls, state: Sequence[Any]) -> EventTimeline:
        """The timeline `state()` described."""
        rejoin_s, items = state
        timeline = cls(float(rejoin_s))
        for kind, name, showings in items:
            item = timeline.items[(kind, name)] = TimelineItem(kind, name)
            item.showings = [
                Showing(float(first), float(last), [int(i) for i in ids], bool(ended))
                for first, last, ended, ids in showings
            ]
            if item.showings and not item.showings[-1].ended:
                timeline.open.add((kind, name))
        return timeline


def since_time(items: Sequence[TimelineItem], since: float) -> tuple[TimelineItem, ...]:
    """`items` with only the showings that began at `since` or later (items left with none are dropped)."""
    kept = []
    for item in items:
        showings = [showing for showing in item.showings if showing.first >= since]
        if showings:
            kept.append(TimelineItem(item.kind, item.name, showings))
    return tuple(kept)
