"""Ingest keeps going while questions are answered; several questions in flight; cancel stops one."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from sources.file import FileSource
from sources.frame import Frame
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import AnswerConfig
from streamer.query import Answer

QUESTION = "What is on screen?"


@pytest.fixture(scope="module")
def frames(bikes_clip: Path) -> list[Frame]:
    async def read() -> list[Frame]:
        source = FileSource(bikes_clip, fps=2.0)
        try:
            return [await source.recv() for _ in range(14)]
        finally:
            source.close()

    return asyncio.run(read())


def test_frames_are_ingested_while_an_answer_is_open(embedded_adapter: EmbeddedAdapter, frames: list[Frame]) -> None:
    engine = Engine(embedded_adapter, EngineConfig(answer=AnswerConfig(max_new_tokens=16)))
    engine.add_stream("cam")
    for frame in frames[:6]:
        engine.push_frame("cam", frame)
    memory = engine.memory("cam")
    pushed = threading.Event()

    def ingest() -> None:
        for frame in frames[6:]:
            engine.push_frame("cam", frame)
            pushed.set()

    worker = threading.Thread(target=ingest)
    seen_during_answer: list[int] = []

    def on_delta(_: str) -> None:
        if not worker.is_alive() and not seen_during_answer:
            worker.start()
            assert pushed.wait(timeout=60), "a frame must be ingested while the answer is still open"
            seen_during_answer.append(len(memory.records))

    answer = engine.ask("cam", QUESTION).result(on_delta)
    worker.join(timeout=120)
    assert seen_during_answer and seen_during_answer[0] > 6
    assert answer.as_of == frames[5].stream_time, "the answer reads the memory as of the question"
    assert len(memory.records) == len(frames)


def test_several_questions_in_flight_and_cancel(embedded_adapter: EmbeddedAdapter, frames: list[Frame]) -> None:
    engine = Engine(embedded_adapter, EngineConfig(answer=AnswerConfig(max_new_tokens=24)))
    engine.add_stream("cam")
    for frame in frames[:8]:
        engine.push_frame("cam", frame)
    answers: dict[str, Answer] = {}
    cancel = threading.Event()

    def ask(name: str, question: str, stop: threading.Event | None) -> None:
        def on_delta(_: str) -> None:
            if stop is not None:
                stop.set()  # cancel as soon as the first piece arrives

        answers[name] = engine.ask("cam", question, cancel=stop).result(on_delta)

    threads = [
        threading.Thread(target=ask, args=("plain", QUESTION, None)),
        threading.Thread(target=ask, args=("other", "What colours are there?", None)),
        threading.Thread(target=ask, args=("cancelled", QUESTION, cancel)),
    ]
    for thread in threads:
        thread.start()
    for frame in frames[8:]:
        engine.push_frame("cam", frame)
    for thread in threads:
        thread.join(timeout=180)
    assert set(answers) == {"plain", "other", "cancelled"}
    assert answers["plain"].text and answers["other"].text
    assert answers["cancelled"].cancelled and answers["cancelled"].tokens == 1
    assert not answers["plain"].cancelled
