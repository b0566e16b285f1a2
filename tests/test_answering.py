"""The answer path on a scripted stream: what a question reads (intent, timeline, lexical retrieval) and how
it answers (options scored, free answers that cannot loop), with the real SmolLM2-135M.

The frames' descriptions are scripted (a stand-in for the vision models, which `test_vision.py` and the
end-to-end tests run for real) so each test knows exactly what was shown when.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from scripted import CAT, ScriptedDescriber, frame_at, sign

from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine, EngineConfig
from streamer.funnel import trace
from streamer.vision.describer import FrameDescription

# Second -> what the frame shows; footage elsewhere. KESTREL is shown twice, FALCON once, the cat once.
SCRIPT: dict[int, FrameDescription] = {
    **{t: sign("KESTREL") for t in (10, 11, 12)},
    **{t: CAT for t in (25, 26)},
    **{t: sign("FALCON") for t in (40, 41)},
    **{t: sign("KESTREL") for t in (52, 53)},
}
SECONDS = 70


@pytest.fixture(scope="module")
def scripted_adapter(embedded_adapter: EmbeddedAdapter) -> EmbeddedAdapter:
    a = embedded_adapter
    return EmbeddedAdapter(ScriptedDescriber(SCRIPT), a.tokenizer, a.model, a.name, a.embedder)


def _engine(adapter: EmbeddedAdapter, **sections: Any) -> Engine:
    """An engine (fifo memory, with `sections` as EngineConfig sections) that has read the whole script."""
    memory = {"policy": "fifo", **sections.pop("memory", {})}
    engine = Engine(adapter, EngineConfig.model_validate({"memory": memory, **sections}))
    engine.add_stream("cam")
    for second in range(SECONDS):
        engine.push_frame("cam", frame_at(second))
    return engine


@pytest.fixture(scope="module")
def engine(scripted_adapter: EmbeddedAdapter) -> Engine:
    return _engine(scripted_adapter, answer={"max_new_tokens": 24})


def _read(engine: Engine, question: str) -> tuple[list[float], list[str]]:
    snapshot = engine.memory("cam").view()
    try:
        reading = engine.choose(snapshot, question)
    finally:
        snapshot.close()
    return [b.record.stream_time for b in reading.blocks], reading.lines


def test_the_most_recent_sign_is_the_newest_showing_of_text(engine: Engine) -> None:
    times, _ = _read(engine, "What did the most recent sign say?")
    assert {52.0, 53.0} <= set(times) and not {40.0, 41.0, 10.0} & set(times)
    answer = engine.ask("cam", "What did the most recent sign say?").result()
    assert "kestrel" in answer.text.lower(), answer.text


def test_the_first_sign_is_the_oldest_showing(engine: Engine) -> None:
    times, _ = _read(engine, "What did the first sign say?")
    assert {10.0, 11.0, 12.0} <= set(times) and not {40.0, 52.0} & set(times)


def test_a_count_reads_the_timeline_line(engine: Engine) -> None:
    _, lines = _read(engine, "How many times was the sign saying KESTREL shown?")
    assert '"Kestrel" (text), shown 2 times: 00:10-00:12, 00:52-00:53' in lines


def test_which_came_first_reads_both_lines(engine: Engine) -> None:
    _, lines = _read(engine, "Which was shown first: the sign saying FALCON or the photo of the cat?")
    assert any(line.startswith('"Falcon"') for line in lines) and any(line.startswith("cat (object)") for line in lines)


def test_an_ocr_word_in_the_question_finds_its_frames_lexically(scripted_adapter: EmbeddedAdapter) -> None:
    engine = _engine(scripted_adapter, retrieval={"read_intent": False, "top_k": 2})
    times, _ = _read(engine, "Was FALCON ever written anywhere?")
    assert {40.0, 41.0} <= set(times)


def test_multiple_choice_names_exactly_one_option(engine: Engine) -> None:
    options = ["FALCON", "KESTREL", "ZEPHYR", "TUNDRA"]
    prompt = "What word was written on the sign shown at 00:11?\nOptions:\n" + "\n".join(
        f"{letter}. {option}" for letter, option in zip("ABCD", options, strict=False)
    )
    answer = engine.ask("cam", prompt + "\nAnswer with the option's letter.", options=options).result()
    assert answer.text == "B. KESTREL"


def test_free_answers_are_one_line_without_repeated_phrases(engine: Engine) -> None:
    answer = engine.ask("cam", "Describe everything you saw in the video, in detail.").result()
    words = answer.text.split()
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    assert "\n" not in answer.text and len(trigrams) == len(set(trigrams)), answer.text


def test_a_gone_frame_is_still_kept_by_the_timeline(scripted_adapter: EmbeddedAdapter) -> None:
    # A budget for about 15 frames and no host tier: the first KESTREL showing leaves for good.
    engine = _engine(scripted_adapter, memory={"budget_tokens": 900, "host_budget_tokens": 0, "evict_chunk": 40})
    memory = engine.memory("cam")
    assert all(memory.records[t].location == "gone" for t in (10, 11, 12))
    question = "What word was written on the sign shown at 00:11?"
    times, lines = _read(engine, question)
    assert not {10.0, 11.0, 12.0} & set(times)
    assert any(line.startswith('"Kestrel" (text), shown 2 times: 00:10-00:12') for line in lines), lines
    answer = engine.ask("cam", question).result()
    perceived, kept, chosen = trace(memory, answer, ["KESTREL"])
    assert perceived and kept and chosen
    assert re.search("kestrel", answer.text, re.IGNORECASE), answer.text


def test_an_answer_the_reading_decides_needs_no_model_pass(
    engine: Engine, scripted_adapter: EmbeddedAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[int] = []
    real = scripted_adapter.next_token_logits

    def counted(*args: Any, **kwargs: Any) -> Any:
        passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scripted_adapter, "next_token_logits", counted)
    options = ["FALCON", "KESTREL", "ZEPHYR", "TUNDRA"]
    prompt = "What word was written on the sign shown at 00:11?"
    assert engine.ask("cam", prompt, options=options).result().text == "B. KESTREL"
    counted_answer = engine.ask("cam", "How many times was the sign saying KESTREL shown?").result()
    assert counted_answer.text == "2 times" and counted_answer.ttft_ms > 0
    now = engine.ask("cam", "What is on screen right now?").result()
    assert now.text == "mountain bike (at 01:09)" and now.evidence and now.evidence[-1][1] == 69.0
    assert passes == [], "the supported option, the count and the present come from what was read"
    engine.ask("cam", "Describe everything you saw in the video, in detail.").result()
    assert passes, "a free answer is generated by the model"
