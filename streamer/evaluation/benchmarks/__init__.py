"""Streaming benchmark adapters: StreamingBench, OVO-Bench and RVS files into replay sessions, and
their answers scored by each benchmark's own rule.

Each module reads its benchmark's files into `BenchmarkSession`s (one video, timestamped events)
and scores a mapping of event id -> answer into a `BenchmarkReport`. `replay_questions` and
`write_replay_questions` turn a session into what `streamer replay` consumes; `read_answers` reads
its results files back.
"""

from streamer.evaluation.benchmarks.common import (
    BenchmarkEvent,
    BenchmarkReport,
    BenchmarkSession,
    TaskScore,
    read_answers,
    replay_questions,
    write_replay_questions,
)

__all__ = [
    "BenchmarkEvent",
    "BenchmarkReport",
    "BenchmarkSession",
    "TaskScore",
    "read_answers",
    "replay_questions",
    "write_replay_questions",
]
