"""Memory policies at equal token budgets: needle retention and QA accuracy, with a table and a plot.

A stream is generated from the packaged footage with signs (a word each) shown for 4 s at spread-out
times. After the whole stream has been ingested, each sign is asked about by its time ("What word was
written on the sign shown at 02:13?"). Every policy runs on the same frames with the same query path
(MiniLM retrieval + the recent window + the frames around the time named), so only what the memory
kept differs. Budgets are shares of the stream's full token count (every frame described in full),
counted in KV tokens the memory may hold for frames; there is no host tier.

Policies: curvature (clear/fuzzy tiers from the curvature scorer, demotion by KV compression, least
informative dropped first), uniform sampling, fifo window, and equal (the same tiers machinery with
every frame clear: retrieval without curvature).

Each question is asked twice of the same memory: re-reading the frames it chose (`answer_from="text"`)
and reading their KV as cached at ingest (the default). Frames are described once per detail and the
descriptions reused across runs, so the runs differ only in memory. Usage:

    python scripts/eval_memory.py [--minutes 6] [--signs 10] [--seeds 0 1] [--budgets 5 10 25]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sources.file import FileSource
from sources.frame import Frame, SourceEnded
from streamer.adapters.base import FrameLook, FrameTokens
from streamer.adapters.embedded import EmbeddedAdapter
from streamer.clock import clock
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import AnswerSource, MemoryConfig
from streamer.evaluation.needles import SIGN_WORDS, Needle, build_stream
from streamer.llm import cache_dir
from streamer.query import Answer

POLICIES = ("curvature", "equal", "uniform", "fifo")
# How each question reads the frames it chose: their tokens again after the sink, and their KV as cached
# at ingest (the default).
ANSWER_FROM: tuple[AnswerSource, ...] = ("text", "cache")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Sign:
    word: str
    start: float
    end: float

    @property
    def question(self) -> str:
        return f"What word was written on the sign shown at {clock(self.start + 1.0)}?"


class DescriptionCache:
    """Encodes each frame at most once per detail; the adapter's `look` and `encode` read from it.

    With `path`, descriptions (text, features, text vector, timings) are also kept on disk per video, so a
    second run over the same stream skips the vision models; the LM embeddings are recomputed from the text.
    """

    def __init__(self, adapter: EmbeddedAdapter) -> None:
        self.adapter = adapter
        self.look, self.encode = adapter.look, adapter.encode
        self.tokens: dict[tuple[int, str], FrameTokens] = {}
        self.path: Path | None = None
        adapter.look = self.cached_look  # type: ignore[method-assign]
        adapter.encode = self.cached_encode  # type: ignore[method-assign]

    def open(self, path: Path) -> None:
        """Start a new stream whose descriptions are kept in `path` (read now if it exists)."""
        self.tokens.clear()
        self.path = path
        if not path.exists():
            return
        for key, (text, detail, features, vector, timings) in torch.load(path, weights_only=False).items():
            ids = self.adapter.ids(text + "\n")
            embeds = self.adapter.embed_ids(ids)
            self.tokens[key] = FrameTokens(embeds, text, detail, features, vector, timings, token_ids=ids[0].tolist())

    def save(self) -> None:
        if self.path is None:
            return
        stored = {k: (t.text, t.detail, t.features, t.text_vector, t.timings_ms) for k, t in self.tokens.items()}
        torch.save(stored, self.path)

    def cached_look(self, frames: Sequence[Frame]) -> list[FrameLook]:
        """Each frame's look, from its full encoding (made now if it is new)."""
        return [FrameLook(self.frame_tokens(frame, "full").features) for frame in frames]

    def cached_encode(
        self, frames: Sequence[Frame], looks: Sequence[FrameLook], details: Sequence[str]
    ) -> list[FrameTokens]:
        return [self.frame_tokens(frame, detail) for frame, detail in zip(frames, details, strict=True)]

    def frame_tokens(self, frame: Frame, detail: str) -> FrameTokens:
        key = (frame.sequence, detail)
        if key not in self.tokens:
            self.tokens[key] = self.encode([frame], self.look([frame]), [detail])[0]
        return self.tokens[key]


def plan_signs(minutes: float, count: int, seed: int) -> list[Sign]:
    """`count` signs, 4 s each, one per equal slot between 20 s and 60 s before the end."""
    rng = random.Random(seed)
    words = rng.sample(SIGN_WORDS, count)
    first, last = 20.0, minutes * 60 - 60.0
    slot = (last - first) / count
    return [Sign(w, round(first + i * slot + rng.uniform(0, slot - 6.0)), 0.0) for i, w in enumerate(words)]


def load_frames(video: Path) -> list[Frame]:
    async def read() -> list[Frame]:
        source = FileSource(video, fps=1.0)
        frames = []
        try:
            while True:
                frames.append(await source.recv())
        except SourceEnded:
            return frames
        finally:
            source.close()

    return asyncio.run(read())


