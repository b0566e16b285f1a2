"""Running a suite over configurations: memory policy x budget x sampling fps x language model.

For each stream and fps the frames are first described once (`CachedDescriber`) and the stream's
full token count measured: every frame described in full, as the language model tokenizes it. A
budget is a share of that count, held for frame blocks on the device, on top of the system prompt
and the reserve for a question and its answer; the host tier is off unless `host_budget_tokens` is
set, so a budget is what the memory may keep. Then every configuration replays the stream on a
fresh engine stream: the vision work is reused, the language model's prefill runs per configuration,
and the questions are answered through the same query path as live questions (or through a server's
websocket with `via_websocket`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from memory.settings import POLICIES
from sources.file import FileSource
from sources.frame import SourceEnded
from streamer.engine_config import AnswerConfig, EngineConfig, nested
from streamer.errors import UserError, first_problem
from streamer.evaluation.descriptions import CachedDescriber, CachedTextEmbedder, descriptions_path
from streamer.evaluation.options import EvalOptions, RunConfig
from streamer.evaluation.progress import Progress
from streamer.evaluation.replaying import Probe, ProbeAnswer, StreamRun, replay_probes
from streamer.evaluation.suite import Suite, SuiteStream
from streamer.funnel import FunnelRow, seen_phrases
from streamer.models import ModelChoice, check_choice
from streamer.replay import ReplayQuestion, score


@dataclass
class EvalResult:
    """Every answer (flat records, see `answer_record`), one record per run, and wall times."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# A full memory frees 1/EVICT_SHARE of the frame budget at once.
EVICT_SHARE = 10


def check_options(options: EvalOptions) -> None:
    """A UserError for the first option that cannot work, before anything loads."""
    unknown = [policy for policy in options.policies if policy not in POLICIES]
    if unknown:
        raise UserError(f"Unknown policy '{unknown[0]}'; use one or more of {', '.join(POLICIES)}.")
    for percent in options.budgets:
        if not 0 < percent <= 100:
            raise UserError(f"--budgets {percent:g} is not a share of the stream; give percents above 0, up to 100.")
    for fps in options.fps:
        if not 0 < fps <= 30:
            raise UserError(f"--fps {fps:g} must be above 0 and at most 30.")
    if options.top_k < 0:
        raise UserError(f"--top-k {options.top_k} must be 0 or more.")
    if options.url is not None and not options.via_websocket:
        raise UserError("--url names a server to replay through; add --via-websocket, or leave out --url.")
    if options.url is not None:
        from streamer.evaluation.live import http_base

        http_base(options.url)
    if options.url is not None and len(options.fps) > 1:
        raise UserError("A running server ingests at the fps it is given once; with --url give one --fps.")
    for variant in options.variants:
        try:
            EngineConfig.model_validate(nested(dict(variant.settings)))
        except ValidationError as error:
            problem = first_problem(error)
            raise UserError(
                f"--variant {variant.name}: {problem.field or 'settings'}: {problem.message}; give engine settings as "
                "SECTION.KEY=VALUE (e.g. retrieval.top_k=2)."
            ) from None
    for model in options.models:
        check_choice(model)


def configs(options: EvalOptions) -> list[RunConfig]:
    return [
        RunConfig(policy, percent, fps, model, variant)
        for fps in options.fps
        for model in options.models
        for variant in options.variants
        for policy in options.policies
        for percent in options.budgets
    ]


def load_adapters(
    models: Sequence[ModelChoice],
) -> tuple[dict[ModelChoice, Any], CachedDescriber, CachedTextEmbedder]:
    """One adapter per model; the embedded ones share one describer that caches by pixels and one
    MiniLM embedder that caches by text."""
    from streamer.adapters.embedded import EmbeddedAdapter
    from streamer.llm import load_llm, resolve_llm
    from streamer.models import load_adapter, placement
    from streamer.vision import FrameDescriber
    from streamer.vision.text_embedder import TextEmbedder

    describer = CachedDescriber(FrameDescriber())
    embedder = CachedTextEmbedder(TextEmbedder())
    adapters: dict[ModelChoice, Any] = {}
    for choice in models:
        if not choice.embedded:
            adapters[choice] = load_adapter(choice)
            continue
        device, dtype = placement(choice)
        tokenizer, model = load_llm(resolve_llm(choice.llm), dtype, device)
        adapters[choice] = EmbeddedAdapter(describer, tokenizer, model, choice.name, embedder)
    return adapters, describer, embedder


