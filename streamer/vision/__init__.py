"""Vision models with weights shipped in pip packages: what is in a frame, as data and as one short line."""

from streamer.vision.colours import PALETTE, dominant_colours
from streamer.vision.describer import Detail, FrameDescriber, FrameDescription
from streamer.vision.detector import COCO_NAMES, DetectedObject, ObjectDetector
from streamer.vision.efficientnet import FEATURE_DIM, FrameFeatureExtractor, FrameFeatures
from streamer.vision.ocr import TextReader

__all__ = [
    "COCO_NAMES",
    "FEATURE_DIM",
    "PALETTE",
    "Detail",
    "DetectedObject",
    "FrameDescriber",
    "FrameDescription",
    "FrameFeatureExtractor",
    "FrameFeatures",
    "ObjectDetector",
    "TextReader",
    "dominant_colours",
]
