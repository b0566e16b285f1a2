"""Benchmark: ingest rate, time to first token and memory of a real-size VLM over one long stream.

A randomly initialised LLaVA-OneVision-7B (Qwen2-7B language model, SigLIP-so400m vision tower) or
Qwen2.5-VL-7B (Qwen2.5-7B language model with 3-D M-RoPE, 32-layer window-attention ViT), built from
its config (random weights cost the same time as trained ones, and nothing is downloaded), runs
behind `VisionLanguageAdapter` and an `Engine`. One stream is fed photos from `skimage.data` in a
cycle, as fast as it takes them, with stream times spaced at `--fps`. At each length in `--minutes`
questions are asked and stopped after their first token; device memory, process RSS and the
stream's resident and host tokens are sampled as the stream grows.

    python scripts/bench_gpu.py [--arch {llava-onevision-7b,qwen2.5-vl-7b}] [--minutes 1 10 60] [--fps 1]
                                [--budget 60000] [--host-budget 400000] [--device cuda] [--dtype bfloat16]
                                [--repeats 3] [--memory-every FRAMES] [--tiny] [--out scripts/results/bench_gpu.md]

`--tiny` swaps in the 2-layer model of `--arch`'s family of streamer/adapters/tiny.py in float32,
a smoke test that runs on a CPU in well under a minute:

    python scripts/bench_gpu.py --tiny --device cpu --minutes 0.2 0.5 --out /tmp/bench_gpu_tiny.md
    python scripts/bench_gpu.py --arch qwen2.5-vl-7b --tiny --device cpu --minutes 0.2 0.5 --out /tmp/bench_qwen.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage import data

from memory.errors import BudgetError
from memory.stream_memory import StreamMemory
from sources.frame import Frame
from streamer.adapters.tiny import TINY_TEXT
from streamer.adapters.vlm import VisionLanguageAdapter
from streamer.engine import Engine, EngineConfig
from streamer.engine_config import MemoryConfig
from streamer.errors import UserError
from streamer.llm import resolve_llm
from streamer.query import Answer

NO_CUDA = "No CUDA device: run on a GPU machine, or pass --tiny --device cpu for a smoke test."
QUESTIONS = ("What is in the video?", "What happened at the start?", "What is on screen now?")
TARGET_FPS = 30.0
TARGET_TTFT_MS = 150.0
TARGET_TTFT_SECONDS = 3600.0  # the stream length the TTFT target is set for
FLAT_TOLERANCE = 0.02  # memory counts as flat if it grows by less than this fraction after its budget is full
MEMORY_SAMPLES = 20  # samples over the run when --memory-every is not given
# ChatML, as LLaVA-OneVision's and Qwen2.5-VL's templates render the system and text-only user turns the adapter
# builds.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Architecture:
    """The shape of a VLM: its family, its language model and its vision tower.

    family: "llava_onevision" or "qwen2_5_vl", which says how the model and its processor are built.
    vocab_size: rows of the embedding and the LM head; 0 takes the tokenizer's size.
    pinpoint_grid (LLaVA-OneVision): the image processor's pinpoints are every (rows, cols) multiple of
    the tower's side up to this.
    max_pixels (Qwen2.5-VL): the image processor's pixel limit per image.
    """

    title: str
    family: str
    vocab_size: int
    text: dict[str, Any]
    vision: dict[str, Any]
    pinpoint_grid: int = 0
    max_pixels: int = 0


ARCHITECTURES = {
    "llava-onevision-7b": Architecture(
        title="LLaVA-OneVision-7B",
        family="llava_onevision",
        vocab_size=152064,
        text=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        ),
        # SigLIP-so400m has 27 layers; LLaVA-OneVision reads the penultimate one, so its checkpoint keeps 26.
        vision=dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=26,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
        ),
        pinpoint_grid=6,
    ),
    "qwen2.5-vl-7b": Architecture(
        title="Qwen2.5-VL-7B",
        family="qwen2_5_vl",
        vocab_size=152064,
        text=dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
        ),
        vision=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
            tokens_per_second=2,
        ),
        max_pixels=28 * 28 * 1280,  # the checkpoint's limit; the adapter caps a frame lower
    ),
}
TINY = {
    "llava-onevision-7b": Architecture(
        title="tiny LLaVA-OneVision (the test model)",
        family="llava_onevision",
        vocab_size=0,
        text=TINY_TEXT,
        vision=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=112,
            patch_size=8,
        ),
        pinpoint_grid=2,
    ),
    "qwen2.5-vl-7b": Architecture(
        title="tiny Qwen2.5-VL (the test model)",
        family="qwen2_5_vl",
        vocab_size=0,
        text={
            **TINY_TEXT,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
        },
        vision=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        max_pixels=140 * 140,
    ),
}


@dataclass
class MemorySample:
    """The stream's tokens and the memory in use after `frames` frames; GPU figures are None on a CPU."""

    frames: int
    resident_tokens: int
    host_tokens: int
    device_full: bool  # frames have left the device: its budget was reached
    host_full: bool  # host blocks have been dropped: the host budget was reached
    allocated: int | None
    peak: int | None
    rss: int


