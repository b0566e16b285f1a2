"""The embedded CPU default: describe each frame with real detectors, then reason with a small LM.

No vision-language weights can be installed here, so a frame's tokens are the language model's own
embeddings of a one-line description built from EfficientNet-Lite0 labels, SSD-MobileNet COCO
objects, OCR text and dominant colours, prefixed with the stream time. The LM (SmolLM2-135M-Instruct
by default) reads those lines once, as frames arrive, into its KV cache.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sources.frame import Frame
from streamer.adapters.base import FrameLook, FrameTokens, ModelAdapter
from streamer.clock import clock
from streamer.llm import load_llm, resolve_llm
from streamer.vision.text_embedder import TextEmbedder

if TYPE_CHECKING:
    from streamer.vision.describer import FrameDescription

SYSTEM_PROMPT = (
    "You watch a live video. Each line below describes one video frame: [time] what was seen. "
    "Answer the question about the video briefly, using the frame descriptions."
)
FRAMES_HEADER = "Video frames:\n"
QUESTION_PREFIX = "\nQuestion: "
_SLOT = "\x00frames\x00"
# The stages `encode` can run as one call for several frames, and those it does by default:
# on this project's 2-core CPU only the description embedding (MiniLM) came out faster batched (about
# half its time); EfficientNet-Lite0 cost more per frame in batches of 4-8, and the OpenCV detector
# was no faster than the spread between identical runs (scripts/bench_sources.py, "the same frames").
BATCHABLE_STAGES = frozenset({"features", "detector", "text_embedding"})
BATCHED_STAGES = frozenset({"text_embedding"})


class EmbeddedAdapter(ModelAdapter):
    """Real detectors describe each frame; the LM reads the description ("describe, then reason").

    With a text embedder (MiniLM), descriptions and questions are embedded so a question can pick
    the frames it reads.
    """

    # A full description line with time, labels, objects, text and colours.
    typical_frame_tokens = 40
    describes_frames = True
    # The stages `encode` runs as one call for several frames (of several streams),
    # a subset of BATCHABLE_STAGES.
    batched_stages: frozenset[str] = BATCHED_STAGES

    def __init__(
        self, describer: Any, tokenizer: Any, model: Any, name: str, embedder: TextEmbedder | None = None
    ) -> None:
        super().__init__(model, tokenizer, name)
        self.describer = describer
        self.embedder = embedder
        prefix, suffix = self._chat_frame()
        self.system_text = prefix + FRAMES_HEADER
        self.answer_opening = suffix
        self.stop_ids = {
            i
            for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
            if isinstance(i, int) and i >= 0
        }

    @classmethod
    def load(cls, llm: str | None = None, device: str = "cpu", dtype: Any = None) -> EmbeddedAdapter:
        """The default stack; `llm` is a local HF folder or .gguf file replacing SmolLM2.

        The describer and MiniLM run on the CPU; `device` and `dtype` place the language model.
        """
        from streamer.vision import FrameDescriber

        folder = resolve_llm(llm)
        tokenizer, model = load_llm(folder, dtype=dtype, device=device)
        name = Path(llm).name if llm else "SmolLM2-135M-Instruct"
        return cls(FrameDescriber(), tokenizer, model, name, TextEmbedder())

    def _chat_frame(self) -> tuple[str, str]:
        """The chat template's text before and after the user turn that carries the frames."""
        if not getattr(self.tokenizer, "chat_template", None):
            return SYSTEM_PROMPT + "\n\n", "\nAnswer: "
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": _SLOT}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prefix, suffix = str(text).split(_SLOT)
        return prefix, suffix

    def frame_line(self, stream_time: float, description: str) -> str:
        return f"[{clock(stream_time)}] {description}\n"

    def question_text(self, question: str) -> str:
        return QUESTION_PREFIX + question.strip() + self.answer_opening

    def question_vector(self, question: str) -> np.ndarray | None:
        return self.embedder.embed([question])[0] if self.embedder else None

    def embed_sentences(self, texts: Sequence[str]) -> np.ndarray:
        if self.embedder is None:
            return super().embed_sentences(texts)
        return self.embedder.embed(list(texts))

    @property
    def _vision_batched(self) -> frozenset[str]:
        return self.batched_stages - {"text_embedding"}

    def look(self, frames: Sequence[Frame]) -> list[FrameLook]:
        """The classifier's features and scene labels (the describer's first part); the rest waits for the detail."""
        looks = self.describer.look_batch([frame.pixels for frame in frames], batched=self._vision_batched)
        return [FrameLook(look.features, look, dict(look.timings_ms)) for look in looks]

    def encode(self, frames: Sequence[Frame], looks: Sequence[FrameLook], details: Sequence[str]) -> list[FrameTokens]:
        """Finish describing the frames, running the parts in `batched_stages` once for all of them."""
        if not frames:
            return []
        pixels = [frame.pixels for frame in frames]
        begun = [look.found for look in looks]
        descriptions = self.describer.finish_batch(pixels, begun, details, batched=self._vision_batched)
        rendered = [description.render(description.detail) for description in descriptions]
        timings = [dict(description.timings_ms) for description in descriptions]
        vectors: list[np.ndarray | None] = [None] * len(frames)
        if self.embedder is not None:
            if "text_embedding" in self.batched_stages:
                started = time.perf_counter()
                vectors = list(self.embedder.embed(rendered))
                share = (time.perf_counter() - started) * 1000 / max(1, len(frames))
                for frame_timings in timings:
                    frame_timings["text_embedding"] = share
            else:
                for index, text in enumerate(rendered):
                    started = time.perf_counter()
                    vectors[index] = self.embedder.embed([text])[0]
                    timings[index]["text_embedding"] = (time.perf_counter() - started) * 1000
        tokens = []
        for frame, description, text, vector, frame_timings in zip(
            frames, descriptions, rendered, vectors, timings, strict=True
        ):
            line = self.frame_line(frame.stream_time, text)
            ids = self.ids(line)
            tokens.append(
                FrameTokens(
                    self.embed_ids(ids),
                    line.strip(),
                    description.detail,
                    description.features,
                    vector,
                    frame_timings,
                    token_ids=ids[0].tolist(),
                    items=tuple(description.items()),
                    confidence=item_confidence(description),
                )
            )
        return tokens


def item_confidence(description: FrameDescription) -> tuple[float, ...]:
    """How sure the describer is of each of `description.items()`, in their order: a detection's score, a scene
    label's probability; text lines (read only at the OCR's own minimum confidence) and colours count as sure."""
    sure = [1.0] * len(description.text)
    sure += [float(found.score) for found in description.objects]
    sure += [float(probability) for _, probability in description.labels]
    sure += [1.0] * len(description.colours)
    return tuple(sure)