def run_policy(
    adapter: EmbeddedAdapter, frames: list[Frame], signs: list[Sign], policy: str, frame_budget: int, ask: bool = True
) -> dict[str, Any]:
    probe = EngineConfig()
    config = EngineConfig(
        memory=MemoryConfig(
            policy=policy,
            budget_tokens=frame_budget + probe.answer_reserve + sink_tokens(adapter),
            host_budget_tokens=0,
            evict_chunk=32,
        )
    )
    engine = Engine(adapter, config)
    engine.add_stream("eval")
    started = time.perf_counter()
    for frame in frames:
        engine.push_frame("eval", frame)
    ingest_s = time.perf_counter() - started
    memory = engine.memory("eval")
    assert memory.resident_tokens <= config.memory.budget_tokens
    answers = []
    for sign in signs:
        # The memory is the same for both ways of reading it: ask once from the cached KV, once re-reading.
        replies: dict[str, Answer | None] = {}
        for answer_from in ANSWER_FROM:
            engine.config.answer.source = answer_from
            replies[answer_from] = engine.ask("eval", sign.question).result() if ask else None
        answer, cached = replies["text"], replies["cache"]
        shown = [r for r in memory.records if sign.start <= r.stream_time < sign.end]
        # Retained: a frame showing the sign, with its word read, still on the device with its KV whole.
        retained = any(r.resident and not r.compressed and sign.word.lower() in r.text.lower() for r in shown)
        answers.append(
            {
                "word": sign.word,
                "t": sign.start,
                "question": sign.question,
                "answer": answer.text if answer else None,
                "correct": sign.word.lower() in answer.text.lower() if answer else None,
                "retained": retained,
                "retained_compressed": any(
                    r.resident and r.compressed and sign.word.lower() in r.text.lower() for r in shown
                ),
                "ttft_ms": round(answer.ttft_ms, 1) if answer else None,
                "answer_cache": cached.text if cached else None,
                "correct_cache": sign.word.lower() in cached.text.lower() if cached else None,
                "ttft_ms_cache": round(cached.ttft_ms, 1) if cached else None,
                "frames": [
                    {
                        "t": r.stream_time,
                        "tier": r.tier,
                        "detail": r.detail,
                        "margin": round(r.margin, 4),
                        "location": r.location,
                        "compressed": r.compressed,
                    }
                    for r in shown
                ],
            }
        )
    records = memory.records
    describe_ms = float(
        np.mean([sum(v for k, v in s_timings.items() if k != "prefill") for s_timings in _timings(engine)])
    )
    return {
        "policy": policy,
        "frame_budget": frame_budget,
        "resident_tokens": memory.resident_tokens,
        "clear_frames": sum(r.detail == "full" for r in records),
        "frames": len(records),
        "describe_ms_per_frame": round(describe_ms, 1),
        "ingest_s": round(ingest_s, 1),
        "answers": answers,
    }


def _timings(engine: Engine) -> list[dict[str, float]]:
    # Per-frame description cost of the detail each frame actually got.
    cache: DescriptionCache = engine.adapter.encode.__self__  # type: ignore[attr-defined]
    return [cache.tokens[(r.sequence, r.detail)].timings_ms for r in engine.memory("eval").records]


