"""The answer path on a scripted stream: what a question reads (intent, timeline, lexical retrieval) and how
it answers (options scored, free answers that cannot loop), with the real SmolLM2-135M.

The frames' descriptions are scripted (a stand-in for the vision models, which `test_vision.py` and the
end-to-end tests run for real) so each test knows exactly what was shown when.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from sources.frame import Frame
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine, EngineConfig
from streamer.funnel import trace
from streamer.query import drain
from streamer.vision.describer import FrameDescription
from streamer.vision.detector import DetectedObject

FOOTAGE = FrameDescription(np.zeros(4), [("mountain bike", 0.5)], colours=["grey", "green"])


def _sign(word: str) -> FrameDescription:
    return FrameDescription(np.zeros(4), [("street sign", 0.4)], text=[word], colours=["white", "black"])


CAT = FrameDescription(np.zeros(4), [("Egyptian cat", 0.7)], [DetectedObject("cat", 0.9, 1)], colours=["brown"])

# Second -> what the frame shows; footage elsewhere. KESTREL is shown twice, FALCON once, the cat once.
SCRIPT: dict[int, FrameDescription] = {
    **{t: _sign("KESTREL") for t in (10, 11, 12)},
    **{t: CAT for t in (25, 26)},
    **{t: _sign("FALCON") for t in (40, 41)},
    **{t: _sign("KESTREL") for t in (52, 53)},
}
SECONDS = 70


class ScriptedDescriber:
    """Describes frame number `sequence` as SCRIPT says; every description is "full"."""

    def describe_batch(
        self, frames: Sequence[np.ndarray], details: Sequence[Any], batched: Any = ()
    ) -> list[FrameDescription]:
        found = []
        for pixels in frames:
            second = int(pixels[0, 0, 0])
            scripted = SCRIPT.get(second, FOOTAGE)
            features = np.random.default_rng(second).standard_normal(16).astype(np.float32)
            found.append(
                FrameDescription(
                    features / np.linalg.norm(features),
                    scripted.labels,
                    scripted.objects,
                    scripted.text,
                    scripted.colours,
                    detail="full",
                )
            )
        return found


@pytest.fixture(scope="module")
def scripted_adapter(embedded_adapter: EmbeddedAdapter) -> EmbeddedAdapter:
    a = embedded_adapter
    return EmbeddedAdapter(ScriptedDescriber(), a.tokenizer, a.model, a.name, a.embedder)


def _engine(adapter: EmbeddedAdapter, **settings: Any) -> Engine:
    engine = Engine(adapter, EngineConfig(policy="fifo", **settings))
    engine.add_stream("cam")
    for second in range(SECONDS):
        pixels = np.full((8, 8, 3), second, np.uint8)
        engine.push_frame("cam", Frame(pixels, float(second), 0.0, second))
    return engine


@pytest.fixture(scope="module")
def engine(scripted_adapter: EmbeddedAdapter) -> Engine:
    return _engine(scripted_adapter, max_new_tokens=24)


def _read(engine: Engine, question: str) -> tuple[list[float], list[str]]:
    snapshot = engine.stream("cam").memory.snapshot()
    try:
        reading = engine.choose("cam", snapshot, question)
    finally:
        snapshot.close()
    return [b.record.stream_time for b in reading.blocks], reading.lines


def test_the_most_recent_sign_is_the_newest_showing_of_text(engine: Engine) -> None:
    times, _ = _read(engine, "What did the most recent sign say?")
    assert {52.0, 53.0} <= set(times) and not {40.0, 41.0, 10.0} & set(times)
    answer = drain(engine.ask("cam", "What did the most recent sign say?"))
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
    engine = _engine(scripted_adapter, read_intent=False, retrieval_top_k=2)
    times, _ = _read(engine, "Was FALCON ever written anywhere?")
    assert {40.0, 41.0} <= set(times)


def test_multiple_choice_names_exactly_one_option(engine: Engine) -> None:
    options = ["FALCON", "KESTREL", "ZEPHYR", "TUNDRA"]
    prompt = "What word was written on the sign shown at 00:11?\nOptions:\n" + "\n".join(
        f"{letter}. {option}" for letter, option in zip("ABCD", options, strict=False)
    )
    answer = drain(engine.ask("cam", prompt + "\nAnswer with the option's letter.", options=options))
    assert answer.text == "B. KESTREL"


def test_free_answers_are_one_line_without_repeated_phrases(engine: Engine) -> None:
    answer = drain(engine.ask("cam", "Describe everything you saw in the video, in detail."))
    words = answer.text.split()
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    assert "\n" not in answer.text and len(trigrams) == len(set(trigrams)), answer.text


def test_a_gone_frame_is_still_kept_by_the_timeline(scripted_adapter: EmbeddedAdapter) -> None:
    # A budget for about 15 frames and no host tier: the first KESTREL showing leaves for good.
    engine = _engine(scripted_adapter, budget_tokens=900, host_budget_tokens=0, evict_chunk=40)
    memory = engine.stream("cam").memory
    assert all(memory.records[t].location == "gone" for t in (10, 11, 12))
    question = "What word was written on the sign shown at 00:11?"
    times, lines = _read(engine, question)
    assert not {10.0, 11.0, 12.0} & set(times)
    assert any(line.startswith('"Kestrel" (text), shown 2 times: 00:10-00:12') for line in lines), lines
    answer = drain(engine.ask("cam", question))
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
    assert drain(engine.ask("cam", prompt, options=options)).text == "B. KESTREL"
    counted_answer = drain(engine.ask("cam", "How many times was the sign saying KESTREL shown?"))
    assert counted_answer.text == "2 times" and counted_answer.ttft_ms > 0
    now = drain(engine.ask("cam", "What is on screen right now?"))
    assert now.text == "mountain bike (at 01:09)" and now.evidence and now.evidence[-1][1] == 69.0
    assert passes == [], "the supported option, the count and the present come from what was read"
    drain(engine.ask("cam", "Describe everything you saw in the video, in detail."))
    assert passes, "a free answer is generated by the model"
