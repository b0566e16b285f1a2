"""Real vision-language models through transformers: a frame's tokens are its projected vision tokens.

Supported families: SmolVLM (`Idefics3ForConditionalGeneration`, Llama LM) and LLaVA-OneVision
(`LlavaOnevisionForConditionalGeneration`, Qwen2 LM) with 1-D RoPE, and Qwen2.5-VL
(`Qwen2_5_VLForConditionalGeneration`) with 3-D multimodal RoPE. Each frame goes through the model's
own image processor, vision tower and connector (public `get_image_features` / `get_video_features`),
and the resulting tokens are wrapped in the text the model's format puts around a video frame. Terse
frames keep a quarter of the vision tokens: the grid is average-pooled over 2x2 cells.

Position scheme. Cached blocks must be re-positionable exactly: the engine moves a whole block by a
token delta with `rotate_keys`, and a question reads `[sink | blocks | question]` at contiguous
positions. With 1-D RoPE a token's position is its index in the cache. With Qwen2.5-VL's M-RoPE each
token has temporal, height and width positions; a frame block that starts at cache index o gets
`o + streamer.rope.mrope_positions(...)`: text tokens at o + i in all three sections, the vision
grid at (o + g, o + g + row, o + g + col) where g is the grid's first token in the block (the
model's own layout for an image there). The block spans exactly its length in positions, and moving
it adds the same delta to all three sections, which is a plain rotation. Every forward pass gets
these position ids explicitly: the model's default for input embeddings would count 1-D positions,
or add a `rope_deltas` left on the model by an earlier `generate`.

Only this module knows the families apart; the engine sees a `ModelAdapter` like any other.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sources.frame import Frame
from streamer.adapters.base import FrameLook, FrameTokens, ModelAdapter
from streamer.clock import clock
from streamer.errors import UserError
from streamer.rope import mrope_positions

SYSTEM_PROMPT = (
    "You watch a live video. Its frames follow in time order, each after its stream time. "
    "Answer the question about the video briefly."
)
FRAMES_HEADER = "Here are the video's frames."
_SLOT = "\x00frames\x00"
# Frames of several streams a GPU encodes in one vision pass (the ingest scheduler's batch).
GPU_FRAME_BATCH = 4


class VisionFormat(ABC):
    """What one model family does to a picture before its language model reads it."""

    model_type: ClassVar[str]  # `config.model_type` of the checkpoints this format reads
    end_of_turn: ClassVar[str]  # the token that closes an assistant turn
    mrope: ClassVar[bool] = False  # the LM takes 3-D (temporal, height, width) positions, not 1-D ones

    @abstractmethod
    def pixel_inputs(self, image_processor: Any, image: Image.Image, config: Any) -> dict[str, torch.Tensor]:
        """The image processor's tensors for one frame, as the vision tower expects them."""

    @abstractmethod
    def vision_tokens(self, model: Any, pixels: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Projected vision tokens of the frames in `pixels` (several frames' `pixel_inputs` joined by
        `join`), one pair per frame: (rows, cols, hidden) on its spatial grid, and (k, hidden) after it."""

    def join(self, inputs: Sequence[dict[str, torch.Tensor]]) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        """Frames' `pixel_inputs` as batches for one vision pass each: (indices into `inputs`, the joined
        tensors). Frames whose tensors have the same shapes go together, their tensors concatenated along
        the first dimension (each frame is one sample of the tower's batch)."""
        groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[int]] = {}
        for i, pixels in enumerate(inputs):
            shape = tuple((name, tuple(tensor.shape)) for name, tensor in sorted(pixels.items()))
            groups.setdefault(shape, []).append(i)
        return [
            (indices, {name: torch.cat([inputs[i][name] for i in indices]) for name in inputs[indices[0]]})
            for indices in groups.values()
        ]

    @abstractmethod
    def frame_text(self, stream_time: float) -> tuple[str, str]:
        """The text before and after a frame's vision tokens."""


