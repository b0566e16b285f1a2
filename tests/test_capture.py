"""The capture thread and its one-frame slot: a consumer that stalls gets the newest frame, not a backlog; every
decoded picture is counted and every overwritten one counted as dropped; the end and a decoder failure finish
the thread and close the reader."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from sources.capture import CaptureThread, LatestFrameSlot, Picture


@dataclass
class Counters:
    frames_decoded: int = 0
    frames_dropped: int = 0


class Decoder:
    """Gives `count` pictures, numbered in their first pixel, `interval` seconds apart; then the end or `fail`."""

    def __init__(self, count: int, interval: float = 0.0, fail: Exception | None = None) -> None:
        self.count, self.interval, self.fail = count, interval, fail
        self.given = 0
        self.closed = threading.Event()

    def read(self) -> Picture | None:
        if self.given == self.count:
            if self.fail is not None:
                raise self.fail
            return None
        time.sleep(self.interval)
        number = self.given
        self.given += 1
        return lambda: np.full((2, 2, 3), number, np.uint8)

    def close(self) -> None:
        self.closed.set()


def _wait(condition: threading.Event | CaptureThread, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    done = condition.is_set if isinstance(condition, threading.Event) else (lambda: condition.finished)
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_stalled_consumer_gets_the_newest_frame_and_the_rest_count_as_dropped() -> None:
    counters = Counters()
    slot = LatestFrameSlot(counters)
    decoder = Decoder(count=20)
    thread = CaptureThread(decoder, slot, "test").start()
    _wait(thread)  # the consumer was away the whole time
    taken = asyncio.run(slot.take())
    assert int(taken.picture()[0, 0, 0]) == 19, "the newest, not the oldest waiting"
    assert counters.frames_decoded == 20 and counters.frames_dropped == 19
    assert decoder.closed.is_set() and thread.error is None


def test_a_waiting_consumer_is_woken_by_the_next_frame() -> None:
    counters = Counters()
    slot = LatestFrameSlot(counters)

    async def consume() -> list[int]:
        thread = CaptureThread(Decoder(count=3, interval=0.05), slot, "test").start()
        numbers = [int((await slot.take()).picture()[0, 0, 0]) for _ in range(3)]
        thread.stop()
        return numbers

    assert asyncio.run(consume()) == [0, 1, 2] and counters.frames_dropped == 0


def test_a_decoder_failure_ends_the_capture_and_is_kept() -> None:
    decoder = Decoder(count=2, fail=ConnectionError("camera unplugged"))
    thread = CaptureThread(decoder, LatestFrameSlot(Counters()), "test").start()
    _wait(thread)
    assert isinstance(thread.error, ConnectionError) and decoder.closed.is_set()


def test_clearing_a_stale_frame_counts_it_as_dropped() -> None:
    counters = Counters()
    slot = LatestFrameSlot(counters)
    thread = CaptureThread(Decoder(count=1), slot, "test").start()
    _wait(thread)
    slot.clear()
    assert counters.frames_dropped == 1

    async def nothing_left() -> None:
        await asyncio.wait_for(slot.take(), 0.1)

    with pytest.raises(TimeoutError):
        asyncio.run(nothing_left())
