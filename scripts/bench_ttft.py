"""Benchmark: time to first token from the streaming KV cache vs re-prefilling the same context.

Part A ingests real frames of the demo stream through the embedded engine and reports where ingest
time goes per frame. Part B builds 1, 10 and 60 minutes of stream cheaply: the vision models are
replaced by the descriptions part A produced, replayed in a cycle, so the text embedding and the
LM prefill of every frame stay real. At each checkpoint it asks a few questions four ways:
from the streaming cache with retrieval, re-reading the same chosen frames (`answer.source = "text"`),
from the streaming cache reading every resident frame, and by prefilling that same resident context
from scratch.

    python scripts/bench_ttft.py [--minutes 1 10 60] [--fps 1] [--budget 4096] [--sample-frames 60]
                                 [--repeats 3] [--threads N] [--scheduler-side-by-side MINUTES]
                                 [--out scripts/results/bench_ttft.md]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from memory.kv_cache import StreamingCache
from memory.records import OffloadedBlock
from sources.file import FileSource
from sources.frame import Frame, SourceEnded, SourceError
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import AnswerConfig, MemoryConfig
from streamer.errors import UserError
from streamer.evaluation.needles import build_demo_stream
from streamer.llm import cache_dir
from streamer.query import Answer
from streamer.vision import FrameDescriber, FrameDescription
from streamer.vision.describer import Descriptions, Frames, Parts

QUESTIONS = (
    "What word was written on the sign?",
    "What is on screen now?",
    "What objects were seen?",
)
PROGRESS_EVERY = 100  # frames between progress lines while building part B's stream


class RecordingDescriber:
    """The real describer, keeping every description it finishes."""

    def __init__(self, describer: FrameDescriber) -> None:
        self.describer = describer
        self.descriptions: list[FrameDescription] = []

    def look_batch(self, frames_bgr: Frames, batched: Parts = ()) -> Descriptions:
        return self.describer.look_batch(frames_bgr, batched)

    def finish_batch(
        self, frames_bgr: Frames, looks: Descriptions, details: Sequence[str], batched: Parts = ()
    ) -> Descriptions:
        descriptions = self.describer.finish_batch(frames_bgr, looks, details, batched)
        self.descriptions.extend(descriptions)
        return descriptions


class CyclingDescriber:
    """Ignores the pixels and hands out recorded descriptions in turn (at the detail they were recorded
    with), without their vision timings."""

    def __init__(self, descriptions: Sequence[FrameDescription]) -> None:
        if not descriptions:
            raise ValueError("CyclingDescriber needs at least one description")
        self.descriptions = [dataclasses.replace(d, timings_ms={}) for d in descriptions]
        self.next = 0

    def look_batch(self, frames_bgr: Frames, batched: Parts = ()) -> Descriptions:
        first, self.next = self.next, self.next + len(frames_bgr)
        return [self.descriptions[i % len(self.descriptions)] for i in range(first, self.next)]

    def finish_batch(
        self, frames_bgr: Frames, looks: Descriptions, details: Sequence[str], batched: Parts = ()
    ) -> Descriptions:
        return list(looks)


@dataclass
class Checkpoint:
    """What was measured after `frames` frames; every list has one entry per question and repeat."""

    frames: int
    seconds_to_build: float
    resident_frames: int
    host_frames: int
    resident_tokens: int
    history_tokens: int
    ingest_ms_per_frame: float
    retrieval_tokens: list[int] = field(default_factory=list)
    retrieval_host_frames: list[int] = field(default_factory=list)
    retrieval_ttft_ms: list[float] = field(default_factory=list)
    retrieval_ask_ms: list[float] = field(default_factory=list)
    reread_ttft_ms: list[float] = field(default_factory=list)
    reread_ask_ms: list[float] = field(default_factory=list)
    full_ttft_ms: list[float] = field(default_factory=list)
    reprefill_ttft_ms: list[float] = field(default_factory=list)
    reprefill_tokens: list[int] = field(default_factory=list)
    same_first_token: list[bool] = field(default_factory=list)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def read_frames(video: Path, fps: float, count: int) -> list[Frame]:
    """The first `count` frames of `video` sampled at `fps` (fewer if the video ends first)."""
    source = FileSource(video, fps=fps)
    frames: list[Frame] = []
    try:
        while len(frames) < count:
            try:
                frames.append(await source.recv())
            except SourceEnded:
                break
    finally:
        source.close()
    return frames


def sample_ingest(
    engine: Engine, adapter: EmbeddedAdapter, fps: float, count: int
) -> tuple[dict[str, float], float, list[FrameDescription]]:
    """Part A: ingest real demo frames; mean ms per frame by step, mean tokens per frame, descriptions."""
    video = build_demo_stream(cache_dir() / "demo").video
    frames = asyncio.run(read_frames(video, fps, count))
    if len(frames) < count:
        progress(f"The demo stream has only {len(frames)} frames at {fps:g} fps; sampling those.")
    adapter.frame_tokens(frames[0])  # warm up the vision models and the embedder, untimed
    recorder = RecordingDescriber(adapter.describer)
    adapter.describer = recorder
    try:
        engine.add_stream("sample")
        started = time.perf_counter()
        for frame in frames:
            engine.push_frame("sample", frame)
        progress(f"part A: ingested {len(frames)} real frames in {time.perf_counter() - started:.1f} s")
    finally:
        adapter.describer = recorder.describer
    tokens = statistics.fmean(record.tokens for record in engine.memory("sample").records)
    ingest = engine.status("sample").ingest_ms_per_frame
    engine.remove_stream("sample")
    return ingest, tokens, recorder.descriptions


def ask_one_token(engine: Engine, stream_id: str, question: str) -> tuple[Answer, float]:
    """Ask with generation stopped after the first token; the answer and ms from `ask` to that token.

    Answer.ttft_ms starts when generation starts, after the blocks were chosen; the wall time here
    also counts the view of the memory and the choice (with retrieval: an LM pass of the question over the
    sink for its query summary, its MiniLM embedding, and the index scores).
    """
    stop_after_first = threading.Event()
    stop_after_first.set()
    started = time.perf_counter()
    first_token_at: float | None = None
    handle = engine.ask(stream_id, question, cancel=stop_after_first)
    for _ in handle:
        first_token_at = first_token_at or time.perf_counter()
    answer: Answer = handle.result()
    return answer, ((first_token_at or time.perf_counter()) - started) * 1000


def reprefill_first_token(
    adapter: EmbeddedAdapter, engine: Engine, stream_id: str, question: str
) -> tuple[float, int, str]:
    """Prefill system prompt, every resident frame line and the question into a fresh cache.

    Returns ms from the start (tokenisation included) to the first token, the tokens prefilled, and
    the first token's text. The prefill is one forward pass, as a system without the streaming cache
    reads it: the engine's model scheduler, which would split it into chunks, is set aside meanwhile.
    """
    blocks = list(engine.memory(stream_id).blocks)
    scheduler, adapter.scheduler = adapter.scheduler, None
    try:
        started = time.perf_counter()
        text = adapter.system_text + "".join(b.record.text + "\n" for b in blocks) + adapter.question_text(question)
        ids = adapter.ids(text)
        cache = StreamingCache(adapter.num_layers)
        token = int(torch.argmax(adapter.next_token_logits(adapter.embed_ids(ids), cache)))
        elapsed_ms = (time.perf_counter() - started) * 1000
    finally:
        adapter.scheduler = scheduler
    first = "" if adapter.is_stop(token) else adapter.decode([token]).strip()
    return elapsed_ms, int(ids.shape[1]), first


def retrieval_context(engine: Engine, stream_id: str, question: str) -> tuple[int, int]:
    """What the default (retrieval) context holds for `question`, chosen as `Engine.ask` chooses:
    tokens (the sink plus the chosen blocks) and how many of the chosen blocks come from the host."""
    snapshot = engine.memory(stream_id).view()
    try:
        chosen = engine.choose(snapshot, question).blocks
        tokens = snapshot.sink_tokens + sum(block.length for block in chosen)
        return tokens, sum(isinstance(block, OffloadedBlock) for block in chosen)
    finally:
        snapshot.close()


def measure(engine: Engine, adapter: EmbeddedAdapter, stream_id: str, point: Checkpoint, repeats: int) -> None:
    """Ask every question `repeats` times each way, interleaved so that noise hits all three alike."""
    top_k = engine.config.retrieval.top_k
    # Warm-up, untimed; a re-prefill needs none, its seconds dwarf any first-call cost.
    ask_one_token(engine, stream_id, QUESTIONS[0])
    for question in QUESTIONS:
        tokens, from_host = retrieval_context(engine, stream_id, question)
        point.retrieval_tokens.append(tokens)
        point.retrieval_host_frames.append(from_host)
    for _ in range(repeats):
        for question in QUESTIONS:
            answer, ask_ms = ask_one_token(engine, stream_id, question)
            point.retrieval_ttft_ms.append(answer.ttft_ms)
            point.retrieval_ask_ms.append(ask_ms)
            engine.config.answer.source = "text"
            try:
                reread, reread_ms = ask_one_token(engine, stream_id, question)
            finally:
                engine.config.answer.source = "cache"
            point.reread_ttft_ms.append(reread.ttft_ms)
            point.reread_ask_ms.append(reread_ms)
            engine.config.retrieval.top_k = 0
            try:
                full, _ = ask_one_token(engine, stream_id, question)
            finally:
                engine.config.retrieval.top_k = top_k
            point.full_ttft_ms.append(full.ttft_ms)
            ms, tokens, first = reprefill_first_token(adapter, engine, stream_id, question)
            point.reprefill_ttft_ms.append(ms)
            point.reprefill_tokens.append(tokens)
            point.same_first_token.append(first == full.text)


def build_and_measure(
    engine: Engine,
    adapter: EmbeddedAdapter,
    descriptions: Sequence[FrameDescription],
    fps: float,
    minutes: Sequence[float],
    repeats: int,
) -> list[Checkpoint]:
    """Part B: one stream fed synthetic frames described by the recorded descriptions, measured at each length."""
    real_describer = adapter.describer
    adapter.describer = CyclingDescriber(descriptions)
    pixels = np.zeros((1, 1, 3), dtype=np.uint8)  # never looked at
    engine.add_stream("bench")
    memory = engine.memory("bench")
    targets = sorted({max(1, round(m * 60 * fps)) for m in minutes})
    points: list[Checkpoint] = []
    pushed = 0
    building_seconds = 0.0  # pushing frames only, not the questions asked between checkpoints
    try:
        for target in targets:
            started = time.perf_counter()
            while pushed < target:
                engine.push_frame("bench", Frame(pixels, pushed / fps, time.time(), pushed))
                pushed += 1
                if pushed % PROGRESS_EVERY == 0 or pushed == target:
                    progress(
                        f"part B: pushed {pushed}/{targets[-1]} frames, {memory.resident_tokens} tokens resident, "
                        f"{building_seconds + time.perf_counter() - started:.1f} s"
                    )
            building_seconds += time.perf_counter() - started
            ingest = engine.status("bench").ingest_ms_per_frame
            point = Checkpoint(
                frames=pushed,
                seconds_to_build=building_seconds,
                resident_frames=len(memory.blocks),
                host_frames=len(memory.offloaded),
                resident_tokens=memory.resident_tokens,
                history_tokens=memory.sink_tokens + sum(record.tokens for record in memory.records),
                ingest_ms_per_frame=ingest.get("text_embedding", 0.0) + ingest.get("prefill", 0.0),
            )
            asked = time.perf_counter()
            measure(engine, adapter, "bench", point, repeats)
            points.append(point)
            progress(
                f"part B: measured at {pushed} frames in {time.perf_counter() - asked:.1f} s; median TTFT ms: "
                f"retrieval {statistics.median(point.retrieval_ask_ms):.0f}, "
                f"re-reading {statistics.median(point.reread_ask_ms):.0f}, "
                f"whole context {statistics.median(point.full_ttft_ms):.0f}, "
                f"re-prefill {statistics.median(point.reprefill_ttft_ms):.0f}"
            )
    finally:
        adapter.describer = real_describer
    return points


@dataclass
class SchedulerRow:
    """Part C: mean wall ms per pushed frame over one stretch of frames, with and without the scheduler."""

    frames: int
    with_ms: float
    without_ms: float


def scheduler_side_by_side(
    engine: Engine,
    adapter: EmbeddedAdapter,
    descriptions: Sequence[FrameDescription],
    fps: float,
    minutes: float,
    block: int = 20,
    every: int = 100,
) -> list[SchedulerRow]:
    """Part C: two new streams fed the same frames in alternating blocks of `block` frames, one with the
    model scheduler in place and one with it set aside (frames prefilled directly, as with
    `answer.batched: false`), which goes first alternating too, so that the machine's drift hits both
    alike. One row per `every` frames of each stream: mean wall ms per `push_frame`."""
    real_describer, scheduler = adapter.describer, adapter.scheduler
    if scheduler is None:
        raise UserError("part C compares ingest with and without the model scheduler, which this engine lacks")
    streams = {"with": CyclingDescriber(descriptions), "without": CyclingDescriber(descriptions)}
    for stream_id in streams:
        engine.add_stream(stream_id)
    pixels = np.zeros((1, 1, 3), dtype=np.uint8)
    total = max(block, round(minutes * 60 * fps))
    spent = {stream_id: 0.0 for stream_id in streams}
    rows: list[SchedulerRow] = []
    try:
        for first in range(0, total, block):
            order = list(streams) if (first // block) % 2 == 0 else list(reversed(streams))
            for stream_id in order:
                adapter.describer = streams[stream_id]
                adapter.scheduler = scheduler if stream_id == "with" else None
                started = time.perf_counter()
                for index in range(first, min(total, first + block)):
                    engine.push_frame(stream_id, Frame(pixels, index / fps, time.time(), index))
                spent[stream_id] += time.perf_counter() - started
            pushed = min(total, first + block)
            if pushed % every == 0 or pushed == total:
                done = rows[-1].frames if rows else 0
                count = pushed - done
                rows.append(SchedulerRow(pushed, spent["with"] * 1000 / count, spent["without"] * 1000 / count))
                spent = {stream_id: 0.0 for stream_id in streams}
                progress(
                    f"part C: {pushed}/{total} frames each; ms/frame with the scheduler {rows[-1].with_ms:.0f}, "
                    f"without {rows[-1].without_ms:.0f}"
                )
    finally:
        adapter.describer, adapter.scheduler = real_describer, scheduler
        for stream_id in streams:
            engine.remove_stream(stream_id)
    return rows


def scheduler_table(rows: Sequence[SchedulerRow], fps: float) -> list[str]:
    lines = ["| frames (stream time) | with the scheduler (ms / frame) | without (ms / frame) | with / without |"]
    lines.append("|---|---:|---:|---:|")
    for row in rows:
        lines.append(
            f"| {row.frames} ({row.frames / fps / 60:.1f} min) | {row.with_ms:.1f} | {row.without_ms:.1f} | "
            f"{row.with_ms / row.without_ms:.2f} |"
        )
    with_all = statistics.fmean(row.with_ms for row in rows)
    without_all = statistics.fmean(row.without_ms for row in rows)
    lines.append(f"| **all** | **{with_all:.1f}** | **{without_all:.1f}** | **{with_all / without_all:.2f}** |")
    return lines


def ingest_table(mean_ms: dict[str, float], tokens_per_frame: float) -> list[str]:
    lines = ["| step | ms / frame |", "|---|---:|"]
    lines += [f"| {step} | {ms:.1f} |" for step, ms in mean_ms.items()]
    lines.append(f"| **total** | **{sum(mean_ms.values()):.1f}** |")
    lines.append("")
    lines.append(f"Frame lines average {tokens_per_frame:.1f} LM tokens.")
    return lines


def ttft_table(points: Sequence[Checkpoint], fps: float) -> list[str]:
    def row(label: str, cells: Sequence[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    def ms(values: Sequence[list[float]]) -> list[str]:
        return [f"{statistics.median(v):.1f}" for v in values]

    heads = [f"{p.frames / fps / 60:g} min ({p.frames} frames)" for p in points]
    full = [statistics.median(p.full_ttft_ms) for p in points]
    retrieval = [statistics.median(p.retrieval_ask_ms) for p in points]
    reprefill = [statistics.median(p.reprefill_ttft_ms) for p in points]
    return [
        row("", heads),
        "|---|" + "---:|" * len(points),
        row(
            "frames resident / on host / pushed",
            [f"{p.resident_frames} / {p.host_frames} / {p.frames}" for p in points],
        ),
        row("tokens resident (sink + resident frames)", [str(p.resident_tokens) for p in points]),
        row("tokens read with retrieval (median)", [str(int(statistics.median(p.retrieval_tokens))) for p in points]),
        row(
            "frames read with retrieval that came from the host (median)",
            [str(int(statistics.median(p.retrieval_host_frames))) for p in points],
        ),
        row(
            "tokens re-prefilled, question included (median)",
            [str(int(statistics.median(p.reprefill_tokens))) for p in points],
        ),
        row("tokens since the stream start (not run)", [str(p.history_tokens) for p in points]),
        row("ingest ms / frame (text embedding + prefill)", [f"{p.ingest_ms_per_frame:.1f}" for p in points]),
        row("time spent pushing frames so far (s)", [f"{p.seconds_to_build:.1f}" for p in points]),
        row("**TTFT streaming, retrieval** (ms)", ms([p.retrieval_ttft_ms for p in points])),
        row("TTFT streaming, retrieval, from `ask()` (ms)", ms([p.retrieval_ask_ms for p in points])),
        row("**TTFT re-reading the chosen frames, retrieval** (ms)", ms([p.reread_ttft_ms for p in points])),
        row("TTFT re-reading the chosen frames, from `ask()` (ms)", ms([p.reread_ask_ms for p in points])),
        row("**TTFT streaming, whole resident context** (ms)", ms([p.full_ttft_ms for p in points])),
        row("**TTFT re-prefill, whole resident context** (ms)", ms([p.reprefill_ttft_ms for p in points])),
        row("re-prefill / streaming (whole context)", [f"{r / f:.1f}x" for r, f in zip(reprefill, full, strict=True)]),
        row(
            "re-prefill / streaming (retrieval, from `ask()`)",
            [f"{r / s:.1f}x" for r, s in zip(reprefill, retrieval, strict=True)],
        ),
        row(
            "same first token, re-prefill vs streaming (whole context)",
            [f"{sum(p.same_first_token)}/{len(p.same_first_token)}" for p in points],
        ),
    ]


def report(
    args: argparse.Namespace,
    model: str,
    ingest: tuple[dict[str, float], float, int],
    points: Sequence[Checkpoint],
    context_window: int,
    run_seconds: float,
    side_by_side: Sequence[SchedulerRow] = (),
) -> str:
    mean_ms, tokens_per_frame, sampled = ingest
    command = "python " + shlex.join(sys.argv)
    when = datetime.now().astimezone().isoformat(timespec="seconds")
    lines = [
        "# Time to first token: streaming KV cache vs re-prefill",
        "",
        f"`{command}` — {when}, torch threads {torch.get_num_threads()}, {model}, "
        f"budget {args.budget} tokens, whole run {run_seconds:.0f} s",
        "",
        f"## A. Ingest cost per frame ({sampled} real demo-stream frames at {args.fps:g} fps)",
        "",
        *ingest_table(mean_ms, tokens_per_frame),
        "",
        f"## B. Time to first token (median of {len(QUESTIONS)} questions x {args.repeats} repeats)",
        "",
        *ttft_table(points, args.fps),
        "",
        "- Part B replays part A's frame descriptions in a cycle instead of running the vision models;",
        "  the text embedding and the LM prefill of every frame are real.",
        "- Streaming: `Engine.ask` on the stream's cache, stopped after the first token. `Answer.ttft_ms`",
        "  runs from the moment the question is taken: the snapshot, the block choice (its MiniLM",
        "  embedding, the index scores), context assembly, question prefill and the first token. The",
        "  `ask()` row is wall time from the call, which adds only the generator's start; the retrieval",
        "  ratio uses it. Retrieval may read blocks back from the host tier.",
        "- Re-reading: the same block choice with `answer.source = 'text'`: the sink's KV is reused and the",
        "  chosen frames' tokens are prefilled again.",
        "- Whole resident context: `retrieval.top_k = 0` (no block choice, no copy). Re-prefill: a fresh",
        "  cache, one forward over system prompt + every resident frame line + question, timed from",
        "  tokenisation to the first token.",
        "- Tokens since the stream start: what re-prefilling the whole history would read (the device",
        f"  budget evicts beyond {args.budget} tokens); the model's context window is {context_window} tokens.",
        f"- Questions: {'; '.join(QUESTIONS)}",
    ]
    if side_by_side:
        lines += [
            "",
            "## C. Ingest with and without the model scheduler, side by side",
            "",
            *scheduler_table(side_by_side, args.fps),
            "",
            "- Two streams fed part B's cycle of descriptions in alternating blocks of 20 frames (which stream",
            "  goes first alternates too): one with the model scheduler in place, its frames' prefills passed",
            "  through it as ingest passes; one with it set aside, prefilled directly. Wall time of",
            "  `push_frame` (text embedding, prefill, the memory's eviction work); no questions are asked.",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0], help="stream lengths measured")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second of stream (default 1)")
    parser.add_argument("--budget", type=int, default=4096, help="KV tokens resident per stream (default 4096)")
    parser.add_argument("--sample-frames", type=int, default=60, help="real frames ingested in part A (default 60)")
    parser.add_argument("--repeats", type=int, default=3, help="times each question is asked each way (default 3)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's own); 1 holds up far better beside another busy process",
    )
    parser.add_argument(
        "--scheduler-side-by-side",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="part C: ingest this many minutes into two streams, with and without the model scheduler (0: skip)",
    )
    parser.add_argument("--out", type=Path, default=Path("scripts/results/bench_ttft.md"), help="markdown output")
    args = parser.parse_args(argv)
    if args.fps <= 0 or min(args.minutes) <= 0 or args.scheduler_side_by_side < 0:
        parser.error("--fps and --minutes must be positive, --scheduler-side-by-side 0 or more")
    if args.budget < 256:
        parser.error(f"--budget {args.budget} is too small; give at least 256 tokens")
    if args.sample_frames < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--sample-frames, --repeats and --threads must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        progress("Loading models...")
        adapter = EmbeddedAdapter.load()
        engine = Engine(
            adapter, EngineConfig(memory=MemoryConfig(budget_tokens=args.budget), answer=AnswerConfig(source="cache"))
        )
        mean_ms, tokens_per_frame, descriptions = sample_ingest(engine, adapter, args.fps, args.sample_frames)
        points = build_and_measure(engine, adapter, descriptions, args.fps, args.minutes, args.repeats)
        side_by_side: list[SchedulerRow] = []
        if args.scheduler_side_by_side:
            engine.remove_stream("bench")
            side_by_side = scheduler_side_by_side(engine, adapter, descriptions, args.fps, args.scheduler_side_by_side)
    except (UserError, SourceError) as exc:
        print(f"bench_ttft: error: {exc}", file=sys.stderr)
        return 2
    ingest = (mean_ms, tokens_per_frame, len(descriptions))
    context_window = int(adapter.model.config.get_text_config().max_position_embeddings)
    text = report(args, adapter.name, ingest, points, context_window, time.perf_counter() - started, side_by_side)
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    progress(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