class SmolVLMFormat(VisionFormat):
    """SmolVLM / Idefics3: SigLIP tower, pixel-shuffle connector, Llama LM.

    A frame is one tile (no splitting into sub-images) introduced by its time, as SmolVLM2 prompts
    video: `Frame from MM:SS:<fake_token_around_image><global-img>` tokens `<fake_token_around_image>`.
    """

    model_type = "idefics3"
    end_of_turn = "<end_of_utterance>"

    def pixel_inputs(self, image_processor: Any, image: Image.Image, config: Any) -> dict[str, torch.Tensor]:
        # Straight to one tile: the default first resize would scale the frame up to the splitting size.
        tile = {"longest_edge": image_processor.max_image_size["longest_edge"]}
        inputs = image_processor(images=[[image]], do_image_splitting=False, size=tile, return_tensors="pt")
        return {"pixel_values": inputs["pixel_values"], "pixel_attention_mask": inputs["pixel_attention_mask"]}

    def vision_tokens(self, model: Any, pixels: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        found = []
        for tokens in model.get_image_features(**pixels).pooler_output:  # per frame: (rows * cols, hidden)
            side = math.isqrt(tokens.shape[0])  # the connector's output grid is square, row-major
            found.append((tokens.view(side, side, -1), tokens[:0]))
        return found

    def frame_text(self, stream_time: float) -> tuple[str, str]:
        return f"\nFrame from {clock(stream_time)}:<fake_token_around_image><global-img>", "<fake_token_around_image>"


class LlavaOnevisionFormat(VisionFormat):
    """LLaVA-OneVision: SigLIP tower, MLP projector, Qwen2 LM.

    A frame is read as the model reads video frames: the whole picture at the tower's resolution,
    projected, bilinearly halved on each side by the model, then its learned newline token.
    """

    model_type = "llava_onevision"
    end_of_turn = "<|im_end|>"

    def pixel_inputs(self, image_processor: Any, image: Image.Image, config: Any) -> dict[str, torch.Tensor]:
        side = int(config.vision_config.image_size)
        # A single pinpoint keeps the processor from tiling; its first patch is the whole frame resized.
        inputs = image_processor(images=[image], image_grid_pinpoints=[[side, side]], return_tensors="pt")
        return {"pixel_values_videos": inputs["pixel_values"][:, :1]}  # (1 video, 1 frame, C, H, W)

    def vision_tokens(self, model: Any, pixels: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        found = []
        for tokens in model.get_video_features(**pixels).pooler_output:  # per frame (a 1-frame video): grid, newline
            grid, newline = tokens[:-1], tokens[-1:]
            side = math.isqrt(grid.shape[0])
            found.append((grid.view(side, side, -1), newline))
        return found

    def frame_text(self, stream_time: float) -> tuple[str, str]:
        return f"\nFrame from {clock(stream_time)}:", ""


class QwenVLFormat(VisionFormat):
    """Qwen2.5-VL: a ViT with window attention over 14-pixel patches, 2x2 patch merger, Qwen2.5 LM, M-RoPE.

    A frame is read as one image, `<|vision_start|>` tokens `<|vision_end|>`, after its time. As an
    image rather than a video, each frame is its own block: a video's temporal patches would pair
    consecutive frames into one set of tokens, and the video processor needs torchvision. The tower
    sees the frame twice over its 2-frame temporal patch either way (the image processor repeats it),
    and the frame's time is in its text, where the video path would put it into temporal positions.
    """

    model_type = "qwen2_5_vl"
    end_of_turn = "<|im_end|>"
    mrope = True
    # At most 256 vision tokens (28x28 pixels each) per frame, near LLaVA-OneVision's 196: a frame, not a
    # document. The checkpoint's own limit applies if it is lower.
    max_frame_pixels = 448 * 448

    def pixel_inputs(self, image_processor: Any, image: Image.Image, config: Any) -> dict[str, torch.Tensor]:
        longest = min(int(image_processor.size["longest_edge"]), self.max_frame_pixels)
        shortest = min(int(image_processor.size["shortest_edge"]), longest)
        inputs = image_processor(
            images=[image], size={"shortest_edge": shortest, "longest_edge": longest}, return_tensors="pt"
        )
        return {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}

    def join(self, inputs: Sequence[dict[str, torch.Tensor]]) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        """All frames in one pass, whatever their sizes: the tower takes every frame's patches in one
        sequence and attends within each frame only (its `image_grid_thw` row)."""
        names = ("pixel_values", "image_grid_thw")
        return [(list(range(len(inputs))), {name: torch.cat([pixels[name] for pixels in inputs]) for name in names})]

    def vision_tokens(self, model: Any, pixels: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        merge = int(model.config.vision_config.spatial_merge_size)
        found = []
        per_frame = model.get_image_features(**pixels).pooler_output  # per frame: merged patches, row-major
        for tokens, grid_thw in zip(per_frame, pixels["image_grid_thw"], strict=True):
            _, rows, cols = (int(n) // merge for n in grid_thw)
            found.append((tokens.view(rows, cols, -1), tokens[:0]))
        return found

    def frame_text(self, stream_time: float) -> tuple[str, str]:
        return f"\nFrame from {clock(stream_time)}:<|vision_start|>", "<|vision_end|>"


FORMATS: dict[str, type[VisionFormat]] = {f.model_type: f for f in (SmolVLMFormat, LlavaOnevisionFormat, QwenVLFormat)}


def format_for(config: Any, name: str) -> VisionFormat:
    """The format of a checkpoint's model family, or a UserError naming the families supported."""
    model_type = str(getattr(config, "model_type", ""))
    if model_type not in FORMATS:
        supported = ", ".join(sorted(FORMATS))
        raise UserError(f"'{name}' is a '{model_type}' model; the VLM adapter reads only {supported} checkpoints.")
    return FORMATS[model_type]()


def pool_grid(grid: torch.Tensor) -> torch.Tensor:
    """(rows, cols, hidden) -> (ceil(rows / 2), ceil(cols / 2), hidden): the mean of each 2x2 cell.

    Cells on an odd edge average the tokens they hold.
    """
    channels_first = grid.permute(2, 0, 1).unsqueeze(0).float()
    pooled = F.avg_pool2d(channels_first, kernel_size=2, ceil_mode=True)
    return pooled[0].permute(1, 2, 0).to(grid.dtype)


def bgr_to_image(pixels: np.ndarray) -> Image.Image:
    """A frame's BGR pixels as an RGB PIL image."""
    return Image.fromarray(np.ascontiguousarray(pixels[..., ::-1]))


class VisionLanguageAdapter(ModelAdapter):
    """A transformers VLM; frames become its projected vision tokens.

    Context layout: `[chat opening, system prompt, user turn opening | frame 1 | frame 2 | ... |
    question, user turn close, assistant opening]`, each frame being `frame_text` around its tokens.
    """

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, chat_template: str | None, name: str) -> None:
        super().__init__(model, tokenizer, name)
        self.format = format_for(model.config, name)
        self.image_processor = image_processor
        prefix, suffix = self._chat_frame(chat_template)
        self.system_text = prefix + FRAMES_HEADER
        self.answer_opening = suffix
        self.stop_ids = self._stop_ids()

    @classmethod
    def load(
        cls, model: str, device: str = "cpu", dtype: torch.dtype | None = None, name: str | None = None
    ) -> VisionLanguageAdapter:
        """Load a checkpoint by local path or by a model id already in the Hugging Face cache.

        dtype defaults to float32 on CPU and bfloat16 elsewhere.
        """
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
        from transformers.processing_utils import ProcessorMixin

        dtype = dtype or (torch.float32 if device == "cpu" else torch.bfloat16)
        try:
            format_for(AutoConfig.from_pretrained(model), model)
            tokenizer = AutoTokenizer.from_pretrained(model)
            # The image processor alone, not AutoProcessor: LLaVA-OneVision's processor also builds a
            # video processor, which needs torchvision, and frames never need one.
            image_processor = AutoImageProcessor.from_pretrained(model)
            processor_files, _ = ProcessorMixin.get_processor_dict(model)
            vlm: Any = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype)
        except OSError as error:
            raise UserError(
                f"Cannot load the VLM '{model}' ({error}); give a local model folder or a model id already "
                "in the Hugging Face cache (nothing is downloaded)."
            ) from None
        template = processor_files.get("chat_template") or tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        return cls(vlm.to(device).eval(), tokenizer, image_processor, template, name or Path(model).name)

    def _chat_frame(self, chat_template: str | None) -> tuple[str, str]:
        """The chat template's text before and after the user turn that carries the frames."""
        if not chat_template:
            return SYSTEM_PROMPT + "\n\n", "\nAnswer: "
        messages = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": [{"type": "text", "text": _SLOT}]},
        ]
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False
        )
        prefix, suffix = str(text).split(_SLOT)
        return prefix, suffix

    def _stop_ids(self) -> set[int]:
        generation_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        candidates = [self.tokenizer.eos_token_id, self.tokenizer.get_vocab().get(self.format.end_of_turn)]
        candidates += generation_eos if isinstance(generation_eos, list) else [generation_eos]
        return {i for i in candidates if isinstance(i, int) and i >= 0}

    def question_text(self, question: str) -> str:
        return "\n" + question.strip() + self.answer_opening

    def frame_text(self, stream_time: float) -> tuple[str, str]:
        """The text the model's format puts before and after a frame's vision tokens."""
        return self.format.frame_text(stream_time)

    def position_ids(self, start: int, length: int, offsets: torch.Tensor | None = None) -> torch.Tensor | None:
        """1-D RoPE: None (the model counts on from its cache). M-RoPE: (3, 1, length) explicit ids.

        Tokens without `offsets` (text) take consecutive positions in all three sections.
        """
        if not self.format.mrope:
            return None
        relative = mrope_positions(length) if offsets is None else offsets
        return (relative + start).unsqueeze(1).to(self.device)

    def batch_position_ids(self, lengths: Sequence[int]) -> torch.Tensor:
        """M-RoPE: (3, rows, 1), each row's next text position in all three sections."""
        if not self.format.mrope:
            return super().batch_position_ids(lengths)
        return torch.cat([self.position_ids(length, 1) for length in lengths], dim=1)  # type: ignore[misc]

    def on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on the model's device, in the model's dtype if it holds real numbers."""
        return tensor.to(self.device, self.model.dtype if tensor.is_floating_point() else tensor.dtype)

    @property
    def frame_batch(self) -> int:
        """On a GPU the vision tower takes several streams' newest frames in one pass (`encode`); on a CPU
        a batch costs what its frames cost one by one, and every frame of it would wait for the others."""
        return GPU_FRAME_BATCH if self.device.type == "cuda" else 1

    @torch.inference_mode()
    def encode(self, frames: Sequence[Frame], looks: Sequence[FrameLook], details: Sequence[str]) -> list[FrameTokens]:
        """Every frame goes through the vision tower, the frames of one call together (grouped by `join`:
        one pass per group); the detail (from the thumbnail features of `look`) only decides whether a
        frame's tokens are pooled. A frame's timings are its share of its group's."""
        started = time.perf_counter()
        inputs = [
            {
                name: self.on_device(tensor)
                for name, tensor in self.format.pixel_inputs(
                    self.image_processor, bgr_to_image(frame.pixels), self.model.config
                ).items()
            }
            for frame in frames
        ]
        preprocess_ms = (time.perf_counter() - started) * 1000 / max(1, len(frames))
        tokens: list[tuple[torch.Tensor, torch.Tensor]] = [(torch.empty(0), torch.empty(0))] * len(frames)
        encoder_ms = [0.0] * len(frames)
        for indices, pixels in self.format.join(inputs):
            began = time.perf_counter()
            for i, found in zip(indices, self.format.vision_tokens(self.model, pixels), strict=True):
                tokens[i] = found
            for i in indices:
                encoder_ms[i] = (time.perf_counter() - began) * 1000 / len(indices)
        return [
            self._frame_tokens(frame, look, detail, grid, tail, {"preprocess": preprocess_ms, "vision_encoder": ms})
            for frame, look, detail, (grid, tail), ms in zip(frames, looks, details, tokens, encoder_ms, strict=True)
        ]

    def _frame_tokens(
        self,
        frame: Frame,
        look: FrameLook,
        detail: str,
        grid: torch.Tensor,
        tail: torch.Tensor,
        timings_ms: dict[str, float],
    ) -> FrameTokens:
        if detail == "terse":
            grid = pool_grid(grid)
        vision = torch.cat([grid.reshape(-1, grid.shape[-1]), tail]).unsqueeze(0)
        before, after = (self.embed_text(text) for text in self.frame_text(frame.stream_time))
        embeds = torch.cat([before, vision.to(self.model.dtype), after], dim=1)
        rows, cols = grid.shape[:2]
        positions = mrope_positions(embeds.shape[1], before.shape[1], rows, cols) if self.format.mrope else None
        text = f"[{clock(frame.stream_time)}] video frame, {rows}x{cols} vision tokens"
        return FrameTokens(embeds, text, detail, look.features, None, {**look.timings_ms, **timings_ms}, positions)
