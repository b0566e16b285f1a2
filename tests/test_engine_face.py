"""The engine's verbs and the plain data they return, with a tiny random Llama (seconds, no real weights): streams
added and removed (with their snapshot files), frames pushed, answers as handles that stream, cancel and close,
the engine's own ingest scheduler, and watches read by the model when frames carry no description."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from tiny_adapter import SyntheticFrames, synthetic_frame, tiny_model

from streamer.engine import Engine, EngineConfig, UnknownStream
from streamer.engine_config import SnapshotConfig
from streamer.engine_data import FrameInfo, StreamStatus
from streamer.watches import WatchSpec

QUESTION = "What was the ball doing?"


@pytest.fixture(scope="module")
def adapter() -> SyntheticFrames:
    return SyntheticFrames(tiny_model())


def _engine(adapter: SyntheticFrames, **memory: object) -> Engine:
    """An engine with a 512-token budget, answers of 4 tokens, and `memory` settings."""
    memory_settings = {"budget_tokens": 512, **memory}
    config = EngineConfig.model_validate({"memory": memory_settings, "answer": {"max_new_tokens": 4}})
    return Engine(adapter, config)


def test_streams_and_frames_come_back_as_plain_data(adapter: SyntheticFrames) -> None:
    engine = _engine(adapter)
    added = engine.add_stream("cam")
    assert isinstance(added, StreamStatus) and added.frames == 0 and added.resident_tokens > 0
    with pytest.raises(ValueError, match="already exists"):
        engine.add_stream("cam")
    infos = engine.push_frames([("cam", synthetic_frame(i)) for i in range(3)])
    assert [type(info) for info in infos] == [FrameInfo] * 3 and [info.t for info in infos] == [0.0, 1.0, 2.0]
    status = engine.status("cam")
    assert status.frames == 3 and status.as_of == 2.0 and sum(status.frames_by_place.values()) == 3
    assert status.frames_timed == 3 and set(status.ingest_ms_per_frame) >= {"prefill"}
    assert [info.sequence for info in engine.frames("cam", last=2)] == [1, 2]
    # Nothing in them refers into the engine: they survive a trip to another process.
    assert pickle.loads(pickle.dumps((status, infos))) == (status, infos)
    assert engine.stream_ids == ["cam"] and engine.has_stream("cam")
    assert engine.remove_stream("cam") and not engine.remove_stream("cam")
    with pytest.raises(UnknownStream):
        engine.status("cam")


def test_an_answer_is_a_handle_that_streams_then_gives_the_answer(adapter: SyntheticFrames) -> None:
    engine = _engine(adapter)
    engine.add_stream("cam")
    engine.push_frames([("cam", synthetic_frame(i)) for i in range(4)])
    handle = engine.ask("cam", QUESTION)
    assert handle.as_of == 3.0, "the view is taken when asked"
    engine.push_frame("cam", synthetic_frame(4))
    deltas = list(handle)
    answer = handle.result()
    assert answer.as_of == 3.0 and answer.tokens == 4 and deltas, "random bytes: the text itself means nothing"
    assert not engine.cancel(handle.answer_id), "a finished answer is no longer in flight"


def test_cancel_by_id_and_close_without_running(adapter: SyntheticFrames) -> None:
    engine = _engine(adapter)
    engine.add_stream("cam")
    engine.push_frames([("cam", synthetic_frame(i)) for i in range(4)])
    handle = engine.ask("cam", QUESTION)
    assert engine.cancel(handle.answer_id)
    answer = handle.result()
    assert answer.cancelled and answer.tokens == 1, "stopped after the first token, of 4"
    unused = engine.ask("cam", QUESTION)
    unused.close()
    assert not engine.cancel(unused.answer_id)
    with pytest.raises(RuntimeError, match="closed before it finished"):
        unused.result()
    # Closed views gave the cache's tail back: ingest appends in place again.
    engine.push_frame("cam", synthetic_frame(4))
    assert engine.status("cam").frames == 5


def test_remove_keeps_or_deletes_the_snapshot_file(adapter: SyntheticFrames, tmp_path: Path) -> None:
    engine = Engine(adapter, EngineConfig(snapshot=SnapshotConfig(dir=tmp_path, every_s=1000.0)))
    engine.add_stream("cam")
    engine.push_frames([("cam", synthetic_frame(i)) for i in range(3)])
    path = engine.snapshot_path("cam")
    assert path is not None
    engine.remove_stream("cam", keep_snapshot=True)
    assert path.is_file()
    assert engine.add_stream("cam").frames == 3, "restored from the file"
    engine.remove_stream("cam")
    assert not path.exists(), "a removed stream takes its snapshot with it"


def test_the_engine_owns_one_ingest_scheduler(adapter: SyntheticFrames) -> None:
    engine = _engine(adapter)
    assert engine.scheduler() is engine.scheduler()
    assert _engine(adapter).scheduler() is not engine.scheduler()


def test_without_descriptions_a_watch_asks_the_model_yes_or_no(adapter: SyntheticFrames) -> None:
    engine = _engine(adapter, policy="fifo")
    engine.add_stream("cam")
    engine.add_watch("cam", WatchSpec("tell me when the ball stops", on=0.99, off=0.01), "stops")
    engine.push_frames([("cam", synthetic_frame(i)) for i in range(6)])
    [info] = engine.watches("cam")
    assert info.checks == 6 and info.check_ms > 0, "fifo frames are all clear: every one is checked"
    assert info.spec.text == "tell me when the ball stops"
