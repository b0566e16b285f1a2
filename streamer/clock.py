"""Stream times as people read them."""


def clock(seconds: float) -> str:
    """Stream time as MM:SS (or H:MM:SS past an hour)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
