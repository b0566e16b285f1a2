"""Describe each frame once, however many configurations replay it.

The vision side of the embedded adapter (classifier, detector, OCR, colours) does not depend on the
memory policy, the budget or the language model, and it is most of the cost of ingest. A suite that
replays one stream under twelve configurations would otherwise describe every frame twelve times.
`CachedDescriber` keys each frame's full description by a hash of its pixels and hands it out again;
a terse description is the full one without the detector's and OCR's findings, which is what the
describer's own terse path produces (it runs the classifier and colours only). The timings handed
out are those the original run measured for the parts the requested detail runs, so ingest
statistics still report what describing costs.

The descriptions of a suite's stream are also kept on disk beside its video (`save` / `load`), under a
fingerprint of the vision code and the installed vision packages, so running the same suite again
replays at once; a change to either describes the frames afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from streamer.vision.describer import Descriptions, FrameDescription, Frames, Parts
from streamer.vision.detector import DetectedObject
from streamer.vision.text_embedder import TextEmbedder

_TERSE_PARTS = ("features", "colours")


class CachedDescriber:
    """Wraps a `FrameDescriber`: the same pixels are described once, in full, and reused."""

    def __init__(self, describer: Any) -> None:
        self.describer = describer
        self.descriptions: dict[bytes, FrameDescription] = {}
        self.hits = 0

    def describe(self, frame_bgr: np.ndarray, detail: str = "full") -> FrameDescription:
        return self.describe_batch([frame_bgr], [detail])[0]

    def describe_batch(self, frames_bgr: Frames, details: Sequence[str], batched: Parts = ()) -> Descriptions:
        """As `FrameDescriber.describe_batch`."""
        return self.finish_batch(frames_bgr, self.look_batch(frames_bgr, batched), details, batched)

    def look_batch(self, frames_bgr: Frames, batched: Parts = ()) -> Descriptions:
        """Each frame's full description (described now if it is new): it holds the look's features and labels."""
        keys = [_pixels_key(frame) for frame in frames_bgr]
        missing = {key: frame for key, frame in zip(keys, frames_bgr, strict=True) if key not in self.descriptions}
        if missing:
            described = self.describer.describe_batch(list(missing.values()), ["full"] * len(missing), batched=batched)
            self.descriptions.update(zip(missing, described, strict=True))
        self.hits += len(keys) - len(missing)
        return [self.descriptions[key] for key in keys]

    def finish_batch(
        self, frames_bgr: Frames, looks: Sequence[FrameDescription], details: Sequence[str], batched: Parts = ()
    ) -> Descriptions:
        """The full descriptions `look_batch` gave, at each frame's detail."""
        return [self._as(full, detail) for full, detail in zip(looks, details, strict=True)]

    def clear(self) -> None:
        """Forget every description (when a suite moves on to another stream)."""
        self.descriptions.clear()

    def save(self, path: Path) -> None:
        """Write every description to `path` (an .npz), atomically; a failure to write only costs a later
        run the describing."""
        if not self.descriptions:
            return
        keys = list(self.descriptions)
        found = [self.descriptions[key] for key in keys]
        fields = [
            {
                "labels": d.labels,
                "objects": [[o.name, o.score, o.count] for o in d.objects],
                "text": d.text,
                "colours": d.colours,
                "timings_ms": d.timings_ms,
            }
            for d in found
        ]
        partial = path.with_name(path.name + ".partial.npz")
        try:
            np.savez(
                partial,
                keys=np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), -1),
                features=np.stack([d.features for d in found]),
                fields=np.array(json.dumps(fields)),
            )
            os.replace(partial, path)
        except OSError:
            partial.unlink(missing_ok=True)

    def load(self, path: Path) -> int:
        """Add the descriptions saved at `path`; how many (0 when there is no readable file)."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                keys, features, fields = saved["keys"], saved["features"], json.loads(str(saved["fields"]))
        except (OSError, KeyError, ValueError):
            return 0
        for key, vector, found in zip(keys, features, fields, strict=True):
            self.descriptions[key.tobytes()] = FrameDescription(
                features=vector,
                labels=[(name, float(p)) for name, p in found["labels"]],
                objects=[DetectedObject(name, float(score), int(count)) for name, score, count in found["objects"]],
                text=list(found["text"]),
                colours=list(found["colours"]),
                timings_ms={part: float(ms) for part, ms in found["timings_ms"].items()},
            )
        return len(keys)

    @staticmethod
    def _as(full: FrameDescription, detail: str) -> FrameDescription:
        if detail == "full":
            return full
        timings = {part: ms for part, ms in full.timings_ms.items() if part in _TERSE_PARTS}
        return dataclasses.replace(full, objects=[], text=[], timings_ms=timings, detail=detail)


def vision_fingerprint() -> str:
    """A short hash of what decides a frame's description: the vision code and the installed versions of
    the packages whose models it runs."""
    digest = hashlib.blake2b(digest_size=6)
    vision = Path(__file__).resolve().parent.parent / "vision"
    for source in sorted(vision.glob("*.py")):
        if source.name != "text_embedder.py":  # embeds descriptions; does not make them
            digest.update(source.name.encode() + source.read_bytes())
    for package in ("opencv-python", "rapidocr-onnxruntime", "onnxruntime", "numpy", "torch"):
        try:
            digest.update(f"{package}={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package}=none".encode())
    return digest.hexdigest()


def descriptions_path(video: Path, fps: float) -> Path:
    """Where the descriptions of `video` sampled at `fps` are kept."""
    return video.with_name(f"{video.stem}.descriptions-{fps:g}fps-{vision_fingerprint()}.npz")


def _pixels_key(frame_bgr: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(frame_bgr).data, digest_size=16).digest()


class CachedTextEmbedder(TextEmbedder):
    """A `TextEmbedder` sharing `inner`'s loaded model that embeds each distinct text once."""

    def __init__(self, inner: TextEmbedder) -> None:
        # Wraps the loaded model instead of loading another, so TextEmbedder.__init__ is not called.
        self.inner = inner
        self.vectors: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [text for text in dict.fromkeys(texts) if text not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.inner.embed(missing), strict=True))
        return np.stack([self.vectors[text] for text in texts]) if texts else np.zeros((0, 384), np.float32)

    def clear(self) -> None:
        self.vectors.clear()
