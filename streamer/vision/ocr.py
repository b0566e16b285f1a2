"""Text in frames, read with RapidOCR (PP-OCRv4 detection and recognition on onnxruntime).

Text boxes are found on a copy of the frame shrunk to at most 960 px on its longest side, then read
from crops of the full-resolution frame. Measured on this project's 2-core machine: a 1920 x 1080
sign frame took 1.4 s with RapidOCR's defaults and 0.2 s this way with the same text read; shrinking
the whole frame instead was as fast but merged small words ("Platform9departures"). RapidOCR's
default also upscales small frames to 736 px on the short side before detection, which tripled the
cost of a 640 x 360 frame (0.5 s against 0.15 s) without reading more.

The detector finds lines, and often single words: a sign saying "DOCK 61" on two lines comes back as
"DOCK" and "61". What a reader takes as one piece of text (a sign, a caption, a label) is a block of
lines of about the same height set close together, so lines are joined into blocks before they are
returned: the answer to "what did the sign say" and the event timeline's text items are the whole sign.
"""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np

from streamer.errors import ModelPackageMissing

DETECTION_SIDE = 960


def check_ocr() -> None:
    """Raise ModelPackageMissing unless RapidOCR (with its PP-OCR models) is installed; imports nothing."""
    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        raise ModelPackageMissing("rapidocr-onnxruntime", "PP-OCR text recognition")


class TextReader:
    """Reads the text lines of a BGR frame, in reading order (top to bottom, then left to right).

    threads: onnxruntime intra-op threads per model; None keeps onnxruntime's default (all cores).
    One thread read a 640 x 360 frame in 75-90 ms against 160-175 ms for the default while other
    processes were busy on the 2-core machine.
    """

    def __init__(
        self, min_confidence: float = 0.8, detection_side: int = DETECTION_SIDE, threads: int | None = 1
    ) -> None:
        check_ocr()
        from rapidocr_onnxruntime import RapidOCR

        self.min_confidence = min_confidence
        self.detection_side = detection_side
        # "max" keeps detection at the (already shrunk) input size instead of upscaling small frames.
        self.engine = RapidOCR(
            det_limit_type="max", det_limit_side_len=detection_side, intra_op_num_threads=threads or -1
        )

    def read(self, frame_bgr: np.ndarray) -> list[str]:
        """Text lines recognised with at least min_confidence in one H x W x 3 uint8 BGR frame."""
        scale = min(1.0, self.detection_side / max(frame_bgr.shape[:2]))
        small = frame_bgr
        if scale < 1.0:
            size = (round(frame_bgr.shape[1] * scale), round(frame_bgr.shape[0] * scale))
            small = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)
        # RapidOCR's three stages are called directly so detection and recognition can see different
        # resolutions; its __call__ runs both on one image.
        boxes, _ = self.engine.text_det(small)
        if boxes is None or len(boxes) == 0:
            return []
        quads = [np.asarray(box, dtype=np.float32) / scale for box in boxes]
        crops = [_crop_quad(frame_bgr, quad) for quad in quads]
        crops, _, _ = self.engine.text_cls(crops)
        recognised, _ = self.engine.text_rec(crops)
        lines = [
            (quad, str(result[0]).strip())
            for quad, result in zip(quads, recognised, strict=True)
            if float(result[1]) >= self.min_confidence and str(result[0]).strip()
        ]
        return [" ".join(text for _, text in _reading_order(block)) for block in text_blocks(lines)]


def _crop_quad(frame: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The text box `quad` (4 x 2 corners, clockwise from top-left) warped upright into a rectangle."""
    width = int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[3] - quad[2])))
    height = int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
    width, height = max(width, 1), max(height, 1)
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    warp = cv2.getPerspectiveTransform(quad, target)
    crop = cv2.warpPerspective(frame, warp, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    # A box much taller than wide is vertical text; the recogniser reads horizontal lines.
    return np.rot90(crop) if height >= 1.5 * width else crop


# Two lines belong to one block when their heights differ by at most this factor and the gap between them
# (vertically for stacked lines, horizontally for words on one line) is at most this share of the smaller
# height; stacked lines must also overlap horizontally.
BLOCK_HEIGHT_RATIO = 1.6
BLOCK_GAP = 1.0


def text_blocks(lines: list[tuple[np.ndarray, str]]) -> list[list[tuple[np.ndarray, str]]]:
    """`lines` (box, text) grouped into blocks of nearby lines of about one size, blocks in reading order
    of their first line."""
    parent = list(range(len(lines)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(lines)):
        for j in range(i + 1, len(lines)):
            if _near(lines[i][0], lines[j][0]):
                parent[root(i)] = root(j)
    groups: dict[int, list[tuple[np.ndarray, str]]] = {}
    for i, line in enumerate(lines):
        groups.setdefault(root(i), []).append(line)
    blocks = [_reading_order(group) for group in groups.values()]
    first = {id(block[0]): block for block in blocks}
    return [first[id(line)] for line in _reading_order([block[0] for block in blocks])]


def _near(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether boxes `a` and `b` (4 x 2 corners) are lines of one block."""
    (ax0, ay0), (ax1, ay1) = a.min(0), a.max(0)
    (bx0, by0), (bx1, by1) = b.min(0), b.max(0)
    ha, hb = ay1 - ay0, by1 - by0
    small = max(1.0, float(min(ha, hb)))
    if max(ha, hb) > BLOCK_HEIGHT_RATIO * small:
        return False
    vertical_gap = max(ay0, by0) - min(ay1, by1)
    horizontal_gap = max(ax0, bx0) - min(ax1, bx1)
    stacked = horizontal_gap < 0 and vertical_gap <= BLOCK_GAP * small
    side_by_side = vertical_gap < -0.5 * small and horizontal_gap <= BLOCK_GAP * small
    return bool(stacked or side_by_side)


def _reading_order(lines: list[tuple[np.ndarray, str]]) -> list[tuple[np.ndarray, str]]:
    """Groups boxes into rows (vertical centres closer than half a box height), rows top to bottom."""
    rows: list[list[tuple[np.ndarray, str]]] = []
    for line in sorted(lines, key=lambda item: float(item[0][:, 1].mean())):
        centre = float(line[0][:, 1].mean())
        height = float(np.ptp(line[0][:, 1]))
        if rows:
            last = rows[-1][-1][0]
            if abs(centre - float(last[:, 1].mean())) < 0.5 * min(height, float(np.ptp(last[:, 1]))):
                rows[-1].append(line)
                continue
        rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda item: float(item[0][:, 0].min()))]
