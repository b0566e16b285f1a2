"""Errors of memory configuration and of its snapshot files, raised before anything is ingested."""


class BudgetError(ValueError):
    """The token budget cannot hold what must always be resident; the message names the fix."""


class SnapshotError(ValueError):
    """A snapshot file cannot be used; the message names the file and what to do."""
