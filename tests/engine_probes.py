"""Looks inside an engine that only tests need: the first answer token's logits over everything resident,
and the blocks a question would read."""

from __future__ import annotations

import torch

from memory.stream_memory import Block, MemoryView
from streamer.engine import Engine


def first_token_logits(engine: Engine, stream_id: str, question: str) -> torch.Tensor:
    """(vocab,) logits of the first answer token when the question reads every resident block.

    The exactness invariant is stated on this: with nothing evicted it equals a plain forward pass over
    `[system | all frames | question]`.
    """
    view = engine.memory(stream_id).view()
    try:
        cache = view.context(view.blocks, engine.adapter.rotate_keys)
        return engine.adapter.next_token_logits(engine.adapter.question_embeds(question), cache)
    finally:
        view.close()


def choose_blocks(engine: Engine, view: MemoryView, question: str) -> list[Block]:
    """The blocks `question` reads from `view` (`streamer.retrieval.select_reading`)."""
    return engine.choose(view, question).blocks
