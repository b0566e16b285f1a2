"""Frames of several streams encoded as one batch, and the scheduler that picks each stream's newest frame."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from engine_probes import first_token_logits

from memory.records import FrameRecord
from sources.base import Source, SourceBase, SourceState
from sources.frame import Frame, SourceEnded
from sources.looping import LoopingFile
from sources.synthetic import SyntheticSource, render
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.batching import IngestScheduler
from streamer.engine import Engine
from streamer.ingest import StreamRunner


@pytest.fixture(scope="module")
def pictures(bikes_clip: Path) -> list[np.ndarray]:
    """Real frames of two sizes: the bikes clip (640x272) one second apart, and synthetic ones (320x240)."""
    capture = cv2.VideoCapture(str(bikes_clip))
    clip = []
    for index in range(100):
        ok, pixels = capture.read()
        assert ok
        if index % 25 == 0:
            clip.append(pixels)
    capture.release()
    synthetic = [render(pattern, 30, 15.0, 320, 240) for pattern in ("ball", "bars", "checkers")]
    return [clip[0], synthetic[0], clip[1], synthetic[1], clip[2], synthetic[2], clip[3]]


@pytest.fixture
def encoder() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
    yield executor
    executor.shutdown()


def frame(pixels: np.ndarray, sequence: int, fps: float = 15.0) -> Frame:
    return Frame(pixels, sequence / fps, time.time(), sequence)


def test_batched_features_equal_per_frame_features(
    embedded_adapter: EmbeddedAdapter, pictures: list[np.ndarray]
) -> None:
    extractor = embedded_adapter.describer.extractor
    batched = extractor.extract_batch(pictures)
    for pixels, together in zip(pictures, batched, strict=True):
        alone = extractor.extract(pixels)
        np.testing.assert_allclose(together.features, alone.features, atol=1e-5)
        assert [name for name, _ in together.labels] == [name for name, _ in alone.labels]
        np.testing.assert_allclose([p for _, p in together.labels], [p for _, p in alone.labels], atol=1e-5)


def test_batched_detections_equal_per_frame_detections(
    embedded_adapter: EmbeddedAdapter, pictures: list[np.ndarray]
) -> None:
    detector = embedded_adapter.describer.detector
    batched = detector.detect_batch(pictures)
    assert any(batched), "the clip frames show objects"
    for pixels, together in zip(pictures, batched, strict=True):
        alone = detector.detect(pixels)
        assert [(o.name, o.count) for o in together] == [(o.name, o.count) for o in alone]
        np.testing.assert_allclose([o.score for o in together], [o.score for o in alone], atol=1e-4)


def test_a_batched_look_then_finish_matches_describing_alone(
    embedded_adapter: EmbeddedAdapter, pictures: list[np.ndarray]
) -> None:
    describer = embedded_adapter.describer
    looks = describer.look_batch(pictures, batched={"features", "detector"})
    assert [look.features.shape for look in looks] == [(1280,)] * len(pictures)
    assert all(not look.objects and not look.text for look in looks), "the look runs the classifier only"
    details = ["full" if index % 2 == 0 else "terse" for index in range(len(pictures))]
    together = describer.finish_batch(pictures, looks, details, batched={"features", "detector"})
    for pixels, detail, description in zip(pictures, details, together, strict=True):
        alone = describer.describe(pixels, detail)
        assert description.detail == alone.detail == detail
        assert description.render(description.detail) == alone.render(alone.detail)
        assert set(description.timings_ms) == set(alone.timings_ms)
    with pytest.raises(ValueError, match="Cannot batch ocr"):
        describer.describe_batch(pictures[:1], ["full"], batched={"ocr"})


def test_push_frames_stores_what_push_frame_stores(
    embedded_adapter: EmbeddedAdapter, pictures: list[np.ndarray]
) -> None:
    one_by_one, batched = Engine(embedded_adapter), Engine(embedded_adapter)
    names = ["a", "b", "c"]
    for engine in (one_by_one, batched):
        for name in names:
            engine.add_stream(name)
    rounds = [[frame(pictures[(r + i) % len(pictures)], r) for i in range(len(names))] for r in range(3)]
    for frames in rounds:
        for name, each in zip(names, frames, strict=True):
            one_by_one.push_frame(name, each)
        batched.push_frames(list(zip(names, frames, strict=True)))
    for name in names:
        alone, together = one_by_one.memory(name).records, batched.memory(name).records
        assert [(r.sequence, r.text, r.tokens, r.tier) for r in together] == [
            (r.sequence, r.text, r.tokens, r.tier) for r in alone
        ]
        for a, t in zip(alone, together, strict=True):
            assert a.text_vector is not None and t.text_vector is not None
            np.testing.assert_allclose(t.text_vector, a.text_vector, atol=1e-4)
        assert batched.memory(name).cache.length == one_by_one.memory(name).cache.length
    question = "What is in the video?"
    for name in names:
        np.testing.assert_allclose(
            first_token_logits(batched, name, question).numpy(),
            first_token_logits(one_by_one, name, question).numpy(),
            atol=1e-4,
            err_msg=f"stream {name}: the same frames give the same context",
        )


def test_scheduler_takes_the_newest_frame_and_counts_the_dropped_ones(
    embedded_adapter: EmbeddedAdapter, pictures: list[np.ndarray], encoder: ThreadPoolExecutor
) -> None:
    async def scenario() -> None:
        engine = Engine(embedded_adapter)
        scheduler = IngestScheduler(engine, encoder, max_batch=2)
        served: list[tuple[str, int]] = []

        def serve(name: str) -> Callable[[Frame, FrameRecord], None]:
            return lambda each, _record: served.append((name, each.sequence))

        def never(error: Exception) -> None:
            raise AssertionError(f"no frame should fail: {error}")

        names = ("a", "b", "c")
        for name in names:
            engine.add_stream(name)
            scheduler.attach(name, serve(name), never)
        # Five frames of "a" arrive before the encoder gets to run: only the newest is encoded.
        dropped = [scheduler.offer("a", frame(pictures[i], i)) for i in range(5)]
        assert dropped == [False, True, True, True, True]
        scheduler.offer("b", frame(pictures[5], 0))
        scheduler.offer("c", frame(pictures[6], 0))
        for name in names:
            await scheduler.flush(name)
        assert served == [("a", 4), ("b", 0), ("c", 0)]
        assert (scheduler.batches, scheduler.frames_encoded) == (2, 3), "at most max_batch frames a batch"
        assert [r.sequence for r in engine.memory("a").records] == [4]
        scheduler.offer("a", frame(pictures[0], 5))
        await scheduler.flush("a")
        # Now "b" and "c" were served longest ago: they go first when all three are waiting.
        served.clear()
        for name in names:
            scheduler.offer(name, frame(pictures[1], 6))
        for name in names:
            await scheduler.flush(name)
        assert served == [("b", 6), ("c", 6), ("a", 6)]
        for name in names:
            await scheduler.detach(name)
        assert scheduler.streams == []

    asyncio.run(scenario())


def test_fps_caps_how_often_a_stream_is_served(
    embedded_adapter: EmbeddedAdapter, pictures: list[np.ndarray], encoder: ThreadPoolExecutor
) -> None:
    async def scenario() -> None:
        engine = Engine(embedded_adapter)
        scheduler = IngestScheduler(engine, encoder)
        engine.add_stream("cam")
        served: list[float] = []
        failures: list[Exception] = []
        scheduler.attach("cam", lambda _frame, _record: served.append(time.monotonic()), failures.append, fps=1.0)
        offered = dropped = 0
        started = time.monotonic()
        while time.monotonic() - started < 3.0:
            dropped += scheduler.offer("cam", frame(pictures[offered % len(pictures)], offered))
            offered += 1
            await asyncio.sleep(0.02)
        await scheduler.flush("cam")
        await scheduler.detach("cam")
        assert not failures
        # Taken at 0, 1, 2 and 3 s at the most (the last when offers stopped), each the newest offered.
        assert 2 <= len(served) <= 4, served
        assert offered == dropped + len(served) == dropped + len(engine.memory("cam").records)

    asyncio.run(scenario())


def test_a_frame_that_fails_to_encode_stops_only_its_stream(
    embedded_adapter: EmbeddedAdapter, pictures: list[np.ndarray], encoder: ThreadPoolExecutor
) -> None:
    async def scenario() -> None:
        engine = Engine(embedded_adapter)
        scheduler = IngestScheduler(engine, encoder)
        ingested: list[FrameRecord] = []
        failures: list[Exception] = []
        for name in ("good", "bad"):
            engine.add_stream(name)
            scheduler.attach(name, lambda _frame, record: ingested.append(record), failures.append)
        scheduler.offer("good", frame(pictures[0], 0))
        # Grey pixels without colour channels: the classifier cannot read them.
        scheduler.offer("bad", frame(cv2.cvtColor(pictures[1], cv2.COLOR_BGR2GRAY), 0))
        await scheduler.flush("good")
        await scheduler.flush("bad")
        assert [r.sequence for r in ingested] == [0] and len(engine.memory("good").records) == 1
        assert len(failures) == 1 and engine.memory("bad").records == []
        for name in ("good", "bad"):
            await scheduler.detach(name)

    asyncio.run(scenario())


class GreyCamera(SourceBase):
    """A camera whose frames come without colour channels, at 10 fps."""

    def __init__(self) -> None:
        super().__init__("grey camera")
        self.closed = False

    async def recv(self) -> Frame:
        await asyncio.sleep(0.1)
        if self.closed:
            raise SourceEnded("closed")
        self.set_state(SourceState.LIVE)
        self.frames_decoded += 1
        return self.delivered(Frame(np.zeros((240, 320), np.uint8), self.frames_decoded / 10, time.time(), 0))

    def close(self) -> None:
        self.closed = True


class TimedRunner(StreamRunner):
    """A runner that notes, for each frame it ingests, how long the frame waited before its batch began."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waits: list[float] = []

    def _ingested(self, frame: Frame, record: FrameRecord) -> None:
        assert self.scheduler is not None
        self.waits.append(time.time() - frame.capture_time - self.scheduler.last_batch_s)
        super()._ingested(frame, record)


