"""Video sources: each one yields `Frame`s through a single `async recv()`."""

from sources.frame import Frame, SourceEnded, SourceError

__all__ = ["Frame", "SourceEnded", "SourceError"]