def frames_at(video: Path, fps: float, on_frame: Callable[[Any], None]) -> int:
    """Decode `video` at `fps` without pacing, passing each frame to `on_frame`; the frame count."""

    async def read() -> int:
        source = FileSource(video, fps=fps)
        count = 0
        try:
            while True:
                on_frame(await source.recv())
                count += 1
        except SourceEnded:
            return count
        finally:
            source.close()

    return asyncio.run(read())


def full_tokens(adapter: Any, video: Path, fps: float, progress: Progress, kind: str) -> tuple[int, int]:
    """(total tokens with every frame described in full, the largest frame's tokens)."""
    lengths: list[int] = []

    def count(frame: Any) -> None:
        lengths.append(adapter.frame_tokens(frame, "full").length)
        progress.advance(kind)

    frames_at(video, fps, count)
    return sum(lengths), max(lengths, default=0)


def engine_config(adapter: Any, options: EvalOptions, config: RunConfig, frame_budget: int) -> EngineConfig:
    """The engine settings of one run: `frame_budget` tokens for frames on top of the sink and the answer
    reserve; a full memory frees a tenth of the frame budget at once (the engine's fixed 256 tokens would
    be most of a small budget, and the policies would differ mostly in when they evict)."""
    probe = EngineConfig(answer=AnswerConfig(max_new_tokens=max(1, options.max_new_tokens)))
    sink = int(adapter.system_embeds().shape[1])
    settings: dict[str, Any] = {
        "memory.policy": config.policy,
        "memory.budget_tokens": frame_budget + sink + probe.answer_reserve,
        "memory.evict_chunk": max(16, frame_budget // EVICT_SHARE),
        "memory.host_budget_tokens": options.host_budget_tokens,
        "retrieval.top_k": options.top_k,
        "answer.max_new_tokens": probe.answer.max_new_tokens,
    }
    return EngineConfig.model_validate(nested(settings | dict(config.variant.settings)))


def frame_budget_for(
    adapter: Any, stream: SuiteStream, config: RunConfig, total: int, largest: int, options: EvalOptions
) -> int:
    """Tokens for frame blocks at `config.budget_percent` of `total`; a UserError when that cannot hold the
    short-term window or does not fit the language model's context window."""
    frame_budget = int(total * config.budget_percent / 100)
    window = EngineConfig().memory.window_seconds
    frames = int(stream.duration * config.fps) + 1
    needed = int(window * config.fps * total / frames) + largest
    if frame_budget < needed:
        least = 100 * needed / max(1, total)
        raise UserError(
            f"--budgets {config.budget_percent:g}% of '{stream.name}' at {config.fps:g} fps is {frame_budget} tokens, "
            f"fewer than the last {window:g} s of frames need (about {needed}); give at least {least:.0f}%."
        )
    limit = getattr(adapter.model.config, "max_position_embeddings", None)
    budget = engine_config(adapter, options, config, frame_budget).memory.budget_tokens
    if isinstance(limit, int) and budget > limit:
        most = 100 * (limit - (budget - frame_budget)) / max(1, total)
        raise UserError(
            f"--budgets {config.budget_percent:g}% of '{stream.name}' at {config.fps:g} fps is {budget} tokens, more "
            f"than {config.llm_name}'s {limit}-token context window; give at most {most:.0f}%."
        )
    return frame_budget


def probes_of(stream: SuiteStream) -> list[Probe]:
    return [
        Probe(
            question.id,
            question.t,
            question.prompt(),
            options=question.options,
            seen=tuple(seen_phrases(question.answer, question.options, question.seen)),
            question=question.question,
        )
        for question in stream.questions
    ]


def template_of(question_id: str) -> str:
    """ "sign-word-3" -> "sign-word"; an id without a numbered suffix is its own template."""
    stem, _, number = question_id.rpartition("-")
    return stem if stem and number.isdigit() else "other"


def config_record(config: RunConfig, budget_tokens: int) -> dict[str, Any]:
    """How answers and runs name their configuration."""
    return {
        "policy": config.policy,
        "budget_percent": config.budget_percent,
        "budget_tokens": budget_tokens,
        "fps": config.fps,
        "llm": config.llm_name,
        "variant": config.variant.name,
    }


def answer_record(
    stream: SuiteStream, config: RunConfig, budget_tokens: int, question: ReplayQuestion, answer: ProbeAnswer
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "config": config_record(config, budget_tokens),
        "stream": stream.name,
        "id": question.id,
        "template": template_of(question.id),
        "t": question.t,
        "question": question.question,
        "options": list(question.options) if question.options else None,
        "expected": question.answer,
        "given": answer.text,
        "correct": score(question, answer.text),
        "ttft_ms": answer.ttft_ms,
        "latency_ms": answer.latency_ms,
        "evidence": answer.evidence,
        "as_of": answer.as_of,
    }
    if answer.funnel is not None:
        perceived, kept, chosen = answer.funnel
        record["funnel"] = FunnelRow(perceived, kept, chosen, bool(record["correct"])).as_dict()
    if answer.client_ttft_ms is not None:
        record["client_ttft_ms"] = answer.client_ttft_ms
        record["client_latency_ms"] = answer.client_latency_ms
    return record


def run_suite(suite: Suite, options: EvalOptions, progress: Progress, log: Callable[[str], None]) -> EvalResult:
    """Every stream of `suite` under every configuration of `options`."""
    result = EvalResult()
    started = time.perf_counter()
    if options.url is not None:
        _run_against_server(suite, options, progress, result)
        result.seconds["total"] = round(time.perf_counter() - started, 1)
        return result
    log("Loading models...")
    adapters, describer, embedder = load_adapters(options.models)
    result.seconds["load_models"] = round(time.perf_counter() - started, 1)
    grid = configs(options)
    for stream in suite.streams:
        frames = int(stream.duration * max(options.fps)) + 1
        progress.add("describe", sum(int(stream.duration * fps) + 1 for fps in options.fps))
        progress.add("count", frames * (len(options.models) - 1) * len(options.fps))
        progress.add("ingest", sum(int(stream.duration * c.fps) + 1 for c in grid))
        progress.add("answer", len(stream.questions) * len(grid))
    for stream in suite.streams:
        describer.clear()
        embedder.clear()
        for fps in options.fps:
            totals: dict[ModelChoice, tuple[int, int]] = {}
            for number, model in enumerate(options.models):
                kind = "describe" if number == 0 else "count"
                progress.start(f"{stream.name} at {fps:g} fps: describing frames")
                begun = time.perf_counter()
                saved = descriptions_path(stream.video, fps)
                loaded = describer.load(saved) if number == 0 else 0
                if loaded:
                    log(f"{stream.name} at {fps:g} fps: {loaded} frame descriptions from {saved}")
                totals[model] = full_tokens(adapters[model], stream.video, fps, progress, kind)
                if number == 0 and len(describer.descriptions) > loaded:
                    describer.save(saved)
                result.seconds[f"{kind} {stream.name} {fps:g} fps {model.name}"] = round(time.perf_counter() - begun, 1)
            runs = [c for c in grid if c.fps == fps]
            budgets = {c: frame_budget_for(adapters[c.model], stream, c, *totals[c.model], options) for c in runs}
            for config in runs:
                adapter = adapters[config.model]
                begun = time.perf_counter()
                run = _run_config(adapter, stream, config, budgets[config], options, progress)
                seconds = round(time.perf_counter() - begun, 1)
                budget_tokens = run.budget_tokens
                questions = {q.id: q for q in stream.questions}
                result.answers += [
                    answer_record(stream, config, budget_tokens, questions[a.id], a) for a in run.answers
                ]
                result.runs.append(
                    {
                        "stream": stream.name,
                        "duration_s": round(stream.duration, 1),
                        "config": config_record(config, budget_tokens),
                        "full_tokens": totals[config.model][0],
                        "frame_budget_tokens": budgets[config],
                        "frames": run.frames,
                        "seconds": seconds,
                        "ingest_ms_per_frame": run.ingest_ms_per_frame,
                        "timeline": [[round(t, 2), tokens] for t, tokens in run.timeline],
                    }
                )
    result.seconds["replays"] = round(sum(run["seconds"] for run in result.runs), 1)
    result.seconds["total"] = round(time.perf_counter() - started, 1)
    return result


def _run_config(
    adapter: Any, stream: SuiteStream, config: RunConfig, frame_budget: int, options: EvalOptions, progress: Progress
) -> StreamRun:
    from streamer.engine import Engine

    label = f"{stream.name}: {config.policy} {config.budget_percent:g}% at {config.fps:g} fps"
    progress.start(label + (" via websocket" if options.via_websocket else ""))
    probes = probes_of(stream)
    if not options.via_websocket:
        engine = Engine(adapter, engine_config(adapter, options, config, frame_budget))
        source = FileSource(stream.video, fps=config.fps)
        return asyncio.run(
            replay_probes(
                engine,
                "eval",
                source,
                probes,
                on_frame=lambda _: progress.advance("ingest"),
                on_answer=lambda _: progress.advance("answer"),
            )
        )
    from streamer.evaluation.live import ServerForConfig, replay_over_websocket

    # The server describes every frame itself, as it would live: no cached descriptions.
    live_adapter = _uncached(adapter)
    engine = Engine(live_adapter, engine_config(adapter, options, config, frame_budget))
    with ServerForConfig(engine, stream.video.parent) as base_url:
        return asyncio.run(
            replay_over_websocket(
                base_url,
                stream.video,
                config.fps,
                probes,
                on_frames=progress.running_total("ingest"),
                on_answer=lambda _: progress.advance("answer"),
            )
        )


def _uncached(adapter: Any) -> Any:
    """The same language model and embedder with the describer that does the work every time."""
    from streamer.adapters.embedded import EmbeddedAdapter

    describer, embedder = adapter.describer, adapter.embedder
    if isinstance(describer, CachedDescriber):
        describer = describer.describer
    if isinstance(embedder, CachedTextEmbedder):
        embedder = embedder.inner
    return EmbeddedAdapter(describer, adapter.tokenizer, adapter.model, adapter.name, embedder)


def _run_against_server(suite: Suite, options: EvalOptions, progress: Progress, result: EvalResult) -> None:
    """Replay every stream through the server at `options.url`, as configured there."""
    from streamer.evaluation.live import http_base, replay_over_websocket

    assert options.url is not None
    base_url = http_base(options.url)
    for stream in suite.streams:
        progress.add("ingest", int(stream.duration * options.fps[0]) + 1)
        progress.add("answer", len(stream.questions))
    for stream in suite.streams:
        config = RunConfig("as served", 0.0, options.fps[0], served_by=base_url)
        progress.start(f"{stream.name} via {base_url}")
        begun = time.perf_counter()
        run = asyncio.run(
            replay_over_websocket(
                base_url,
                stream.video,
                config.fps,
                probes_of(stream),
                token=options.token,
                on_frames=progress.running_total("ingest"),
                on_answer=lambda _: progress.advance("answer"),
            )
        )
        questions = {q.id: q for q in stream.questions}
        result.answers += [answer_record(stream, config, run.budget_tokens, questions[a.id], a) for a in run.answers]
        result.runs.append(
            {
                "stream": stream.name,
                "duration_s": round(stream.duration, 1),
                "config": config_record(config, run.budget_tokens),
                "frames": run.frames,
                "seconds": round(time.perf_counter() - begun, 1),
                "timeline": [[round(t, 2), tokens] for t, tokens in run.timeline],
            }
        )