def test_streams_ingest_through_one_scheduler_with_bounded_lag(
    embedded_adapter: EmbeddedAdapter, bikes_clip: Path, encoder: ThreadPoolExecutor
) -> None:
    """Four live streams (two of a real clip, two synthetic) and a broken camera share an encoder that
    takes two frames at a time: every frame reaches memory within about one frame interval plus the
    batch it was encoded in, never after waiting for the other streams' frames."""

    async def scenario() -> None:
        engine = Engine(embedded_adapter)
        scheduler = IngestScheduler(engine, encoder, max_batch=2)
        sources: dict[str, Source] = {
            # The clip lasts 10 s: looping, it never ends while the test waits (the last frame of a source
            # that ends has no newer frame to replace it, so it waits its turn however old it gets).
            "clip-1": LoopingFile(bikes_clip, 25.0),
            "ball": SyntheticSource("ball", fps=15.0),
            "clip-2": LoopingFile(bikes_clip, 25.0),
            "bars": SyntheticSource("bars", fps=15.0),
        }
        runners = {name: TimedRunner(engine, name, source, scheduler=scheduler) for name, source in sources.items()}
        broken = StreamRunner(engine, "grey", GreyCamera(), scheduler=scheduler)
        everyone = (*runners.values(), broken)
        for runner in everyone:
            runner.start()
        try:
            await until(lambda: all(r.frames_ingested >= 1 for r in runners.values()), 120, "a frame per stream")
            # From here on the encoder only runs batches: no stream's sink prefill is queued before one.
            for runner in runners.values():
                runner.waits.clear()
            counted = {name: runner.frames_ingested for name, runner in runners.items()}
            await until(
                lambda: all(r.frames_ingested >= counted[n] + 3 for n, r in runners.items()), 120, "three more each"
            )
            assert broken.error is not None and broken.error.startswith("ingest stopped: error:"), broken.error
            assert broken.status().source.state == SourceState.FAILED
        finally:
            await asyncio.gather(*(runner.stop() for runner in everyone))
        assert scheduler.streams == []
        assert scheduler.frames_encoded <= 2 * scheduler.batches
        waits = [wait for runner in runners.values() for wait in runner.waits]
        # A frame interval, plus slack for the event loop handing frames over on a busy 2-core machine;
        # a frame held while the other streams are encoded would wait at least a whole batch.
        assert max(waits) < 1 / 15 + 0.3, sorted(waits)[-5:]
        for name, runner in runners.items():
            records = engine.memory(name).records
            assert len(records) == runner.frames_ingested
            assert [r.sequence for r in records] == sorted({r.sequence for r in records}), "frame order, no repeats"
            status = runner.status()
            assert status.error is None
            assert status.frames_stale > 0, "live frames outpace the encoder; the stale ones are dropped"
            assert status.source.frames_dropped >= status.frames_stale
        assert engine.memory("grey").records == []

    asyncio.run(scenario())


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_a_source_that_ends_leaves_its_last_frame_in_memory(embedded_adapter: EmbeddedAdapter) -> None:
    async def scenario() -> None:
        engine = Engine(embedded_adapter)
        source = SyntheticSource("checkers", fps=15.0, duration_s=1.0)
        runner = StreamRunner(engine, "short", source)
        await asyncio.wait_for(runner.run(), 60)
        records = engine.memory("short").records
        assert records and records[-1].sequence == source.frames_delivered - 1
        assert runner.frames_ingested == len(records)
        assert runner.frames_ingested + runner.frames_stale == source.frames_delivered

    asyncio.run(scenario())
