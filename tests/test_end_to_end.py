"""End to end on real footage: a sign shown once is still answerable a minute after it is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sources.file import FileSource
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine
from streamer.needles import Needle, Question, build_stream
from streamer.replay import Replay, load_questions

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("word", ["KESTREL", "LANTERN"])
def test_sign_word_is_recalled_a_minute_later(embedded_adapter: EmbeddedAdapter, tmp_path: Path, word: str) -> None:
    needle = Needle("sign", 20.0, 24.0, word)
    asked = Question("sign", 86.0, "What word was written on the sign?", word)
    stream = build_stream(tmp_path / "needle.mp4", [needle], [asked], duration=90.0, fps=5.0, seed=3)
    questions = load_questions(stream.questions_path)
    replay = Replay(Engine(embedded_adapter), FileSource(stream.video, fps=1.0), questions)
    [result] = asyncio.run(replay.run())
    assert word.lower() in result.answer.lower(), result.answer
    assert result.correct
    assert any(t0 <= needle.end and t1 >= needle.start for t0, t1 in result.evidence), result.evidence
    summary = replay.summary([result])
    assert summary.frames_ingested == 90
    assert summary.resident_tokens <= summary.budget_tokens
