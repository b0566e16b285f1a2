"""Ingest keeps going while questions are answered; several questions in flight; cancel stops one."""

from __future__ import annotations

import asyncio
import threading
import time
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


def test_answers_decoded_together_equal_answers_alone(embedded_adapter: EmbeddedAdapter, frames: list[Frame]) -> None:
    """8 questions on 2 streams, asked at different stream times and started a little apart, so they join
    and leave the decoding batch at different steps: every answer is the one it gets alone (greedy, fp32)."""
    engine = Engine(embedded_adapter, EngineConfig(answer=AnswerConfig(max_new_tokens=20, grounded=False)))
    for stream_id in ("street", "corner"):
        engine.add_stream(stream_id)
    questions = [
        ("street", "What is on screen?"),
        ("corner", "What colours are there?"),
        ("street", "Is anyone riding a bike?"),
        ("corner", "Describe the scene in a few words."),
        ("street", "What vehicles are on the street?"),
        ("corner", "What is in the background?"),
        ("street", "What changed recently?"),
        ("corner", "Is it day or night?"),
    ]
    alone, together = [], []
    for index, (stream_id, question) in enumerate(questions):
        if index % 2 == 0:  # the streams move on between questions
            engine.push_frame("street", frames[index // 2 * 2])
            engine.push_frame("corner", frames[13 - index // 2 * 2])
        alone.append(engine.ask(stream_id, question))
        together.append(engine.ask(stream_id, question))
    solo = [handle.result() for handle in alone]
    scheduler = embedded_adapter.scheduler
    assert scheduler is not None
    steps, rows = scheduler.stats.steps, scheduler.stats.step_rows
    results: list[Answer | None] = [None] * len(together)

    def run(index: int) -> None:
        time.sleep(0.05 * index)
        results[index] = together[index].result()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(together))]
    for thread in threads:
        thread.start()
    for frame in frames[8:12]:  # ingest goes on meanwhile
        engine.push_frame("street", frame)
    for thread in threads:
        thread.join(timeout=300)
    mean_batch = (scheduler.stats.step_rows - rows) / (scheduler.stats.steps - steps)
    assert mean_batch >= 3, "the questions must be decoded together"
    for one, other in zip(solo, results, strict=True):
        assert other is not None and one.tokens > 1
        assert (other.text, other.tokens) == (one.text, one.tokens), one.question
