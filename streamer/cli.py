"""The `streamer` command: `demo` (the embedded default end to end), `replay`, `eval` and `bench`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.clock import clock
from streamer.errors import USER_ERRORS
from streamer.evaluation.cli import EVALUATION_COMMANDS, add_evaluation_commands, run_evaluation_command
from streamer.models import add_model_options, choice_from_args
from streamer.options import add_engine_options, check_options, engine_config
from streamer.replay import ReplayQuestion, ReplayResult, ReplaySummary
from streamer.server.cli import SERVER_COMMANDS, add_server_commands, run_server_command

if TYPE_CHECKING:
    from streamer.engine import Engine
    from streamer.engine_data import FrameInfo

EXIT_USAGE = 2


def _add_replay_options(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_engine_options(parser)
    parser.add_argument("--realtime", action="store_true", help="pace the video by its timestamps")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description="Ask questions about live video.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="build a few-minute stream from packaged footage with needles, replay it, ask questions"
    )
    demo.add_argument("--seed", type=int, default=0, help="which needles and footage order (default 0)")
    demo.add_argument("--out", type=Path, help="write the answers as JSONL here")
    _add_replay_options(demo)

    replay = commands.add_parser("replay", help="replay a video file as live and answer timestamped questions")
    replay.add_argument("video", type=Path)
    replay.add_argument("--questions", type=Path, required=True, help="JSONL: {id, t, question, options?, answer?}")
    replay.add_argument("--out", type=Path, required=True, help="JSONL results, one line per question")
    _add_replay_options(replay)
    add_server_commands(commands)
    add_evaluation_commands(commands)
    return parser


class Printer:
    """Prints questions, streamed answers and ingest progress as a person reads them."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.started = time.perf_counter()
        self.open_question: str | None = None

    def progress(self, frames: int, stream_time: float, duration: float) -> None:
        if self.quiet or frames % 30:
            return
        rate = frames / max(1e-9, time.perf_counter() - self.started)
        print(
            f"  ingested {frames} frames, stream {clock(stream_time)} of {clock(duration)} ({rate:.1f} frames/s)",
            file=sys.stderr,
            flush=True,
        )

    def delta(self, question: ReplayQuestion, text: str) -> None:
        if self.open_question != question.id:
            self.open_question = question.id
            print(f"[{clock(question.t)}] Q: {question.question}\n         A: ", end="", flush=True)
        print(text, end="", flush=True)

    def result(self, result: ReplayResult) -> None:
        if self.open_question != result.id:
            print(f"[{clock(result.t)}] Q: {result.question}\n         A: {result.answer}", end="")
        self.open_question = None
        evidence = ", ".join(f"{clock(a)}-{clock(b)}" for a, b in result.evidence) or "none"
        verdict = "" if result.correct is None else f"  [{'correct' if result.correct else 'wrong'}: {result.expected}]"
        if result.funnel is not None and result.funnel["lost_at"] is not None:
            verdict += f" lost at: {result.funnel['lost_at']}"
        print(
            f"\n         TTFT {result.ttft_ms:.0f} ms, total {result.latency_ms:.0f} ms, evidence {evidence}{verdict}"
        )

    def summary(self, summary: ReplaySummary) -> None:
        accuracy = "n/a" if summary.accuracy is None else f"{summary.accuracy:.0%} ({summary.correct}/{summary.scored})"
        split = ", ".join(f"{k} {v:.0f}" for k, v in summary.ingest_ms_per_frame.items())
        print(
            f"\nSummary: {summary.questions} questions, accuracy {accuracy}; "
            f"TTFT mean {summary.ttft_ms_mean:.0f} ms, median {summary.ttft_ms_median:.0f} ms; "
            f"{summary.frames_ingested} frames ingested; "
            f"resident tokens {summary.resident_tokens}/{summary.budget_tokens}"
            f"\nIngest ms per frame: {split}"
        )
        if summary.funnel:
            steps = ", ".join(f"{step} {share:.0%}" for step, share in summary.funnel.items() if step != "traced")
            print(f"Funnel ({summary.funnel['traced']:.0f} questions with a key): {steps}")


def run_replay(args: argparse.Namespace, video: Path, questions_path: Path, out: Path | None) -> int:
    from sources.file import FileSource
    from streamer.replay import Replay, check_question_times, load_questions, write_results

    # Check every input before the models load, so a mistake costs a second, not a minute.
    questions = load_questions(questions_path)
    source = FileSource(video, fps=args.fps, realtime=args.realtime)
    try:
        check_question_times(questions, source)
        engine = _engine(args)
    except BaseException:
        source.close()
        raise
    replay = Replay(engine, source, questions)
    printer = Printer(args.quiet)
    duration = replay.source.duration
    if not args.quiet:
        print(
            f"Replaying {video.name} ({clock(duration)}) at {args.fps:g} fps with {len(questions)} questions.",
            file=sys.stderr,
            flush=True,
        )

    fed = 0

    def progress(info: FrameInfo) -> None:
        nonlocal fed
        fed += 1
        printer.progress(fed, info.t, duration)

    results = asyncio.run(replay.run(on_delta=printer.delta, on_result=printer.result, on_frame=progress))
    summary = replay.summary(results)
    printer.summary(summary)
    if out is not None:
        write_results(out, results, summary)
        print(f"Wrote {len(results)} answers to {out}", file=sys.stderr)
    return 0


def _engine(args: argparse.Namespace) -> Engine:
    from streamer.engine import Engine
    from streamer.models import load_adapter

    config = engine_config(args)
    if not args.quiet:
        print("Loading models...", file=sys.stderr, flush=True)
    engine = Engine(load_adapter(choice_from_args(args)), config)
    engine.check_budget(args.fps)
    return engine


def run_demo(args: argparse.Namespace) -> int:
    from streamer.evaluation.needles import build_demo_stream
    from streamer.llm import cache_dir

    if not args.quiet:
        print(
            "Building the demo stream from packaged footage (reused once built)...",
            file=sys.stderr,
            flush=True,
        )
    stream = build_demo_stream(cache_dir() / "demo", seed=args.seed)
    if not args.quiet:
        for needle in stream.needles:
            print(
                f"  needle: {needle.kind} '{needle.content}' at {clock(needle.start)}-{clock(needle.end)}",
                file=sys.stderr,
            )
    return run_replay(args, stream.video, stream.questions_path, args.out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command != "ask":  # the websocket client needs none of the models
            from streamer.environment import check_environment

            check_environment()
        if args.command in SERVER_COMMANDS:
            return run_server_command(args)
        if args.command in EVALUATION_COMMANDS:
            return run_evaluation_command(args, "streamer " + shlex.join(sys.argv[1:] if argv is None else argv))
        check_options(args)
        if args.command == "demo":
            return run_demo(args)
        return run_replay(args, args.video, args.questions, args.out)
    except USER_ERRORS as exc:
        print(f"streamer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("streamer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