def stand_in_lm(adapter: EmbeddedAdapter) -> EmbeddedAdapter:
    """The same adapter with a 2-layer random LM of the same vocabulary in place of SmolLM2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    real = adapter.model.config
    config = LlamaConfig(
        vocab_size=real.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=real.max_position_embeddings,
    )
    model = LlamaForCausalLM(config).eval()
    return EmbeddedAdapter(adapter.describer, adapter.tokenizer, model, "stand-in LM", adapter.embedder)


def sink_tokens(adapter: EmbeddedAdapter) -> int:
    return int(adapter.system_embeds().shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--signs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budgets", type=float, nargs="+", default=[5.0, 10.0, 25.0], help="percent of full tokens")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument(
        "--retention-only",
        action="store_true",
        help="measure needle retention only: a tiny random LM with the same tokenizer stands in for SmolLM2 "
        "(what the policies keep depends only on token counts) and no questions are asked",
    )
    parser.add_argument("--rebuild", action="store_true", help="build the streams again even if they exist")
    parser.add_argument("--out", type=Path, default=RESULTS / "eval_memory")
    args = parser.parse_args()

    adapter = EmbeddedAdapter.load()
    if args.retention_only:
        adapter = stand_in_lm(adapter)
    cache = DescriptionCache(adapter)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        signs = plan_signs(args.minutes, args.signs, seed)
        for sign in signs:
            sign.end = sign.start + 4.0
        needles = [Needle("sign", s.start, s.end, s.word) for s in signs]
        video = cache_dir() / "eval" / f"memory-eval-{args.minutes:g}min-seed{seed}.mp4"
        print(f"seed {seed}: building {args.minutes:g} min stream with {len(signs)} signs", file=sys.stderr)
        if args.rebuild or not video.exists():
            build_stream(video, needles, [], duration=args.minutes * 60, fps=4.0, seed=seed)
            video.with_suffix(".descriptions.pt").unlink(missing_ok=True)
        frames = load_frames(video)
        cache.open(video.with_suffix(".descriptions.pt"))
        started = time.perf_counter()
        full_tokens = sum(cache.frame_tokens(f, "full").length for f in frames)
        print(f"  {len(frames)} frames described in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        for percent in args.budgets:
            frame_budget = int(full_tokens * percent / 100)
            for policy in args.policies:
                run = run_policy(adapter, frames, signs, policy, frame_budget, ask=not args.retention_only)
                run.update(seed=seed, budget_percent=percent, full_tokens=full_tokens)
                runs.append(run)
                cache.save()
                accuracy = np.mean([bool(a["correct"]) for a in run["answers"]])
                retention = np.mean([a["retained"] for a in run["answers"]])
                print(
                    f"  {percent:g}% {policy:9s} accuracy {accuracy:.2f} retention {retention:.2f} "
                    f"({run['ingest_s']} s)",
                    file=sys.stderr,
                )
    report(runs, args)


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    rows = []
    table: dict[str, dict[float, tuple[float, float, float]]] = {}
    for policy in args.policies:
        for percent in args.budgets:
            chosen = [r for r in runs if r["policy"] == policy and r["budget_percent"] == percent]
            answers = [a for r in chosen for a in r["answers"]]
            accuracy = cached = float("nan")
            if not args.retention_only:
                accuracy = float(np.mean([a["correct"] for a in answers]))
                cached = float(np.mean([a["correct_cache"] for a in answers]))
            retention = float(np.mean([a["retained"] for a in answers]))
            table.setdefault(policy, {})[percent] = (accuracy, retention, cached)
            clear = np.mean([r["clear_frames"] / r["frames"] for r in chosen])
            describe = np.mean([r["describe_ms_per_frame"] for r in chosen])
            shown = "n/a | n/a" if args.retention_only else f"{accuracy:.2f} | {cached:.2f}"
            ttft = "n/a | n/a"
            if not args.retention_only:
                ttft = " | ".join(f"{np.median([a[key] for a in answers]):.0f}" for key in ("ttft_ms", "ttft_ms_cache"))
            rows.append(
                f"| {policy} | {percent:g}% | {shown} | {retention:.2f} | {clear:.2f} | {describe:.0f} | {ttft} | "
                f"{len(answers)} |"
            )
    questions = sum(len(r["answers"]) for r in runs if r["policy"] == args.policies[0]) // len(args.budgets)
    lines = [
        f"Command: `python scripts/eval_memory.py --minutes {args.minutes:g} --signs {args.signs} "
        f"--seeds {' '.join(map(str, args.seeds))} --budgets {' '.join(f'{b:g}' for b in args.budgets)}"
        + (f" --policies {' '.join(args.policies)}" if tuple(args.policies) != POLICIES else "")
        + (" --retention-only`" if args.retention_only else "`"),
        "",
        f"{len(args.seeds)} streams of {args.minutes:g} min at 1 fps, {questions} sign questions per policy "
        "and budget; budget = share of the stream's full token count held for frames (no host tier). "
        "Needle retained: a frame showing the sign, its word read, still on the device and not compressed."
        + (
            " Retention only: a random 2-layer LM stood in for SmolLM2 and no question was asked."
            if args.retention_only
            else ""
        ),
        "",
        "Accuracy: the answer contains the sign's word; 're-read': the question reads its chosen frames' tokens "
        "again after the cached system prompt (`--answer-from text`), 'cache': it reads their KV as "
        "cached at ingest (the default). TTFT: median ms from the question to the first answer token, each way.",
        "",
        "| policy | budget | accuracy (re-read) | accuracy (cache) | needle retained | clear frames "
        "| describe ms/frame | TTFT re-read | TTFT cache | questions |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    margins = []
    measure = 1 if args.retention_only else 0
    for percent in args.budgets:
        if "curvature" in table:
            for other in ("uniform", "fifo"):
                if other in table:
                    delta = table["curvature"][percent][measure] - table[other][percent][measure]
                    margins.append(f"curvature - {other} at {percent:g}%: {delta:+.2f}")
    lines += ["", ("Retention" if args.retention_only else "Accuracy (re-read)") + " margins: " + "; ".join(margins)]
    text = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    plot(table, args)


def plot(table: dict[str, dict[float, tuple[float, float, float]]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for policy, by_budget in table.items():
        budgets = sorted(by_budget)
        line = axes[0].plot(budgets, [by_budget[b][0] for b in budgets], marker="o", label=policy)[0]
        if not args.retention_only:
            cached = [by_budget[b][2] for b in budgets]
            axes[0].plot(budgets, cached, marker="x", linestyle=":", color=line.get_color(), label=f"{policy} (cache)")
        axes[1].plot(budgets, [by_budget[b][1] for b in budgets], marker="o", label=policy)
    titles = ("QA accuracy (re-read; dotted: cache)", "needle retained at question time")
    for axis, title in zip(axes, titles, strict=True):
        axis.set_xlabel("token budget (% of the stream's full tokens)")
        axis.set_title(title)
        axis.set_ylim(-0.05, 1.05)
        axis.set_xticks(sorted(args.budgets))
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(args.out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