@dataclass
class Checkpoint:
    """What was measured after `frames` frames; ingest figures cover the frames since the previous one."""

    frames: int
    memory: MemorySample
    resident_frames: int
    host_frames: int
    push_ms: list[float] = field(default_factory=list)
    push_seconds: float = 0.0
    step_ms: dict[str, float] = field(default_factory=dict)
    ttft_ms: list[float] = field(default_factory=list)
    ask_ms: list[float] = field(default_factory=list)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def llava_onevision_parts(arch: Architecture, tokenizer: Any) -> tuple[Any, Any]:
    """The config and image processor of a LLaVA-OneVision of shape `arch`; adds its tokens to `tokenizer`."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionImageProcessorPil

    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    side, grid = int(arch.vision["image_size"]), range(1, arch.pinpoint_grid + 1)
    pinpoints = [[side * rows, side * cols] for rows in grid for cols in grid]
    images = LlavaOnevisionImageProcessorPil(
        size={"height": side, "width": side}, image_grid_pinpoints=pinpoints, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    config = LlavaOnevisionConfig(
        vision_config={**arch.vision, "model_type": "siglip_vision_model", "vision_use_head": False},
        text_config={**arch.text, "model_type": "qwen2", "vocab_size": max(arch.vocab_size, len(tokenizer))},
        image_token_index=tokenizer.get_vocab()["<image>"],
        video_token_index=tokenizer.get_vocab()["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        image_grid_pinpoints=pinpoints,
    )
    return config, images


def qwen2_5_vl_parts(arch: Architecture, tokenizer: Any) -> tuple[Any, Any]:
    """The config and image processor of a Qwen2.5-VL of shape `arch`; adds its tokens to `tokenizer`."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLImageProcessorPil

    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    vocab = tokenizer.get_vocab()
    config = Qwen2_5_VLConfig(
        text_config={**arch.text, "model_type": "qwen2_5_vl_text", "vocab_size": max(arch.vocab_size, len(tokenizer))},
        vision_config=arch.vision,
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    return config, Qwen2VLImageProcessorPil(max_pixels=arch.max_pixels)


FAMILY_PARTS = {"llava_onevision": llava_onevision_parts, "qwen2_5_vl": qwen2_5_vl_parts}


def build_adapter(arch: Architecture, device: torch.device, dtype: torch.dtype) -> VisionLanguageAdapter:
    """A randomly initialised VLM of shape `arch`, made on `device` in `dtype`, with its processor."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    # The family's own tokenizer is not installable here: SmolLM2's, plus the family's vision tokens.
    tokenizer = AutoTokenizer.from_pretrained(resolve_llm())
    config, images = FAMILY_PARTS[arch.family](arch, tokenizer)
    torch.manual_seed(0)
    # Made where it runs, in its dtype: a 7B model never passes through 30 GB of CPU memory.
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    return VisionLanguageAdapter(model.eval(), tokenizer, images, CHATML_TEMPLATE, arch.title)


def photos() -> list[np.ndarray]:
    """Real photos as BGR frames (OpenCV order), in the order they are cycled."""
    return [
        np.ascontiguousarray(rgb[..., ::-1]) for rgb in (data.chelsea(), data.coffee(), data.astronaut(), data.rocket())
    ]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    """This process's resident set size, from /proc (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def sample_memory(memory: StreamMemory, frames: int, device: torch.device) -> MemorySample:
    cuda = device.type == "cuda"
    return MemorySample(
        frames=frames,
        resident_tokens=memory.resident_tokens,
        host_tokens=memory.host_tokens,
        device_full=memory.evicted_tokens > 0,
        host_full=memory.dropped_tokens > 0,
        allocated=torch.cuda.memory_allocated(device) if cuda else None,
        peak=torch.cuda.max_memory_allocated(device) if cuda else None,
        rss=rss_bytes(),
    )


def first_token(engine: Engine, stream_id: str, question: str) -> tuple[Answer, float]:
    """Ask, stopping after the first token; the answer and the wall ms from `ask()` to its first delta.

    The cancel event is set before asking, so generation ends after one token. A first token that
    decodes to no text (an id past the stand-in tokenizer's vocabulary) yields no delta; the wall time
    then runs to the end of the answer, which is the same moment.
    """
    stop = threading.Event()
    stop.set()
    delta_times: list[float] = []
    started = time.perf_counter()
    answer = engine.ask(stream_id, question, cancel=stop).result(lambda _: delta_times.append(time.perf_counter()))
    ended = delta_times[0] if delta_times else time.perf_counter()
    return answer, (ended - started) * 1000


def warm_up(engine: Engine, pictures: Sequence[np.ndarray], device: torch.device) -> None:
    """One frame and one question on a throwaway stream, so that first-call costs stay out of the figures."""
    engine.add_stream("warm-up")
    engine.push_frame("warm-up", Frame(pictures[0], 0.0, time.time(), 0))
    first_token(engine, "warm-up", QUESTIONS[0])
    engine.remove_stream("warm-up")
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def stream_and_measure(
    engine: Engine,
    pictures: Sequence[np.ndarray],
    targets: Sequence[int],
    fps: float,
    memory_every: int,
    repeats: int,
    device: torch.device,
) -> tuple[list[Checkpoint], list[MemorySample]]:
    """Push frames up to each target count, sampling memory on the way, and ask at each target."""
    engine.add_stream("bench")
    memory = engine.memory("bench")
    checkpoints: list[Checkpoint] = []
    samples = [sample_memory(memory, 0, device)]
    pushed = 0
    for target in targets:
        push_ms: list[float] = []
        totals_before = engine.status("bench").ingest_ms_total
        started = time.perf_counter()
        while pushed < target:
            frame = Frame(pictures[pushed % len(pictures)], pushed / fps, time.time(), pushed)
            pushing = time.perf_counter()
            engine.push_frame("bench", frame)
            synchronize(device)
            push_ms.append((time.perf_counter() - pushing) * 1000)
            pushed += 1
            if pushed % memory_every == 0 and pushed < target:
                samples.append(sample_memory(memory, pushed, device))
                elapsed = time.perf_counter() - started
                progress(
                    f"frame {pushed}/{targets[-1]}: {samples[-1].resident_tokens} tokens resident, "
                    f"{samples[-1].host_tokens} on the host, {len(push_ms) / elapsed:.1f} fps since the last checkpoint"
                )
        push_seconds = time.perf_counter() - started
        samples.append(sample_memory(memory, pushed, device))
        point = Checkpoint(
            frames=pushed,
            memory=samples[-1],
            resident_frames=len(memory.blocks),
            host_frames=len(memory.offloaded),
            push_ms=push_ms,
            push_seconds=push_seconds,
            step_ms={
                step: (total - totals_before.get(step, 0.0)) / len(push_ms)
                for step, total in engine.status("bench").ingest_ms_total.items()
            },
        )
        for _ in range(repeats):
            for question in QUESTIONS:
                answer, ask_ms = first_token(engine, "bench", question)
                point.ttft_ms.append(answer.ttft_ms)
                point.ask_ms.append(ask_ms)
        checkpoints.append(point)
        progress(
            f"checkpoint {pushed} frames ({pushed / fps / 60:g} min): ingest {ingest_fps(point):.1f} fps, "
            f"TTFT from ask() {statistics.median(point.ask_ms):.1f} ms (median of {len(point.ask_ms)})"
        )
    return checkpoints, samples


def ingest_fps(point: Checkpoint) -> float:
    """Frames per second over the checkpoint's frames, by wall time."""
    return len(point.push_ms) / point.push_seconds


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def checkpoint_table(points: Sequence[Checkpoint], fps: float, budget: int, host_budget: int) -> list[str]:
    def row(label: str, cells: Sequence[str], target: str = "") -> str:
        return f"| {label} | " + " | ".join(cells) + f" | {target} |"

    steps = list(points[0].step_ms)
    at_one_hour = f"<= {TARGET_TTFT_MS:g} at {TARGET_TTFT_SECONDS / 60:g} min"
    return [
        row("", [f"{p.frames / fps / 60:g} min ({p.frames} frames)" for p in points], "target"),
        "|---|" + "---:|" * len(points) + "---|",
        row(
            "**ingest fps**, overall (frames / wall s since the last checkpoint)",
            [f"{ingest_fps(p):.1f}" for p in points],
            f">= {TARGET_FPS:g}",
        ),
        row(
            "ingest fps, from the median `push_frame`",
            [f"{1000 / statistics.median(p.push_ms):.1f}" for p in points],
            f">= {TARGET_FPS:g}",
        ),
        row(
            f"ms / frame: {' / '.join(steps)} / rest of `push_frame` (mean)",
            [
                " / ".join(f"{p.step_ms[s]:.1f}" for s in steps)
                + f" / {statistics.fmean(p.push_ms) - sum(p.step_ms.values()):.1f}"
                for p in points
            ],
        ),
        row(
            "**TTFT from `ask()` to the first delta** (ms, median)",
            [f"{statistics.median(p.ask_ms):.1f}" for p in points],
            at_one_hour,
        ),
        row(
            "TTFT, `Answer.ttft_ms` (ms, median)", [f"{statistics.median(p.ttft_ms):.1f}" for p in points], at_one_hour
        ),
        row("tokens resident (sink + frames)", [str(p.memory.resident_tokens) for p in points], f"<= {budget}"),
        row("tokens on the host", [str(p.memory.host_tokens) for p in points], f"<= {host_budget}"),
        row(
            "frames resident / on the host / pushed",
            [f"{p.resident_frames} / {p.host_frames} / {p.frames}" for p in points],
        ),
        row("GPU memory allocated (GiB)", [gib(p.memory.allocated) for p in points], "flat once the budget is full"),
        row("GPU peak allocated since warm-up (GiB)", [gib(p.memory.peak) for p in points]),
        row("process RSS (GiB)", [gib(p.memory.rss) for p in points], "flat once the host budget is full"),
    ]


def memory_table(samples: Sequence[MemorySample], fps: float) -> list[str]:
    lines = [
        "| frames | stream min | tokens resident | tokens on the host | GPU allocated | GPU peak | process RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {s.frames} | {s.frames / fps / 60:.2f} | {s.resident_tokens} | {s.host_tokens} | "
        f"{gib(s.allocated)} | {gib(s.peak)} | {gib(s.rss)} |"
        for s in samples
    ]
    return lines


def flat_verdict(label: str, samples: Sequence[MemorySample], full: Callable[[MemorySample], bool], value: str) -> str:
    """Whether `value` of the samples stayed within FLAT_TOLERANCE from the first sample at which `full` holds."""
    after = [s for s in samples if full(s)]
    if len(after) < 2:
        return (
            f"- {label}: not judged; the budget was full at fewer than two samples (stream longer, or budget smaller)."
        )
    first, last = getattr(after[0], value), getattr(after[-1], value)
    verdict = "met" if last - first <= FLAT_TOLERANCE * first else "NOT met"
    return (
        f"- {label}, frames {after[0].frames} to {after[-1].frames}: {gib(first)} -> {gib(last)} GiB "
        f"({(last - first) / 2**20:+.0f} MiB): {verdict}"
    )


def verdicts(points: Sequence[Checkpoint], samples: Sequence[MemorySample], fps: float, cuda: bool) -> list[str]:
    slowest = min(points, key=ingest_fps)
    lines = [
        f"- Ingest >= {TARGET_FPS:g} fps: {'met' if ingest_fps(slowest) >= TARGET_FPS else 'NOT met'} "
        f"(slowest stretch: {ingest_fps(slowest):.1f} fps, up to {slowest.frames} frames)"
    ]
    long_enough = [p for p in points if p.frames / fps >= TARGET_TTFT_SECONDS]
    if long_enough:
        ttft = statistics.median(long_enough[0].ask_ms)
        lines.append(
            f"- TTFT <= {TARGET_TTFT_MS:g} ms at {TARGET_TTFT_SECONDS / 60:g} min: "
            f"{'met' if ttft <= TARGET_TTFT_MS else 'NOT met'} ({ttft:.1f} ms from `ask()` at "
            f"{long_enough[0].frames / fps / 60:g} min)"
        )
    else:
        lines.append(
            f"- TTFT <= {TARGET_TTFT_MS:g} ms at {TARGET_TTFT_SECONDS / 60:g} min: not measured; the longest stream "
            f"here is {points[-1].frames / fps / 60:g} min."
        )
    if cuda:
        lines.append(
            flat_verdict(
                "GPU memory flat once the device budget is full", samples, lambda s: s.device_full, "allocated"
            )
        )
    lines.append(flat_verdict("Process RSS flat once the host budget is full", samples, lambda s: s.host_full, "rss"))
    return lines


def report(
    args: argparse.Namespace,
    adapter: VisionLanguageAdapter,
    device_name: str,
    points: Sequence[Checkpoint],
    samples: Sequence[MemorySample],
    tokens_per_frame: float,
    weights: int | None,
    run_seconds: float,
) -> str:
    command = "python " + shlex.join(sys.argv)
    when = datetime.now().astimezone().isoformat(timespec="seconds")
    parameters = sum(p.numel() for p in adapter.model.parameters())
    context_window = int(adapter.model.config.get_text_config().max_position_embeddings)
    cuda = args.device.type == "cuda"
    on_gpu = f" ({gib(weights)} GiB on the GPU)" if cuda else ""
    lines = [
        f"# Streaming a random {adapter.name}: ingest, time to first token, memory",
        "",
        f"`{command}`",
        "",
        f"{when}; device {device_name}; dtype {str(args.dtype).removeprefix('torch.')}; "
        f"{parameters / 1e9:.2f} B parameters{on_gpu}; {tokens_per_frame:.0f} tokens per frame (mean); "
        f"budget {args.budget} tokens on the device, {args.host_budget} on the host; "
        f"{args.fps:g} fps of stream time; whole run {run_seconds:.0f} s",
        "",
        f"## At each stream length (TTFT: median of {len(QUESTIONS)} questions x {args.repeats} repeats)",
        "",
        *checkpoint_table(points, args.fps, args.budget, args.host_budget),
        "",
        "## Targets",
        "",
        *verdicts(points, samples, args.fps, cuda),
        "",
        f"## Memory as the stream grows, GiB (every {args.memory_every} frames and at each checkpoint)",
        "",
        *memory_table(samples, args.fps),
        "",
        "- Random weights: every frame and question costs what it costs with trained weights; answers are noise.",
        "  The tokenizer is SmolLM2's with the family's vision tokens (Qwen2's is not installable here).",
        "- Frames: photos from `skimage.data` in a cycle, fed as fast as `push_frame` takes them (no pacing),",
        "  stream times spaced at `--fps`. Ingest is the wall time of `push_frame`: image processing on the CPU,",
        "  vision tower and projector, prefill into the stream's cache, and eviction to the host when the budget",
        "  is full. The adapter's step times are not synchronised: on a GPU the tower's queued work finishes",
        "  in the rest of `push_frame`.",
        "- TTFT: `Engine.ask` with the cancel event set beforehand, so generation stops after one token.",
        "  `Answer.ttft_ms` runs from the start of generation; the `ask()` row also counts the snapshot and the",
        "  block choice (retrieval). Targets are judged on the `ask()` row.",
        f"- Memory counts as flat if it grows by less than {FLAT_TOLERANCE:.0%} after its budget is full.",
    ]
    if args.budget > context_window:
        lines += [
            f"- The language model was trained on {context_window} positions; a resident cache past that runs at",
            "  positions it never saw (the cost is the same). A question reads only the blocks it retrieves,",
            "  re-positioned from 0.",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="llava-onevision-7b", help="model shape")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0], help="stream lengths measured")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second of stream time (default 1)")
    parser.add_argument(
        "--budget", type=int, help="KV tokens on the device per stream (default 60000; 1024 with --tiny)"
    )
    parser.add_argument("--host-budget", type=int, help="KV tokens on the host (default 400000; 512 with --tiny)")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        help="model dtype (default bfloat16; float32 with --tiny)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="times each question is asked per checkpoint (default 3)"
    )
    parser.add_argument(
        "--memory-every", type=int, help=f"frames between memory samples (default: {MEMORY_SAMPLES} samples)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the 2-layer test model of --arch's family in float32: a smoke test"
    )
    parser.add_argument("--out", type=Path, default=Path("scripts/results/bench_gpu.md"), help="markdown output")
    args = parser.parse_args(argv)
    if args.fps <= 0 or min(args.minutes) <= 0:
        parser.error("--fps and --minutes must be positive")
    if args.repeats < 1 or (args.memory_every is not None and args.memory_every < 1):
        parser.error("--repeats and --memory-every must be at least 1")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device} is not a torch device; give cuda, cuda:1 or cpu")
    args.budget = args.budget if args.budget is not None else (1024 if args.tiny else 60000)
    args.host_budget = args.host_budget if args.host_budget is not None else (512 if args.tiny else 400000)
    if args.budget < 256 or args.host_budget < 0:
        parser.error("--budget must be at least 256 tokens and --host-budget at least 0")
    args.dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    args.targets = sorted({max(1, round(m * 60 * args.fps)) for m in args.minutes})
    args.memory_every = args.memory_every or max(1, round(args.targets[-1] / MEMORY_SAMPLES))
    return args


