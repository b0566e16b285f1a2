"""Errors of memory configuration, raised before anything is ingested."""


class BudgetError(ValueError):
    """The token budget cannot hold what must always be resident; the message names the fix."""
