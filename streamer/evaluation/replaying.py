"""Replaying a file into an engine stream in process, with questions asked at their stream times.

Through the same loop as `streamer replay` (`streamer.replay.replay_stream`): frames are fed up to a
question's time `t`, the question goes through the engine's query path, and the stream continues; in
addition a question may be limited to the memory of a recent window (`since`, for StreamingBench's
"last 60 s" context), and the resident token count is recorded after every frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sources.file import FileSource
from streamer.engine import Engine
from streamer.engine_data import AnswerHandle, FrameInfo
from streamer.funnel import trace
from streamer.replay import replay_stream


@dataclass(frozen=True)
class Probe:
    """A question sent as `prompt` once the stream reaches `t` seconds.

    since: the earliest stream time whose memory the question may read (0: everything kept).
    options: the choices `prompt` lists, scored by the engine; None for an open question.
    seen: with these, the answer records where the evidence was lost (`ProbeAnswer.funnel`).
    """

    id: str
    t: float
    prompt: str
    since: float = 0.0
    options: tuple[str, ...] | None = None
    seen: tuple[str, ...] = ()  # phrases that show the answer was perceived (`streamer.funnel`)
    question: str | None = None  # the question alone, without the options `prompt` lists


@dataclass
class ProbeAnswer:
    id: str
    t: float
    text: str
    ttft_ms: float
    latency_ms: float
    evidence: list[list[float]]
    as_of: float
    client_ttft_ms: float | None = None
    client_latency_ms: float | None = None
    funnel: tuple[bool, bool, bool] | None = None  # (perceived, kept, chosen), when the probe has `seen`


@dataclass
class StreamRun:
    """What one replay produced: the answers, and (stream time, resident tokens) after every frame."""

    answers: list[ProbeAnswer]
    timeline: list[tuple[float, int]] = field(default_factory=list)
    frames: int = 0
    budget_tokens: int = 0
    ingest_ms_per_frame: dict[str, float] = field(default_factory=dict)


def ask_within(engine: Engine, stream_id: str, probe: Probe) -> AnswerHandle:
    """`engine.ask` for a probe: its options scored, no frame older than its `since` read."""
    return engine.ask(stream_id, probe.prompt, options=probe.options, since=probe.since)


async def replay_probes(
    engine: Engine,
    stream_id: str,
    source: FileSource,
    probes: Sequence[Probe],
    on_frame: Callable[[FrameInfo], None] | None = None,
    on_answer: Callable[[ProbeAnswer], None] | None = None,
    until_last_probe: bool = False,
    on_start: Callable[[], None] | None = None,
    answer_probe: Callable[[Probe], ProbeAnswer | None] | None = None,
) -> StreamRun:
    """Feed `source` into a new stream `stream_id` (`streamer.replay.replay_stream`), answering each probe when
    its time comes and recording the resident tokens after every frame; the stream is removed at the end.

    until_last_probe: stop once the last probe is answered instead of playing the source to its end.
    on_start: called once the stream exists, before its first frame. answer_probe: answers a probe itself
    when it returns an answer (say, from watches); the others are asked.
    """
    run = StreamRun([], budget_tokens=engine.config.memory.budget_tokens)

    def answer(probe: Probe) -> None:
        given_here = answer_probe(probe) if answer_probe is not None else None
        if given_here is not None:
            run.answers.append(given_here)
            if on_answer is not None:
                on_answer(given_here)
            return
        result = ask_within(engine, stream_id, probe).result()
        memory = engine.memory(stream_id)
        given = ProbeAnswer(
            probe.id,
            probe.t,
            result.text,
            round(result.ttft_ms, 1),
            round(result.latency_ms, 1),
            result.evidence,
            result.as_of,
            # Image frames carry no description to find the answer in: no funnel for them.
            funnel=trace(memory, result, probe.seen) if probe.seen and engine.adapter.describes_frames else None,
        )
        run.answers.append(given)
        if on_answer is not None:
            on_answer(given)

    def frame_fed(info: FrameInfo) -> None:
        run.timeline.append((info.t, engine.memory(stream_id).resident_tokens))
        if on_frame is not None:
            on_frame(info)

    try:
        run.frames = await replay_stream(
            engine, stream_id, source, probes, answer, frame_fed, until_last_probe, on_start
        )
        mean_ms = engine.status(stream_id).ingest_ms_per_frame
        run.ingest_ms_per_frame = {k: round(v, 1) for k, v in mean_ms.items()}
    finally:
        engine.remove_stream(stream_id)
    return run
