"""Video sources: each one yields `Frame`s through a single `async recv()`.

`open_source` turns what an operator types (an RTSP URL, webcam:N, synthetic:PATTERN, a file path)
into a source; WebRTC sources come from a browser's offer through `accept_offer` or `OfferHandler`.
"""

from sources.base import Source, SourceBase, SourceState, SourceStatus
from sources.file import FileSource
from sources.frame import Frame, SourceEnded, SourceError
from sources.open import open_source
from sources.rtsp import RtspOptions, RtspSource
from sources.synthetic import SyntheticSource, SyntheticTrack
from sources.webcam import WebcamSource
from sources.webrtc import OfferHandler, WebRTCSource, accept_offer

__all__ = [
    "FileSource",
    "Frame",
    "OfferHandler",
    "RtspOptions",
    "RtspSource",
    "Source",
    "SourceBase",
    "SourceEnded",
    "SourceError",
    "SourceState",
    "SourceStatus",
    "SyntheticSource",
    "SyntheticTrack",
    "WebRTCSource",
    "WebcamSource",
    "accept_offer",
    "open_source",
]
