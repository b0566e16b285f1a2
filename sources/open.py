"""One entry point from what an operator types to a source: URL, device or file path.

- `rtsp://` or `rtsps://` URL: an RTSP camera (`RtspSource`).
- `webcam:N` or `/dev/videoN`: a local webcam (`WebcamSource`).
- `synthetic:PATTERN`: generated video (`SyntheticSource`; patterns in `sources.synthetic.PATTERNS`).
- `file://PATH` or a plain path: a video file played as a live stream (`FileSource`).

Anything else is refused with one sentence that names the input and what would work.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from sources.base import Source
from sources.file import FileSource
from sources.frame import SourceError
from sources.rtsp import RTSP_SCHEMES, RtspOptions, RtspSource
from sources.synthetic import SyntheticSource
from sources.webcam import WebcamSource

SUPPORTED = "rtsp://HOST/PATH, rtsps://HOST/PATH, webcam:N, /dev/videoN, synthetic:PATTERN or a video file path"

# A URL scheme per RFC 3986; a one-letter "scheme" would be a Windows drive, which we treat as a path.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


SourceKind = Literal["rtsp", "webcam", "synthetic", "file"]


def source_kind(url_or_path: str) -> SourceKind:
    """Which kind of source `url_or_path` names, without opening it; SourceError when none."""
    text = url_or_path.strip()
    if not text:
        raise SourceError(f"No source was given; pass {SUPPORTED}.")
    if text.startswith("/dev/video"):
        return "webcam"
    match = _SCHEME.match(text)
    # A file whose name contains a colon is still a file.
    if match is None or Path(text).exists():
        return "file"
    scheme = match.group(1).lower()
    if scheme in RTSP_SCHEMES:
        return "rtsp"
    if scheme in ("webcam", "synthetic", "file"):
        return scheme  # type: ignore[return-value]
    raise SourceError(f"Unsupported source '{text}': the scheme '{scheme}' is not one of {SUPPORTED}.")


def file_path(url_or_path: str) -> Path:
    """The path a file source (`source_kind` "file") reads: a plain path or a local file:// URL."""
    text = url_or_path.strip()
    if text.lower().startswith("file:") and not Path(text).exists():
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"'{text}' names a file on another host; copy it here and pass its path.")
        return Path(unquote(parts.path))
    return Path(text)


def open_source(
    url_or_path: str,
    *,
    fps: float | None = None,
    realtime: bool = True,
    rtsp_options: RtspOptions | None = None,
) -> Source:
    """The source for `url_or_path`; raises SourceError when it is malformed, unsupported or missing.

    fps: frames per second a file or synthetic source delivers (None: the file's own rate, 15 for
    synthetic video). realtime: play files and synthetic video at their own pace (False: as fast
    as they are read, with a simulated clock). Live cameras always deliver their newest frame.
    """
    text = url_or_path.strip()
    kind = source_kind(text)
    if kind == "file":
        return FileSource(file_path(text), fps=fps, realtime=realtime)
    if kind == "rtsp":
        return RtspSource(text, rtsp_options)
    if kind == "webcam":
        if text.startswith("/dev/video"):
            return WebcamSource(text)
        rest = text.partition(":")[2]
        if not rest.isdigit():
            raise SourceError(f"'{text}' does not name a webcam number; write webcam:0 for /dev/video0.")
        return WebcamSource(int(rest))
    return SyntheticSource(text.partition(":")[2] or "ball", fps=fps or 15.0, realtime=realtime)
