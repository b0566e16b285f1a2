"""Model adapters: turn frames into the token embeddings a language model consumes."""

from streamer.adapters.base import FrameTokens, ModelAdapter

__all__ = ["FrameTokens", "ModelAdapter"]
