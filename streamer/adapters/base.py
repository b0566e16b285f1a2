"""The interface between the engine and a model: frames in, KV-cached tokens and answers out.

The engine core never branches on the model. An adapter owns the prompt layout (system prefix,
frame tokens, question suffix), the tokenizer, the vision side and the position scheme.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np
import torch

from memory.kv_cache import StreamingCache
from sources.frame import Frame
from streamer.adapters.cpu_linear import pack_linears
from streamer.adapters.packed import PackedPass
from streamer.rope import RotaryShift

if TYPE_CHECKING:
    from streamer.decoding import BatchedCache, ModelScheduler

T = TypeVar("T")


@dataclass
class FrameLook:
    """What a first, cheap look at a frame found, before it is encoded.

    features: the cheap feature vector a memory policy decides the frame's tier from (None: none).
    found: whatever the adapter computed on the way that encoding the frame reuses (the embedded
    describer's first description), opaque to the engine.
    timings_ms: cost of each step of the look.
    """

    features: np.ndarray | None
    found: Any = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def thumbnail_features(pixels: np.ndarray) -> np.ndarray:
    """Cheap features of a BGR frame for curvature scoring: a 16x16 grey thumbnail and a coarse
    colour histogram, (256 + 64,) float32, unit norm. Costs well under a millisecond."""
    grey = cv2.resize(cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY), (16, 16), interpolation=cv2.INTER_AREA)
    small = cv2.resize(pixels, (32, 32), interpolation=cv2.INTER_AREA)
    histogram = cv2.calcHist([small], [0, 1, 2], None, [4, 4, 4], [0, 256, 0, 256, 0, 256]).reshape(-1)
    vector = np.concatenate([grey.reshape(-1).astype(np.float32) / 255.0, histogram / max(1.0, histogram.sum())])
    return (vector / max(1e-9, float(np.linalg.norm(vector)))).astype(np.float32)


@dataclass
class FrameTokens:
    """What one frame contributes to the language model's context.

    embeds: (1, tokens, hidden) input embeddings, in the model's dtype and device.
    text: a readable account of the frame (its description), kept in the frame's record.
    features: the cheap per-frame feature vector used for scoring and retrieval, if any.
    text_vector: embedding of `text` for retrieval by question, if the adapter has a text embedder.
    timings_ms: cost of each step that produced the tokens.
    positions: (sections, tokens) position of each token relative to the block's first position, for
    a model with multi-section positions (M-RoPE); None: the tokens take consecutive positions.
    token_ids: the token ids `embeds` embed, when the frame is plain text for the language model (so a
    question can re-read it); None for image tokens.
    items: the salient things the frame shows as (kind, name) pairs, for the memory's event timeline
    (`memory.events`); empty when the adapter names none (image tokens).
    confidence: how sure the perceiver that named each item is (a detection's score, a scene label's
    probability), in the order of `items`; empty when every item is certain.
    """

    embeds: torch.Tensor
    text: str
    detail: str = "full"
    features: np.ndarray | None = None
    text_vector: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    positions: torch.Tensor | None = None
    token_ids: list[int] | None = None
    items: tuple[tuple[str, str], ...] = ()
    confidence: tuple[float, ...] = ()

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])


class ModelAdapter(ABC):
    """A chat language model plus whatever turns frames into its tokens.

    The context is `[system_text | frame tokens ... | question_text(q)]`, all fed as input
    embeddings. Subclasses set `system_text`, `answer_opening` (the text that closes the user turn
    and opens the model's) and `stop_ids`, and say how a frame becomes tokens.

    Every forward pass takes `forward_lock`: torch already uses all cores for one pass, and ingest
    and answers interleave pass by pass rather than competing. With a `scheduler` attached
    (`streamer.decoding.ModelScheduler`, which the engine attaches), the passes run on its thread:
    ingest first, answers' prefills in chunks between decode steps, decoding batched.
    """

    system_text: str
    answer_opening: str
    stop_ids: set[int]
    # Tokens of a typical full-detail frame, for checking a budget before frames arrive (0: unknown).
    typical_frame_tokens: int = 0
    # Whether a frame's record text describes what it shows (the embedded describer), so an answer's
    # words can point at the frames that support it; image tokens have no such text.
    describes_frames: bool = False

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.shift = RotaryShift(model.get_decoder().rotary_emb)
        self.embedding = model.get_input_embeddings()
        # One lock per model, not per adapter: adapters that share a model (an evaluation's cached describer
        # beside the loaded one) must not run passes at once, or one pass's key summary hooks see the other's.
        lock = getattr(model, "_streamer_forward_lock", None)
        if lock is None:
            lock = threading.RLock()
            model._streamer_forward_lock = lock
        self.forward_lock: threading.RLock = lock
        self.scheduler: ModelScheduler | None = None
        with lock:  # on a CPU, the language model's weights packed for the matrix library, once per model
            pack_linears(model, model.get_decoder().layers)

    def run_pass(
        self, fn: Callable[[], T], tokens: int = 1, read: tuple[torch.Tensor, StreamingCache] | None = None
    ) -> T:
        """Run one forward pass `fn` over `tokens` tokens: on the scheduler's thread when one is attached
        (which may batch it with others when it is a `read`, see `ModelScheduler.run`), else here; under
        `forward_lock` either way."""
        scheduler = self.scheduler
        if scheduler is not None:
            return scheduler.run(fn, tokens, read)
        with self.forward_lock:
            return fn()

    def chunks(self, length: int) -> list[tuple[int, int]]:
        """[start, end) pieces of a prefill of `length` tokens: the scheduler's longest step, or one piece."""
        size = self.scheduler.limits.max_step_tokens if self.scheduler is not None else length
        size = max(1, size)
        return [(start, min(length, start + size)) for start in range(0, length, size)] or [(0, 0)]

    @property
    def num_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)

    @property
    def frame_batch(self) -> int:
        """Frames (of several streams) the ingest scheduler gives `encode` at once: 1 unless encoding them
        together pays, as a VLM's vision tower does on a GPU."""
        return 1

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device)

    def look(self, frames: Sequence[Frame]) -> list[FrameLook]:
        """A cheap first look at each frame, whose features decide how it is encoded (`encode`'s details).

        Frames may come from different streams. This default takes a thumbnail's features; adapters whose
        first costly step yields better ones return those, to be reused by `encode`.
        """
        return [FrameLook(thumbnail_features(frame.pixels)) for frame in frames]

    @abstractmethod
    def encode(self, frames: Sequence[Frame], looks: Sequence[FrameLook], details: Sequence[str]) -> list[FrameTokens]:
        """The tokens for each frame, given its `look` and its detail: "full", or "terse" (cheaper, fewer
        tokens). Models that gain from batching run once for all the frames. Each frame's `timings_ms`
        include its look's."""

    def frame_tokens(self, frame: Frame, detail: str = "full") -> FrameTokens:
        """`look`, then `encode`, for one frame."""
        return self.encode([frame], self.look([frame]), [detail])[0]

    @abstractmethod
    def question_text(self, question: str) -> str:
        """The text after the frames: the question, the end of the user turn, the answer's opening."""

    def question_vector(self, question: str) -> np.ndarray | None:
        """Embedding of the question in the space of `FrameTokens.text_vector`, if there is one."""
        return None

    def embed_sentences(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) unit-length sentence embeddings in the space of `FrameTokens.text_vector`;
        (len(texts), 0) when the adapter has no text embedder."""
        return np.zeros((len(texts), 0), dtype=np.float32)

    def ids(self, text: str) -> torch.Tensor:
        """(1, tokens) ids of `text`, no special tokens added."""
        ids: torch.Tensor = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return ids.to(self.device)

    @torch.inference_mode()
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        embeds: torch.Tensor = self.embedding(ids)
        return embeds

    def embed_text(self, text: str) -> torch.Tensor:
        return self.embed_ids(self.ids(text))

    def system_embeds(self) -> torch.Tensor:
        """(1, tokens, hidden): the prompt that opens the context (the attention sink)."""
        return self.embed_text(self.system_text)

    def question_embeds(self, question: str) -> torch.Tensor:
        """(1, tokens, hidden): the question and whatever opens the model's answer."""
        return self.embed_text(self.question_text(question))

    def position_ids(self, start: int, length: int, offsets: torch.Tensor | None = None) -> torch.Tensor | None:
        """The `position_ids` the language model takes for `length` tokens placed from position `start`.

        offsets: `FrameTokens.positions`, if the tokens are a frame that has them. None (the default
        here, for 1-D RoPE) lets the model count on from its cache length, which is right.
        """
        return None

    def rotate_keys(self, keys: torch.Tensor, delta: int | torch.Tensor) -> torch.Tensor:
        """Keys (batch, heads, tokens, head_dim) computed at positions p, moved to p + delta
        (one delta, or a (tokens,) tensor of them)."""
        return self.shift(keys, delta)

    def token_embeds(self, token_id: int) -> torch.Tensor:
        """(1, 1, hidden) embedding of one generated token, to feed it back."""
        return self.embed_ids(torch.tensor([[token_id]], device=self.device))

    def is_stop(self, token_id: int) -> bool:
        return token_id in self.stop_ids

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    @torch.inference_mode()
    def prefill(
        self,
        embeds: torch.Tensor,
        cache: StreamingCache,
        summarize: bool = False,
        positions: torch.Tensor | None = None,
    ) -> np.ndarray | None:
        """Append `embeds` to `cache` (keys and values of every layer); no logits needed.

        positions: the block's relative positions (`FrameTokens.positions`), if it has them.
        With `summarize`, also return the block's key summary: per layer the mean over its tokens
        of the un-rotated keys, (layers, kv_heads * head_dim) float16.
        """
        length = int(embeds.shape[1])
        # A frame's block is one pass: its key summary is a mean over all of it (and it is short).
        pieces = [(0, length)] if summarize or positions is not None else self.chunks(length)
        means: list[np.ndarray] = []

        def piece(start: int, end: int) -> None:
            position_ids = self.position_ids(cache.length, end - start, positions)
            cache.reserve(end - start)
            with self.projection_means("k_proj" if summarize else None) as found:
                self.model.get_decoder()(
                    inputs_embeds=embeds[:, start:end], position_ids=position_ids, past_key_values=cache, use_cache=True
                )
            means.extend(found)

        for start, end in pieces:
            self.run_pass(lambda start=start, end=end: piece(start, end), end - start)  # type: ignore[misc]
        return np.stack(means).astype(np.float16) if summarize else None

    @torch.inference_mode()
    def query_summary(self, embeds: torch.Tensor, cache: StreamingCache) -> np.ndarray:
        """A question's per-layer mean query, grouped onto the key heads: (layers, kv_heads * head_dim).

        `cache` is the context the question is read against (the sink); it is left as it was.
        """
        fork = cache.fork()

        def run() -> list[np.ndarray]:
            position_ids = self.position_ids(fork.length, int(embeds.shape[1]))
            fork.reserve(int(embeds.shape[1]))
            with self.projection_means("q_proj") as found:
                self.model.get_decoder()(
                    inputs_embeds=embeds, position_ids=position_ids, past_key_values=fork, use_cache=True
                )
            return found

        try:
            means = self.run_pass(run, int(embeds.shape[1]))
        finally:
            fork.close()
        config = self.model.config.get_text_config()
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        grouped = [q.reshape(kv_heads, heads // kv_heads, -1).mean(axis=1).reshape(-1) for q in means]
        return np.stack(grouped).astype(np.float32)

    @contextmanager
    def projection_means(self, name: str | None) -> Iterator[list[np.ndarray]]:
        """Collect, per decoder layer, the token-mean output of its attention's `name` projection."""
        means: list[np.ndarray] = []
        if name is None:
            yield means
            return

        def keep(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            means.append(output[0].float().mean(dim=0).cpu().numpy())

        hooks = [getattr(layer.self_attn, name).register_forward_hook(keep) for layer in self.decoder_layers()]
        try:
            yield means
        finally:
            for hook in hooks:
                hook.remove()

    def decoder_layers(self) -> list[Any]:
        """The language model's decoder layers, each with `self_attn.{q,k}_proj` (Llama/Qwen2 layout)."""
        return list(self.model.get_decoder().layers)

    @torch.inference_mode()
    def continuation_log_likelihood(
        self, first_logits: torch.Tensor, ids: Sequence[int], cache: StreamingCache
    ) -> float:
        """Sum of the log-probabilities of the tokens `ids` following `cache`, whose next-token logits are
        `first_logits` (vocab,); `cache` is left as it was (the continuation is read on a fork)."""
        total = float(torch.log_softmax(first_logits.float(), dim=-1)[ids[0]])
        if len(ids) == 1:
            return total
        fork = cache.fork()
        try:
            rest = torch.tensor([list(ids)], device=self.device)

            def run() -> torch.Tensor:
                position_ids = self.position_ids(fork.length, len(ids) - 1)
                fork.reserve(len(ids) - 1)
                out = self.model(
                    inputs_embeds=self.embed_ids(rest[:, :-1]),
                    position_ids=position_ids,
                    past_key_values=fork,
                    use_cache=True,
                )
                logits: torch.Tensor = out.logits[0]
                return logits

            log_probs = torch.log_softmax(self.run_pass(run, len(ids) - 1).float(), dim=-1)
            total += float(log_probs.gather(1, rest[0, 1:, None]).sum())
        finally:
            fork.close()
        return total

    @torch.inference_mode()
    def next_token_logits(self, embeds: torch.Tensor, cache: StreamingCache) -> torch.Tensor:
        """Append `embeds` to `cache` and return the logits (vocab,) for the token that follows; a long
        `embeds` is read in the scheduler's chunks, the logits from the last."""
        pieces = self.chunks(int(embeds.shape[1]))
        for start, end in pieces[:-1]:
            self.prefill(embeds[:, start:end], cache)
        start, end = pieces[-1]

        def run() -> torch.Tensor:
            position_ids = self.position_ids(cache.length, end - start)
            cache.reserve(end - start)
            out = self.model(
                inputs_embeds=embeds[:, start:end],
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits: torch.Tensor = out.logits[0, -1].float()
            return logits

        read = (embeds[:, start:end], cache) if self.position_ids(0, 1) is None else None
        return self.run_pass(run, end - start, read)

    @property
    def packs_passes(self) -> bool:
        """Whether a decode step and reads can share one pass (`packed_logits`): plain 1-D positions only."""
        return self.position_ids(0, 1) is None

    @torch.inference_mode()
    def packed_logits(
        self, tokens: Sequence[int], batch: BatchedCache | None, reads: Sequence[tuple[torch.Tensor, StreamingCache]]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One pass (`streamer.adapters.packed`) for a decode step of `batch`'s rows, row i's token `tokens[i]`
        (none: no step), and for `reads`, each (embeds, cache) reading its embeds after its cache, which they
        are appended to. Returns the step's next logits (rows, vocab) and each read's next-token logits
        (vocab,), what `batch_next_token_logits` and `next_token_logits` give. The caller holds
        `forward_lock` and advances `batch` after the step."""
        sizes = [int(embeds.shape[1]) for embeds, _ in reads]
        for (_, cache), size in zip(reads, sizes, strict=True):
            cache.reserve(size)
        packed = PackedPass(self.num_layers, batch if tokens else None, [c for _, c in reads], sizes, self.device)
        pieces = [embeds for embeds, _ in reads]
        if tokens:
            pieces.insert(0, self.embed_ids(torch.tensor([list(tokens)], device=self.device)))
        # The model's own mask is not used (each row's attention has its own); a 4-D one is taken as given.
        placeholder = torch.zeros(1, 1, packed.tokens, 1, device=self.device)
        with packed.running(self.model):
            out = self.model(
                inputs_embeds=torch.cat(pieces, dim=1),
                attention_mask=placeholder,
                position_ids=torch.tensor([packed.positions], device=self.device),
                past_key_values=packed,
                use_cache=True,
                logits_to_keep=torch.tensor(packed.last_tokens(), device=self.device),
            )
        logits = out.logits[0].float()
        return logits[: len(tokens)], list(logits[len(tokens) :])

    def batch_position_ids(self, lengths: Sequence[int]) -> torch.Tensor:
        """`position_ids` for one new token in each of several rows whose caches hold `lengths` tokens."""
        return torch.tensor(list(lengths), device=self.device)[:, None]

    @torch.inference_mode()
    def batch_next_token_logits(self, tokens: Sequence[int], batch: BatchedCache) -> torch.Tensor:
        """One decode step for several rows at once: row i's token `tokens[i]` appended to its context in
        `batch` (`streamer.decoding.BatchedCache`); returns the next logits, (rows, vocab). The caller holds
        `forward_lock`."""
        mask = batch.prepare()
        embeds = self.embed_ids(torch.tensor([[token] for token in tokens], device=self.device))
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=self.batch_position_ids(batch.lengths),
            past_key_values=batch,
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits[:, -1].float()
        return logits
