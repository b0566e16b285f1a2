"""Replaying a file into an engine stream in process, with questions asked at their stream times.

Like `streamer.replay.Replay`, frames are fed up to a question's time `t`, the question goes through
the engine's query path, and the stream continues; in addition a question may be limited to the
memory of a recent window (`since`, for StreamingBench's "last 60 s" context), and the resident token
count is recorded after every frame.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

from memory.records import FrameRecord
from sources.file import FileSource
from sources.frame import SourceEnded
from streamer.engine import Engine
from streamer.funnel import trace
from streamer.query import Answer, drain


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


def ask_within(engine: Engine, stream_id: str, probe: Probe) -> Generator[str, None, Answer]:
    """`engine.ask` for a probe: its options scored, no frame older than its `since` read."""
    return engine.ask(stream_id, probe.prompt, since=probe.since, options=probe.options)


async def replay_probes(
    engine: Engine,
    stream_id: str,
    source: FileSource,
    probes: Sequence[Probe],
    on_frame: Callable[[FrameRecord], None] | None = None,
    on_answer: Callable[[ProbeAnswer], None] | None = None,
    until_last_probe: bool = False,
) -> StreamRun:
    """Feed `source` into a new stream `stream_id`, answering each probe when its time comes; the
    stream is removed from the engine at the end and the source closed.

    until_last_probe: stop once the last probe is answered instead of playing the source to its end.
    """
    engine.add_stream(stream_id)
    memory = engine.stream(stream_id).memory
    pending = sorted(probes, key=lambda probe: probe.t)
    run = StreamRun([], budget_tokens=memory.budget_tokens)

    def answer(probe: Probe) -> None:
        result = drain(ask_within(engine, stream_id, probe))
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

    try:
        while True:
            try:
                frame = await source.recv()
            except SourceEnded:
                break
            while pending and pending[0].t < frame.stream_time:
                answer(pending.pop(0))
            if until_last_probe and not pending:
                break
            record = engine.push_frame(stream_id, frame)
            run.frames += 1
            run.timeline.append((record.stream_time, memory.resident_tokens))
            if on_frame is not None:
                on_frame(record)
        while pending:
            answer(pending.pop(0))
        run.ingest_ms_per_frame = {k: round(v, 1) for k, v in engine.stream(stream_id).stats.mean_ms().items()}
    finally:
        source.close()
        engine.remove_stream(stream_id)
    return run
