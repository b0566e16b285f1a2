"""Drawing needles: sign boards with fitted text, photos letterboxed to the frame, coloured shapes."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from streamer.errors import UserError
from streamer.evaluation.needles.content import FONT_PATH, PHOTO_SUBJECTS, SHAPE_COLOURS


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
    """The photo of `subject` (a key of PHOTO_SUBJECTS), letterboxed, BGR."""
    return letterbox(_photo_bgr(subject), width, height)


def draw_shape(frame: np.ndarray, content: str) -> np.ndarray:
    """A copy of the BGR `frame` with the shape `content` ("<colour> <shape>") filled in its centre,
    as tall as about half the frame."""
    colour_name, shape = content.split()
    colour = SHAPE_COLOURS[colour_name]
    height, width = frame.shape[:2]
    half = int(height * 0.28)
    cx, cy = width // 2, height // 2
    canvas = frame.copy()
    if shape == "circle":
        cv2.circle(canvas, (cx, cy), half, colour, cv2.FILLED, cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(canvas, (cx - half, cy - half), (cx + half, cy + half), colour, cv2.FILLED, cv2.LINE_AA)
    else:
        corners = np.array([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], np.int32)
        cv2.fillPoly(canvas, [corners], colour, cv2.LINE_AA)
    return canvas


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


def _photo_bgr(subject: str) -> np.ndarray:
    """The full-size photo of `subject` as H x W x 3 uint8 BGR."""
    library, name = PHOTO_SUBJECTS[subject]
    if library == "matplotlib":
        if importlib.util.find_spec("matplotlib") is None:
            raise UserError(f"The '{subject}' photo comes with matplotlib: install it with `pip install matplotlib`.")
        from matplotlib import cbook

        path = str(cbook.get_sample_data(name, asfileobj=False))
        photo = cv2.imread(path, cv2.IMREAD_COLOR)
        if photo is None:
            raise UserError(f"Cannot read matplotlib's sample photo '{path}': reinstall matplotlib.")
        return photo
    import skimage.data

    loaded = getattr(skimage.data, name)()
    image = np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)  # of a stereo pair, the left view
    if image.dtype == bool:  # silhouettes
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


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