def main() -> int:
    args = parse_args()
    device: torch.device = args.device
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    arch = (TINY if args.tiny else ARCHITECTURES)[args.arch]
    dtype_name = str(args.dtype).removeprefix("torch.")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    started = time.perf_counter()
    try:
        progress(f"Building a random {arch.title} on {device_name} in {dtype_name}...")
        adapter = build_adapter(arch, device, args.dtype)
        weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        progress(f"Built in {time.perf_counter() - started:.0f} s; warming up...")
        engine = Engine(
            adapter, EngineConfig(memory=MemoryConfig(budget_tokens=args.budget, host_budget_tokens=args.host_budget))
        )
        pictures = photos()
        warm_up(engine, pictures, device)
        points, samples = stream_and_measure(
            engine, pictures, args.targets, args.fps, args.memory_every, args.repeats, device
        )
    except (UserError, BudgetError) as error:
        print(f"bench_gpu: error: {error}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print(f"bench_gpu: error: out of memory on {device_name}; lower --budget or use a larger GPU.", file=sys.stderr)
        return 2
    tokens_per_frame = statistics.fmean(record.tokens for record in engine.memory("bench").records)
    text = report(args, adapter, device_name, points, samples, tokens_per_frame, weights, time.perf_counter() - started)
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    progress(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
