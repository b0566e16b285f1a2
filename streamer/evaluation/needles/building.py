"""Rendering a plan into a video with its manifest and questions, reused while the plan is unchanged."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamer.errors import UserError
from streamer.evaluation.needles.content import (
    GENERATOR_VERSION,
    Needle,
    NeedleStream,
    Question,
    _check_needle,
    write_questions,
)
from streamer.evaluation.needles.drawing import draw_shape, render_photo, render_sign, sign_board_box
from streamer.evaluation.needles.footage import _footage_frames, plan_footage
from streamer.evaluation.needles.planning import plan_demo, plan_suite


def build_demo_stream(out_dir: Path, seed: int = 0, progress: Callable[[float], None] | None = None) -> NeedleStream:
    """The 180 s, 10 fps, 640x360 demo stream in `out_dir` (reused when already built)."""
    duration = 180.0
    needles, questions = plan_demo(seed, duration)
    return build_stream(
        Path(out_dir) / f"needles-demo-seed{seed}.mp4",
        needles,
        questions,
        duration=duration,
        seed=seed,
        progress=progress,
    )


def build_suite(
    out_dir: Path,
    duration_s: float,
    seed: int = 0,
    *,
    spacing_s: float = 60.0,
    shown_s: float = 4.0,
    choice_share: float = 0.5,
    min_delay_s: float = 2.0,
    max_delay_s: float = math.inf,
    fps: float = 2.0,
    size: tuple[int, int] = (640, 360),
    progress: Callable[[float], None] | None = None,
) -> NeedleStream:
    """Render `plan_suite(duration_s, seed, ...)` into `out_dir` with its questions JSONL next to the
    video; the video is reused while the plan and the rendering parameters are unchanged."""
    needles, questions = plan_suite(
        duration_s,
        seed,
        spacing_s=spacing_s,
        shown_s=shown_s,
        choice_share=choice_share,
        min_delay_s=min_delay_s,
        max_delay_s=max_delay_s,
    )
    # The name tells variants of the same length and seed apart, so they do not overwrite each other.
    variant = json.dumps([spacing_s, shown_s, choice_share, fps, list(size)])
    key = hashlib.sha1(variant.encode()).hexdigest()[:8]
    return build_stream(
        Path(out_dir) / f"needles-suite-{duration_s:g}s-seed{seed}-{key}.mp4",
        needles,
        questions,
        duration=duration_s,
        fps=fps,
        size=size,
        seed=seed,
        progress=progress,
    )


def build_stream(
    video: Path,
    needles: Sequence[Needle],
    questions: Sequence[Question],
    duration: float = 180.0,
    fps: float = 10.0,
    size: tuple[int, int] = (640, 360),
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> NeedleStream:
    """Render footage with `needles` to the mp4 `video` and write its questions next to it.

    size is (width, height). When `video` and its manifest (`<name>.json`) already exist with the
    same parameters, nothing is rendered. progress, if given, receives the fraction done.
    """
    video = Path(video)
    for needle in needles:
        _check_needle(needle, duration)
    footage = plan_footage(duration, seed)
    stream = NeedleStream(video, duration, list(needles), list(questions), footage)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "duration": duration,
        "fps": fps,
        "size": list(size),
        "seed": seed,
        "needles": [dataclasses.asdict(needle) for needle in needles],
        "questions": [question.to_json() for question in questions],
    }
    manifest_path = video.with_suffix(".json")
    if video.is_file() and _same_video(_read_manifest(manifest_path), manifest):
        # The pictures are the same; the questions may have changed.
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        write_questions(stream.questions_path, questions)
        return stream

    video.parent.mkdir(parents=True, exist_ok=True)
    # Render under another name so an interrupted build never passes for a finished one.
    partial = video.with_name(video.stem + ".partial.mp4")
    _render(partial, stream, fps, size, progress)
    os.replace(partial, video)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    write_questions(stream.questions_path, questions)
    return stream


def _same_video(old: Any, new: dict[str, Any]) -> bool:
    """Whether a manifest read from disk describes the same pictures as `new` (questions aside)."""
    if not isinstance(old, dict):
        return False
    return {k: v for k, v in old.items() if k != "questions"} == {k: v for k, v in new.items() if k != "questions"}


def _read_manifest(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _render(
    path: Path,
    stream: NeedleStream,
    fps: float,
    size: tuple[int, int],
    progress: Callable[[float], None] | None,
) -> None:
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise UserError(f"Cannot write video '{path}': check that its folder is writable.")
    x0, y0, x1, y1 = sign_board_box(width, height)
    # Signs and photos are rendered once per distinct content, however often they are shown.
    pictures: dict[tuple[str, str], np.ndarray] = {
        (needle.kind, needle.content): render_sign(needle.content, x1 - x0, y1 - y0)
        if needle.kind == "sign"
        else render_photo(needle.content, width, height)
        for needle in stream.needles
        if needle.kind != "shape"
    }
    frame_count = round(stream.duration * fps)
    try:
        for index, frame in enumerate(_footage_frames(stream.footage, frame_count, fps, width, height)):
            t = index / fps
            needle = next((n for n in stream.needles if n.start <= t < n.end), None)
            if needle is not None and needle.kind == "photo":
                frame = pictures[needle.kind, needle.content]
            elif needle is not None and needle.kind == "shape":
                frame = draw_shape(frame, needle.content)
            elif needle is not None:
                frame = frame.copy()
                frame[y0:y1, x0:x1] = pictures[needle.kind, needle.content]
            writer.write(frame)
            if progress is not None and (index + 1) % max(1, round(fps)) == 0:
                progress((index + 1) / frame_count)
    finally:
        writer.release()
    if progress is not None:
        progress(1.0)
