"""Dominant colour names of a frame, from a small named palette.

Every pixel of a shrunk copy gets one palette name from its hue, saturation and brightness. Pixel
counts alone let large dull areas (walls, sky, tarmac) drown a small vivid object, which is usually
what a viewer calls "the colour" of the scene, so chromatic pixels count up to three times, in
proportion to their saturation. A saturated red object covering 8% of a grey frame then holds about
a fifth of the weight and is reported.
"""

from __future__ import annotations

import cv2
import numpy as np

PALETTE = (
    "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "brown", "black", "white", "grey",
)  # fmt: skip

# Upper hue bounds (OpenCV hue runs 0..179, half of degrees) of the chromatic names, in hue order;
# hues from 170 wrap round to red.
_HUE_BOUNDS = ((8, "red"), (20, "orange"), (33, "yellow"), (80, "green"), (97, "cyan"), (130, "blue"),
               (150, "purple"), (170, "pink"), (180, "red"))  # fmt: skip
_WORK_WIDTH = 160
_CHROMA_BOOST = 2.0


def dominant_colours(frame_bgr: np.ndarray, limit: int = 3, min_share: float = 0.06) -> list[str]:
    """Up to `limit` palette names of an H x W x 3 uint8 BGR frame, most prominent first.

    A name is kept when its weighted share of the frame is at least `min_share`.
    """
    height, width = frame_bgr.shape[:2]
    if width > _WORK_WIDTH:
        size = (_WORK_WIDTH, max(1, round(height * _WORK_WIDTH / width)))
        frame_bgr = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.int32)
    names, weights = _classify(hsv[:, 0], hsv[:, 1], hsv[:, 2])
    totals = np.bincount(names, weights=weights, minlength=len(PALETTE))
    shares = totals / totals.sum()
    ranked = [int(index) for index in np.argsort(-shares, kind="stable") if shares[index] >= min_share]
    return [PALETTE[index] for index in ranked[:limit]]


def _classify(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Palette index and weight of each pixel (OpenCV HSV, all 1-d int arrays of equal length)."""
    index = {name: position for position, name in enumerate(PALETTE)}
    names = np.full(hue.shape, index["grey"], dtype=np.int64)
    lower = 0
    for upper, name in _HUE_BOUNDS:
        names[(hue >= lower) & (hue < upper)] = index[name]
        lower = upper
    reddish = (names == index["red"]) | (names == index["orange"]) | (names == index["yellow"])
    # Dark oranges and reds read as brown; pale reds and magentas read as pink.
    names[reddish & (hue >= 5) & (hue < 30) & (value < 160)] = index["brown"]
    names[(names == index["red"]) & (saturation < 140) & (value >= 170)] = index["pink"]
    chroma = saturation * value // 255
    achromatic = (saturation < 50) | (chroma < 30)
    names[achromatic] = index["grey"]
    names[achromatic & (value >= 200)] = index["white"]
    names[value < 50] = index["black"]
    weights = np.where(achromatic | (value < 50), 1.0, 1.0 + _CHROMA_BOOST * saturation / 255.0)
    return names, weights
